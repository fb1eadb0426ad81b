"""DPO step time: trainer-torch's DPO recipe vs TRL's ``DPOTrainer`` tuned the same way, side by side.

Usage::

    python benchmarks/dpo/run.py            # ~25M-parameter model, 2 rounds (~6-10 minutes on 2 CPU cores)
    python benchmarks/dpo/run.py --quick    # few pairs, one round (a smoke run)
    python benchmarks/dpo/run.py --padded   # adds ours with padded batches (share_prompt off): the layout's share

Both sides train a LoRA adapter (rank 16, alpha 32, dropout 0.05, every linear layer but the head) on the
~25M-parameter Llama of the halo-models kit (``small`` preset, random weights) with the sigmoid DPO loss
(beta 0.1) against the base model as reference (the adapter disabled), on the same plain-text pairs: a prompt
of 24..96 tokens and chosen / rejected completions of 16..128 tokens cut from the kit's corpus. Equal:
learning rate, linear schedule without warmup, batch size (pairs per optimizer step), max length, seed.

* **ours** — ``halo_trainer_torch.core.runner.run_job("dpo", spec)`` (the recipe the trainer service runs),
  in its own process, with the trainer's per-backend defaults (float32 on a CPU without native bf16, no
  gradient checkpointing on CPU) and its default shared-prompt batches (each prompt runs once, pairs packed
  without padding; the same log-probs as padded batches);
* **TRL** — ``DPOTrainer`` tuned the same way: the same LoRA config through ``peft_config``, no gradient
  checkpointing, the same dtype policy, ``padding_free=False`` (sdpa on CPU has no varlen kernel),
  reference = the adapter disabled (TRL's default for a PEFT model), in its own process.

Measured: steady-state seconds per optimizer step of the training loop (from the first logged step to the
last, so loading, tokenisation and the export count for neither). Rounds alternate which side goes first; the
ratio is TRL s/step / ours s/step of the medians (higher is better for ours); target >= 1.1. The load average
is recorded with every figure (shared machines). Results: ``benchmarks/results/dpo.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "dpo.json"
TARGET = 1.1
LORA = {"rank": 16, "alpha": 32.0, "dropout": 0.05}


def make_pairs(model: str, out: Path, n: int, seed: int = 0) -> Path:
    from halo_models.tiny import corpus_path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    tok.model_max_length = 1 << 30
    ids = tok(corpus_path().read_text(encoding="utf-8"))["input_ids"]
    rng = random.Random(seed)

    def span(lo: int, hi: int) -> str:
        length = rng.randint(lo, hi)
        start = rng.randint(0, len(ids) - length - 1)
        return tok.decode(ids[start: start + length])

    rows = [{"prompt": span(24, 96), "chosen": " " + span(16, 128), "rejected": " " + span(16, 128)} for _ in range(n)]
    path = out / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- the two sides, each run as its own process (python run.py --side ours|trl ...) ----------------------
def side_ours(a: argparse.Namespace, share_prompt: bool = True) -> dict[str, Any]:
    from halo_schemas.jobs import JobState
    from halo_trainer_torch.core.runner import run_job

    spec = {"model": a.model, "data": {"train": a.data}, "finetune": "lora", "lora": LORA, "loss_type": "sigmoid",
            "beta": 0.1, "learning_rate": a.lr, "batch_size": a.batch_size, "max_length": a.max_length, "epochs": 1,
            "lr_scheduler": "linear", "warmup_ratio": 0.0, "checkpoint_every_steps": 100000, "seed": 42,
            "log_every_steps": 1, "share_prompt": share_prompt}
    run = Path(a.out) / "run"
    s = run_job("dpo", spec, run)
    if s.state != JobState.SUCCEEDED:
        raise SystemExit(f"ours failed: {s.failure_reason}")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r and "eval_loss" not in r]
    first, last = rows[0], rows[-1]
    return {"seconds_per_step": (last["ts"] - first["ts"]) / (last["step"] - first["step"]), "steps": s.steps,
            "loss_last": s.loss_last, "reward_accuracy": s.extras.get("reward_accuracy"),
            "model_flops_per_second": s.model_flops_per_second, "mfu": s.mfu,
            "batch_layout": s.extras.get("batch_layout")}


def side_trl(a: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
    else:
        from halo_trainer_torch.core.components.model import cpu_has_native_bf16

        bf16 = cpu_has_native_bf16()

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.points: list[tuple[float, int]] = []

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001, ANN201
            if logs and "loss" in logs:
                self.points.append((time.time(), state.global_step))

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    config = DPOConfig(
        output_dir=a.out, learning_rate=a.lr, per_device_train_batch_size=a.batch_size, max_length=a.max_length,
        num_train_epochs=1, logging_steps=1, save_strategy="no", report_to="none", seed=42, disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(), loss_type=["sigmoid"], beta=0.1, lr_scheduler_type="linear",
        warmup_steps=0, gradient_checkpointing=False, bf16=bf16,
    )
    peft = LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM", bias="none")
    clock = Clock()
    trainer = DPOTrainer(model=model, args=config, train_dataset=load_dataset("json", data_files=a.data, split="train"),
                         processing_class=tok, peft_config=peft, callbacks=[clock])
    trainer.train()
    (t0, s0), (t1, s1) = clock.points[0], clock.points[-1]
    last = [h for h in trainer.state.log_history if "loss" in h][-1]
    return {"seconds_per_step": (t1 - t0) / (s1 - s0), "steps": s1, "loss_last": last["loss"],
            "reward_accuracy": last.get("rewards/accuracies"), "bf16": bf16,
            "gradient_checkpointing": config.gradient_checkpointing}


def run_side(side: str, model: str, data: Path, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix=f"{side}-", dir=work))
    env = {**os.environ, "HALO_HOME": str(work / "home")}
    r = subprocess.run([sys.executable, __file__, "--side", side, "--model", model, "--data", str(data), "--out",
                        str(out), "--lr", str(a.lr), "--batch-size", str(a.batch_size), "--max-length",
                        str(a.max_length)], capture_output=True, text=True, env=env, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"{side} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "load_avg": os.getloadavg()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="Few pairs, one round: a smoke run.")
    p.add_argument("--pairs", type=int, default=None, help="Training pairs (default 64, quick 16).")
    p.add_argument("--rounds", type=int, default=None, help="Alternating rounds (default 2, quick 1).")
    p.add_argument("--batch-size", type=int, default=4, help="Pairs per optimizer step (both sides).")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--padded", action="store_true",
                   help="Also run ours with padded batches (share_prompt off), to show what the layout is worth.")
    p.add_argument("--side", choices=("ours", "ours-padded", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.side:
        sides = {"ours": side_ours, "ours-padded": lambda x: side_ours(x, share_prompt=False), "trl": side_trl}
        print(json.dumps(sides[a.side](a), default=str))
        return

    from halo_models.tiny import make_tiny_cached

    pairs = a.pairs or (16 if a.quick else 64)
    rounds = a.rounds or (1 if a.quick else 2)
    model = str(make_tiny_cached(arch="llama", size="small"))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="halo-bench-dpo-") as tmp:
        work = Path(tmp)
        data = make_pairs(model, work, pairs)
        print(f"DPO sigmoid + LoRA r{LORA['rank']} · {pairs} pairs, batch {a.batch_size} · load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        names = ("ours", "trl", "ours-padded") if a.padded else ("ours", "trl")
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for i in range(rounds):
            for side in (names if i % 2 == 0 else names[::-1]):
                t0 = time.monotonic()
                res = run_side(side, model, data, work, a)
                results[side].append(res)
                print(f"round {i + 1} {side:11s}: {res['seconds_per_step']:.3f} s/step · {res['steps']} steps · "
                      f"{time.monotonic() - t0:.0f}s wall · load {res['load_avg'][0]:.1f}", flush=True)
    ours = statistics.median(r["seconds_per_step"] for r in results["ours"])
    trl = statistics.median(r["seconds_per_step"] for r in results["trl"])
    ratio = trl / ours
    ok = ratio >= TARGET
    rounds_r = [t["seconds_per_step"] / o["seconds_per_step"] for o, t in zip(results["ours"], results["trl"],
                                                                               strict=True)]
    print(f"\n{'side':<8}{'s/step':>10}{'last loss':>12}")
    print(f"{'ours':<8}{ours:>10.3f}{results['ours'][-1]['loss_last']:>12.4f}")
    print(f"{'TRL':<8}{trl:>10.3f}{results['trl'][-1]['loss_last']:>12.4f}")
    print("per-round ratios: " + ", ".join(f"{r:.2f}x" for r in rounds_r))
    mfu = results["ours"][-1].get("mfu")
    if mfu is not None:
        print(f"ours: MFU {mfu:.1%}")
    if a.padded:
        padded = statistics.median(r["seconds_per_step"] for r in results["ours-padded"])
        print(f"shared-prompt batches / padded: {padded / ours:.2f}x; TRL / ours padded: {trl / padded:.2f}x")
    print(f"step time, TRL DPOTrainer / ours: {ratio:.2f}x  [target >= {TARGET}x] {'PASS' if ok else 'MISS'}  "
          f"({time.monotonic() - started:.0f}s in all)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "dpo", "ratio": ratio, "round_ratios": rounds_r, "target": TARGET, "met": ok,
        "ours": {"seconds_per_step": ours, "runs": results["ours"]},
        "trl": {"seconds_per_step": trl, "runs": results["trl"]},
        **({"ours_padded": {"runs": results["ours-padded"]}} if a.padded else {}),
        "pairs": pairs, "batch_size": a.batch_size, "max_length": a.max_length, "lr": a.lr, "lora": LORA,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=2, default=str) + "\n")
    print(f"results: {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
