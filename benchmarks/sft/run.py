"""SFT throughput: ``halo-forge train sft`` vs TRL's ``SFTTrainer`` tuned for speed, and vs its defaults.

Usage::

    python benchmarks/sft/run.py            # ~25M-parameter model, ~10 minutes on 2 CPU cores
    python benchmarks/sft/run.py --quick    # fewer records, one round, 2 default-TRL steps (a smoke run)

All sides train the same ~25M-parameter Llama (the halo-models kit's ``small`` preset, random weights) on the
same variable-length text (spans of 16..max_length tokens cut from the kit's corpus):

* **ours** — ``halo-forge train sft --config spec.json`` against a real local stack (nats-server, gateway,
  trainer-torch processes), full finetuning with the trainer's per-backend defaults: records packed
  best-fit-decreasing into ``max_length`` rows with per-record position ids (no padding, block-diagonal
  attention per row), no gradient checkpointing on CPU, bf16 autocast where the CPU has native bf16 (else float32);
* **tuned TRL** — ``baseline_trl.py --mode tuned``: ``SFTTrainer`` as a user who cares about speed sets it up:
  ``packing=True`` (BFD) with ``padding_free=True``, no gradient checkpointing, the same dtype policy as ours,
  the same packed rows per optimizer step (so the same tokens per step and the same number of steps);
* **default TRL** — ``baseline_trl.py --mode defaults``: TRL's defaults (padded batches of ``--batch-size``
  records, gradient checkpointing, bf16 autocast), bounded by ``--defaults-steps`` optimizer steps: on a CPU
  without native bf16 one epoch of it takes far longer than everything else together.

Learning rate (linear, warmup-free schedule), max length, epochs and seed are equal. Throughput is the
steady-state rate of non-padding tokens through the training loop (from the first logged step to the last, so
model loading and data preparation count for none). Ours and tuned TRL run a whole epoch in alternating rounds
(alternating which side goes first) so machine noise hits both; the ratio is of the medians. "No loss
regression": the mean next-token loss of both final models (ours, tuned TRL) on held-out spans, computed by one
function here, must not be worse for ours by more than 2 %. The default-TRL run is too short for a loss
comparison; its ratio is throughput only. The load average is recorded with every figure (shared machines).

Results: ``benchmarks/results/sft.json``; PASS when ours / tuned >= 1.15 and the loss holds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "sft.json"
CLI = str(Path(sys.executable).parent / "halo-forge")
TARGET = 1.15  # ours / tuned TRL
MAX_LOSS_REGRESSION = 0.02


def make_data(tokenizer: Any, out: Path, n_train: int, n_eval: int, max_length: int, seed: int = 0) -> dict[str, Any]:
    """Spans of 16..max_length-1 tokens from the shipped corpus, as {"text": ...} records."""
    from halo_models.tiny import corpus_path

    tokenizer.model_max_length = 1 << 30  # we cut spans ourselves; the whole corpus is tokenized once
    ids = tokenizer(corpus_path().read_text(encoding="utf-8"))["input_ids"]
    rng = random.Random(seed)
    lengths = []

    def spans(n: int) -> list[dict[str, str]]:
        rows = []
        for _ in range(n):
            length = rng.randint(16, max_length - 1)  # -1: the trainer appends EOS
            start = rng.randint(0, len(ids) - length - 1)
            rows.append({"text": tokenizer.decode(ids[start: start + length])})
            lengths.append(length)
        return rows

    for name, n in (("train", n_train), ("eval", n_eval)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in spans(n)))
    return {"train": str(out / "train.jsonl"), "eval": str(out / "eval.jsonl"),
            "mean_length": statistics.mean(lengths[:n_train]), "records": n_train}


def heldout_loss(model_dir: str, eval_file: str) -> float:
    """Mean next-token loss over every token of the held-out spans (+EOS), one record at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for line in Path(eval_file).read_text().splitlines():
            ids = torch.tensor([tok(json.loads(line)["text"] + tok.eos_token)["input_ids"]])
            out = model(input_ids=ids, labels=ids)
            n = ids.shape[1] - 1
            total += float(out.loss) * n
            count += n
    return total / count


def run_ours(env: dict[str, str], model: str, data: dict[str, Any], lr: float, batch_rows: int, max_length: int,
             workdir: Path, packing: bool = True) -> dict[str, Any]:
    # TRL's schedule (linear, no warmup) so the held-out loss compares batching, not schedules; everything else
    # (precision, gradient checkpointing, attention) is the trainer's per-backend default.
    spec = {"model": model, "data": {"train": data["train"]}, "finetune": "full", "learning_rate": lr,
            "batch_size": batch_rows, "max_length": max_length, "epochs": 1, "checkpoint_every_steps": 100000,
            "seed": 42, "packing": packing, "lr_scheduler": "linear", "warmup_ratio": 0.0}
    cfg = workdir / "spec.json"
    cfg.write_text(json.dumps(spec))
    r = subprocess.run([CLI, "train", "sft", "--config", str(cfg)], capture_output=True, text=True, env=env,
                       timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"halo-forge train sft failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    run_id = re.search(r"run-[0-9A-Z]{26}", r.stdout).group(0)  # type: ignore[union-attr]
    run = Path(env["HALO_HOME"]) / "runs" / run_id
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [x for x in rows if "tokens" in x and "loss" in x]
    first, last = rows[0], rows[-1]
    summary = json.loads((run / "training_summary.json").read_text())
    return {"tokens_per_second": (last["tokens"] - first["tokens"]) / (last["ts"] - first["ts"]),
            "tokens": summary["tokens"], "steps": summary["steps"], "final": summary["outputs"]["final"],
            "run_id": run_id, "packing_efficiency": summary["extras"].get("packing_efficiency"),
            "model_flops_per_second": summary.get("model_flops_per_second"), "mfu": summary.get("mfu"),
            "load_avg": os.getloadavg()}


def run_baseline(model: str, data: dict[str, Any], lr: float, batch: int, max_length: int, workdir: Path,
                 mode: str, max_steps: int = -1) -> dict[str, Any]:
    out = workdir / "baseline"
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("baseline_trl.py")), "--model", model,
                        "--data", data["train"], "--out", str(out), "--lr", str(lr), "--batch-size", str(batch),
                        "--max-length", str(max_length), "--mode", mode, "--max-steps", str(max_steps)],
                       capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"baseline ({mode}) failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "load_avg": os.getloadavg()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="Few records, one round: a smoke run.")
    p.add_argument("--records", type=int, default=None, help="Training records (default 160, quick 32).")
    p.add_argument("--rounds", type=int, default=None, help="Alternating rounds ours/tuned (default 3, quick 1).")
    p.add_argument("--batch-size", type=int, default=8, help="Default-TRL sequences per step.")
    p.add_argument("--defaults-steps", type=int, default=None, help="Steps of the default-TRL run (default 5, quick 2).")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()
    records = args.records or (32 if args.quick else 160)
    rounds = args.rounds or (1 if args.quick else 3)
    defaults_steps = args.defaults_steps or (2 if args.quick else 5)

    from halo_common.paths import HaloPaths
    from halo_forge import stack
    from halo_models.tiny import make_tiny_cached
    from transformers import AutoTokenizer

    model = str(make_tiny_cached(arch="llama", size="small"))
    n_params = json.loads((Path(model) / "halo_tiny.json").read_text())["num_parameters"]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="halo-bench-sft-") as tmp:
        work = Path(tmp)
        data = make_data(AutoTokenizer.from_pretrained(model), work, records, max(8, records // 5), args.max_length)
        # Same real tokens per optimizer step everywhere: default batch x mean length = rows x max_length.
        batch_rows = max(1, round(args.batch_size * (data["mean_length"] + 1) / args.max_length))
        home = work / "home"
        env = {**os.environ, "HALO_HOME": str(home), "COLUMNS": "200"}
        os.environ["HALO_HOME"] = str(home)
        print(f"model: {n_params / 1e6:.1f}M parameters · {records} records, mean {data['mean_length']:.0f} tokens "
              f"(16..{args.max_length - 1}) · default TRL batch {args.batch_size} · ours and tuned TRL {batch_rows} "
              f"packed rows · load average {os.getloadavg()[0]:.1f}")
        print("starting the local stack (nats-server, gateway, trainer-torch)…", flush=True)
        state, _ = stack.up(HaloPaths(home), services=["trainer-torch", "gateway"])
        env["HALO_GATEWAY_URL"] = state.gateway_url
        ours: list[dict[str, Any]] = []
        tuned: list[dict[str, Any]] = []
        try:
            for i in range(rounds):
                order = ("ours", "tuned") if i % 2 == 0 else ("tuned", "ours")
                for side in order:
                    t0 = time.monotonic()
                    if side == "ours":
                        ours.append(run_ours(env, model, data, args.lr, batch_rows, args.max_length, work))
                        res = ours[-1]
                    else:
                        bdir = work / f"t{i}"
                        bdir.mkdir()
                        tuned.append(run_baseline(model, data, args.lr, batch_rows, args.max_length, bdir, "tuned"))
                        res = tuned[-1]
                    print(f"round {i + 1} {side:6s}: {res['tokens_per_second']:8.1f} tokens/s · {res['steps']} steps "
                          f"· {time.monotonic() - t0:.0f}s wall · load {res['load_avg'][0]:.1f}", flush=True)
            # The default-TRL baseline, bounded by steps, with ours measured right before it (same load).
            t0 = time.monotonic()
            ddir = work / "defaults"
            ddir.mkdir()
            defaults = run_baseline(model, data, args.lr, args.batch_size, args.max_length, ddir, "defaults",
                                    max_steps=defaults_steps)
            print(f"default TRL  : {defaults['tokens_per_second']:8.1f} tokens/s · {defaults['steps']} steps "
                  f"· {time.monotonic() - t0:.0f}s wall · load {defaults['load_avg'][0]:.1f}", flush=True)
        finally:
            stack.down(HaloPaths(home))
        ours_loss = heldout_loss(ours[-1]["final"], data["eval"])
        tuned_loss = heldout_loss(tuned[-1]["final"], data["eval"])
    ours_tps = statistics.median(r["tokens_per_second"] for r in ours)
    tuned_tps = statistics.median(r["tokens_per_second"] for r in tuned)
    ratio = ours_tps / tuned_tps
    ratio_defaults = ours[-1]["tokens_per_second"] / defaults["tokens_per_second"]
    round_ratios = [o["tokens_per_second"] / b["tokens_per_second"] for o, b in zip(ours, tuned, strict=True)]
    regression = ours_loss / tuned_loss - 1.0
    ok = ratio >= TARGET and regression <= MAX_LOSS_REGRESSION
    mfu = ours[-1].get("mfu")
    print(f"\n{'side':<14}{'tokens/s':>10}{'held-out loss':>15}")
    print(f"{'ours':<14}{ours_tps:>10.1f}{ours_loss:>15.4f}")
    print(f"{'tuned TRL':<14}{tuned_tps:>10.1f}{tuned_loss:>15.4f}")
    print(f"{'default TRL':<14}{defaults['tokens_per_second']:>10.1f}{'(bounded)':>15}")
    loads = ", ".join(f"{o['load_avg'][0]:.1f}" for o in ours)
    print("per-round ratios vs tuned: " + ", ".join(f"{r:.2f}x" for r in round_ratios) + f" · load averages {loads}")
    if ours[-1].get("model_flops_per_second"):
        print(f"ours: {ours[-1]['model_flops_per_second'] / 1e9:.2f} GFLOP/s model FLOPs"
              + (f", MFU {mfu:.1%}" if mfu is not None else ""))
    print(f"held-out loss: ours vs tuned {regression:+.2%} (limit +{MAX_LOSS_REGRESSION:.0%})")
    print(f"ours / default TRL (last round of ours vs the bounded defaults run): {ratio_defaults:.2f}x")
    print(f"ours / tuned TRL: {ratio:.2f}x  [target >= {TARGET}x, loss regression <= {MAX_LOSS_REGRESSION:.0%}] "
          f"{'PASS' if ok else 'MISS'}  ({time.monotonic() - started:.0f}s in all)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "sft", "ratio": ratio, "ratio_vs_defaults": ratio_defaults, "round_ratios": round_ratios,
        "target": TARGET, "met": ok, "loss_regression": regression,
        "ours": {"tokens_per_second": ours_tps, "runs": ours, "heldout_loss": ours_loss, "batch_rows": batch_rows},
        "tuned_trl": {"tokens_per_second": tuned_tps, "runs": tuned, "heldout_loss": tuned_loss,
                      "batch_rows": batch_rows},
        "default_trl": {**defaults, "batch_size": args.batch_size, "max_steps": defaults_steps},
        "model_parameters": n_params, "records": records,
        "mean_length": data["mean_length"], "max_length": args.max_length, "lr": args.lr, "rounds": rounds,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=2, default=str) + "\n")
    print(f"results: {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
