"""Serve benchmark, side by side in one run:

(a) single-stream tokens/s through gateway + serve vs the backend called directly in-process
    (target ratio >= 0.9): transformers ``generate`` on the tiny-model kit's ``tiny`` and ``small``
    Llama, and ``llama-cpp-python``'s own ``create_completion`` on a GGUF export of the small one;
(b) 8 concurrent clients vs the same 8 requests one after another on the transformers backend
    (target >= 3x); time to first token p50/p95.

    .venv/bin/python benchmarks/serve/run.py [--sizes tiny,small] [--tokens 128] [--clients 8] [--no-gguf]

Each row runs ``--rounds`` alternating rounds of direct vs served (which goes first alternates), and the ratio
printed is the median of the per-round ratios: the direct baseline alone swings by a third between runs on a
shared 2-core box, so a ratio of two numbers measured minutes apart says little.

Starts a private nats-server, the gateway and serve as processes (halo_testing.ProcessStack), talks
to them with the official ``openai`` SDK, writes benchmarks/results/serve.json. Serve runs with its
default settings (``stream_interval_ms`` included).

Read the ``tiny`` row with care: that model makes ~1,800 tokens/s on one CPU thread, ten times what
any real model does here, so its ratio mostly measures the fixed cost of a request through two HTTP
hops (~5 ms) against a 70 ms reply. ``small`` (~130 tokens/s) is the row that resembles real use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import openai
import torch
from halo_common.natsproc import free_port
from halo_models.tiny import default_cache_root, make_tiny_cached
from halo_testing.stack import ProcessStack
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = "Once upon a time"
RESULTS = Path(__file__).resolve().parents[1] / "results" / "serve.json"


def transformers_direct(model_dir: Path, tokens: int, repeats: int) -> Callable[[], float]:
    """A measurement of transformers ``generate`` in-process (model loaded once): greedy, exactly ``tokens``
    new tokens (EOS suppressed); each call returns the best tokens/s of ``repeats`` generations."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    eos = [tok.eos_token_id]
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=8, do_sample=False, suppress_tokens=eos)  # warm-up

    def measure() -> float:
        best = 0.0
        with torch.inference_mode():
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = model.generate(ids, max_new_tokens=tokens, do_sample=False, suppress_tokens=eos)
                best = max(best, (out.shape[1] - ids.shape[1]) / (time.perf_counter() - t0))
        return best

    return measure


def llamacpp_direct(gguf: Path, tokens: int, repeats: int) -> Callable[[], float]:
    """A measurement of llama-cpp-python's own completion in-process (its default threads, model loaded
    once): greedy, ``tokens`` new tokens (EOS banned); each call returns the best tokens/s of ``repeats``."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=2048, seed=0, verbose=False)
    ban = {llm.token_eos(): -1e9}
    llm.create_completion(PROMPT, max_tokens=8, temperature=0.0, logit_bias=ban)  # warm-up

    def measure() -> float:
        best = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, logit_bias=ban)
            best = max(best, out["usage"]["completion_tokens"] / (time.perf_counter() - t0))
        return best

    return measure


async def one_stream(client: openai.AsyncOpenAI, tokens: int, model: str = "bench") -> tuple[int, float, float]:
    """(completion tokens, seconds to first token, total seconds) of one streamed completion."""
    t0 = time.perf_counter()
    first = None
    n = 0
    stream = await client.completions.create(model=model, prompt=PROMPT, max_tokens=tokens, temperature=0,
                                             stream=True, stream_options={"include_usage": True},
                                             extra_body={"ignore_eos": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text and first is None:
            first = time.perf_counter() - t0
        if chunk.usage:
            n = chunk.usage.completion_tokens
    return n, first or 0.0, time.perf_counter() - t0


async def single_stream(url: str, model: str, tokens: int, repeats: int) -> float:
    """Best single-stream tokens/s of ``repeats`` streamed completions of ``model`` (after a warm-up)."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)
    await one_stream(client, 8, model)  # warm-up (and the load of a model not loaded yet)
    best = 0.0
    for _ in range(repeats):
        n, _, dt = await one_stream(client, tokens, model)
        best = max(best, n / dt)
    await client.close()
    return best


async def concurrency(url: str, model: str, tokens: int, clients: int) -> dict:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)
    await one_stream(client, 8, model)
    t0 = time.perf_counter()
    seq = [await one_stream(client, tokens, model) for _ in range(clients)]
    seq_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    conc = await asyncio.gather(*(one_stream(client, tokens, model) for _ in range(clients)))
    conc_s = time.perf_counter() - t0
    await client.close()
    ttft = sorted(x[1] for x in conc)
    return {
        "sequential_tokens_per_s": sum(x[0] for x in seq) / seq_s,
        "concurrent_tokens_per_s": sum(x[0] for x in conc) / conc_s,
        "ttft_concurrent_p50_s": statistics.median(ttft),
        "ttft_concurrent_p95_s": ttft[min(len(ttft) - 1, int(round(0.95 * (len(ttft) - 1))))],
    }


def export_gguf(model_dir: Path, root: Path) -> Path:
    from halo_serve.core.convert.exporters import export_gguf as export

    out = root / f"{model_dir.name}-f32.gguf"
    return export(model_dir, out, "fp32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny,small", help="tiny-model kit sizes for the transformers rows")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="generations per side per round (the best counts)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of direct vs serve per row")
    ap.add_argument("--no-gguf", action="store_true", help="skip the llama.cpp row")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sizes = [s for s in args.sizes.split(",") if s]
    dirs = {size: make_tiny_cached(default_cache_root(), arch="llama", size=size) for size in sizes}
    root = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    gguf = None
    if not args.no_gguf:
        from halo_serve.core.convert.common import format_unavailable

        why = format_unavailable("gguf")
        if why:
            print(f"llama.cpp row skipped: {why}")
        else:
            gguf = export_gguf(dirs[sizes[-1]], root)

    rows: list[dict] = []
    direct: dict[str, Callable[[], float]] = {}
    for size, d in dirs.items():
        rows.append({"backend": "transformers", "model": f"tiny-kit {size} llama", "id": f"bench-{size}",
                     "baseline": "transformers generate (1 thread)"})
        direct[f"bench-{size}"] = transformers_direct(d, args.tokens, args.repeats)
    if gguf is not None:
        rows.append({"backend": "llamacpp", "model": f"{sizes[-1]} llama, f32 GGUF", "id": "bench-gguf",
                     "baseline": "llama-cpp-python create_completion"})
        direct["bench-gguf"] = llamacpp_direct(gguf, args.tokens, args.repeats)

    models = [f"{r['id']}={p}" for r, p in zip(rows, [*dirs.values(), gguf], strict=False) if p is not None]
    env = {"HALO_SERVE_PORT": str(free_port()), "HALO_SERVE_MODELS": json.dumps(models),
           "HALO_SERVE_MAX_BATCH_SIZE": str(max(8, args.clients))}
    stack = ProcessStack(root, ["halo_gateway", "halo_serve"], ready={"serve"}, env=env)
    try:
        # Alternating rounds (which side goes first alternates too), so drift in the machine's speed (CPU
        # frequency, other processes) hits both sides: the ratio is the median of the per-round ratios.
        for r in rows:
            ds, ss = [], []
            for k in range(args.rounds):
                for side in (("direct", "serve") if k % 2 == 0 else ("serve", "direct")):
                    if side == "direct":
                        ds.append(direct[r["id"]]())
                    else:
                        ss.append(asyncio.run(single_stream(stack.url, r["id"], args.tokens, args.repeats)))
            r["direct_tokens_per_s"], r["serve_tokens_per_s"] = statistics.median(ds), statistics.median(ss)
            r["round_ratios"] = [s_ / d_ for s_, d_ in zip(ss, ds, strict=True)]
            r["ratio"] = statistics.median(r["round_ratios"])
        conc = asyncio.run(concurrency(stack.url, rows[0]["id"], args.tokens, args.clients))
    finally:
        stack.close()
    conc["speedup"] = conc["concurrent_tokens_per_s"] / conc["sequential_tokens_per_s"]
    result = {"tokens": args.tokens, "clients": args.clients, "torch_threads": torch.get_num_threads(),
              "single_stream": rows, "concurrency": {"model": rows[0]["model"], **conc},
              "targets": {"single_stream_ratio": 0.9, "concurrency_speedup": 3.0}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    print(f"(a) single stream, {args.tokens} tokens, greedy; median of {args.rounds} alternating rounds (tokens/s and "
          "the per-round ratio); target ratio >= 0.9")
    print(f"{'backend':<13}{'model':<28}{'direct tok/s':>13}{'serve tok/s':>13}{'ratio':>8}  baseline")
    for r in rows:
        print(f"{r['backend']:<13}{r['model']:<28}{r['direct_tokens_per_s']:>13.1f}{r['serve_tokens_per_s']:>13.1f}"
              f"{r['ratio']:>8.2f}  {r['baseline']}; rounds " + ", ".join(f"{x:.2f}" for x in r["round_ratios"]))
    print(f"\n(b) {args.clients} clients on {rows[0]['model']} (transformers); target >= 3x")
    print(f"{args.clients} sequential   {conc['sequential_tokens_per_s']:8.1f} tok/s")
    print(f"{args.clients} concurrent   {conc['concurrent_tokens_per_s']:8.1f} tok/s  speedup {conc['speedup']:.2f}x")
    print(f"TTFT under concurrency   p50 {conc['ttft_concurrent_p50_s'] * 1000:.1f} ms  "
          f"p95 {conc['ttft_concurrent_p95_s'] * 1000:.1f} ms")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
