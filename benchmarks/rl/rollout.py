"""Rollout throughput: our transformers backend's batched generation vs a per-prompt ``model.generate`` loop.

The workload is what GRPO asks for at every step: P prompts, N sampled completions each
(temperature 1.0), up to T new tokens. The baseline is what a user writes with plain transformers:
for each prompt, ``model.generate(prompt, do_sample=True, num_return_sequences=N)`` — already
batched over the N samples of a prompt, with a KV cache, so it is not a straw man. Ours is
``TransformersBackend.generate`` over all P x N sequences (left-padded batches of up to
``--batch`` sequences, each prompt prefilled once, finished rows dropped, a private RNG per
sample). For reference only, one more line shows transformers' own ``generate`` on the whole
left-padded batch at once (what our backend must not be slower than).

Every side samples the same distribution with the end-of-sequence token allowed, as a rollout does;
tokens are counted up to and including each completion's end (never padding), and tokens/s is
reported next to samples/s. Sides alternate across rounds; the median round is reported.
Target: samples/s ratio >= 3.

Usage::

    python benchmarks/rl/rollout.py             # ~2-3 min on 2 CPU cores ("small" ~25M-param model)
    python benchmarks/rl/rollout.py --quick     # a few seconds

Results: ``benchmarks/results/rl_rollout.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "rl_rollout.json"
TARGET = 3.0

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="small", choices=("tiny", "small"), help="tiny-model kit size")
    p.add_argument("--prompts", type=int, default=16, help="prompts per rollout")
    p.add_argument("--n", type=int, default=8, help="completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens per completion")
    p.add_argument("--batch", type=int, default=128, help="our backend's max sequences per batch")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="tiny model, few prompts: a smoke run")
    p.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.prompts, args.n, args.max_new_tokens, args.rounds = "tiny", 8, 4, 16, 1
    return args


def prompts_text(k: int) -> list[str]:
    from halo_models.tiny import corpus_path

    words = corpus_path().read_text().split()
    # Prompts of different lengths (8..40 words), as a real dataset has.
    return [" ".join(words[i * 50: i * 50 + 8 + (i * 7) % 33]) for i in range(k)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from halo_models.tiny import make_tiny_cached
    from halo_sampling.backends.transformers_backend import TransformersBackend
    from halo_schemas.rollout import SampleParams, SampleRequest
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = make_tiny_cached(size=args.size, arch="qwen2")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    params_count = sum(p.numel() for p in model.parameters())
    texts = prompts_text(args.prompts)
    T, N = args.max_new_tokens, args.n

    backend = TransformersBackend.from_model(model, tok, max_batch_size=args.batch)
    requests = [SampleRequest(prompt=t) for t in texts]
    ours_params = SampleParams(n=N, temperature=1.0, max_new_tokens=T, seed=0)
    eos, pad = tok.eos_token_id, tok.pad_token_id

    def generated_tokens(out: Any, prompt_len: int) -> int:
        """Tokens of each row up to and including its first eos (what was sampled, not padding)."""
        new = out[:, prompt_len:]
        total = 0
        for row in new.tolist():
            total += row.index(eos) + 1 if eos in row else len(row)
        return total

    def run_ours() -> tuple[int, int]:
        res = backend.generate(requests, ours_params)
        return sum(len(r.completions) for r in res), sum(c.num_tokens for r in res for c in r.completions)

    def run_loop() -> tuple[int, int]:
        samples = tokens = 0
        with torch.inference_mode():
            for i, t in enumerate(texts):
                enc = tok(t, return_tensors="pt")
                torch.manual_seed(i)
                out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                     num_return_sequences=N, max_new_tokens=T, pad_token_id=pad, eos_token_id=eos)
                samples += out.shape[0]
                tokens += generated_tokens(out, enc["input_ids"].shape[1])
        return samples, tokens

    def run_hf_batched() -> tuple[int, int]:
        tok.padding_side = "left"
        rows = [t for t in texts for _ in range(N)]
        samples = tokens = 0
        with torch.inference_mode():
            for k in range(0, len(rows), args.batch):
                enc = tok(rows[k:k + args.batch], return_tensors="pt", padding=True)
                out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=T,
                                     pad_token_id=pad, eos_token_id=eos)
                samples += out.shape[0]
                tokens += generated_tokens(out, enc["input_ids"].shape[1])
        tok.padding_side = "right"
        return samples, tokens

    sides = {"ours": run_ours, "per_prompt_generate": run_loop, "hf_batched_generate": run_hf_batched}
    times: dict[str, list[float]] = {k: [] for k in sides}
    work: dict[str, tuple[int, int]] = {}
    run_ours()  # warm-up (allocator, kernels) outside the timed rounds
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            gc.collect()
            t0 = time.perf_counter()
            work[name] = sides[name]()
            times[name].append(time.perf_counter() - t0)
            print(f"round {r + 1}/{args.rounds} {name:<22} {times[name][-1]:7.2f}s", file=sys.stderr)

    def summary(name: str) -> dict[str, Any]:
        t = statistics.median(times[name])
        samples, tokens = work[name]
        return {"median_s": t, "rounds_s": times[name], "samples": samples, "tokens": tokens,
                "samples_per_s": samples / t, "tokens_per_s": tokens / t}

    res = {name: summary(name) for name in sides}
    ratio = res["ours"]["samples_per_s"] / res["per_prompt_generate"]["samples_per_s"]
    token_ratio = res["ours"]["tokens_per_s"] / res["per_prompt_generate"]["tokens_per_s"]
    vs_hf_batched = res["ours"]["samples_per_s"] / res["hf_batched_generate"]["samples_per_s"]
    out = {
        "benchmark": "rl.rollout",
        "workload": {"model": str(model_dir.name), "parameters": params_count, "prompts": args.prompts, "n": N,
                     "max_new_tokens": T, "batch": args.batch, "rounds": args.rounds, "temperature": 1.0},
        "results": res,
        "ratio_samples_per_s": ratio,
        "ratio_tokens_per_s": token_ratio,
        "ratio_vs_hf_batched_generate": vs_hf_batched,
        "target": TARGET,
        "meets_target": ratio >= TARGET,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")

    print(f"\nrollout: {args.prompts} prompts x {N} samples x {T} tokens, {params_count / 1e6:.1f}M-param model, "
          f"{torch.get_num_threads()} threads")
    head = f"{'side':<34}{'samples/s':>11}{'tokens/s':>11}{'median s':>10}"
    print(head)
    print("-" * len(head))
    labels = {"ours": "halo-rollout batched (ours)", "per_prompt_generate": "per-prompt model.generate loop",
              "hf_batched_generate": "(ref) HF generate, whole batch"}
    for name in sides:
        s = res[name]
        print(f"{labels[name]:<34}{s['samples_per_s']:>11.1f}{s['tokens_per_s']:>11.0f}{s['median_s']:>10.2f}")
    verdict = "PASS" if ratio >= TARGET else "BELOW TARGET"
    print(f"\nratio (ours / per-prompt generate loop): {ratio:.2f}x samples/s (target >= {TARGET:.0f}x): {verdict}")
    print(f"ours / HF whole-batch generate: {vs_hf_batched:.2f}x")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
