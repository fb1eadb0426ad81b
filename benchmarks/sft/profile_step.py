"""Where a training step's time goes: cProfile of SFT and DPO steps of trainer-torch on the ~25M model.

Usage::

    python benchmarks/sft/profile_step.py --method sft --steps 8        # full finetuning, packed rows
    python benchmarks/sft/profile_step.py --method dpo --steps 8        # sigmoid DPO, LoRA, adapter-off reference
    python benchmarks/sft/profile_step.py --method sft --threads 1      # torch intra-op threads (default: torch's)
    python benchmarks/sft/profile_step.py --method sft --dump out.prof  # keep the raw profile (snakeviz, pstats)

Runs ``run_job`` (the recipe the service runs) in this process for ``--steps`` optimizer steps under
cProfile and splits the training loop's time into: data collation (the collator), forward (the model's
forward passes, the reference's included), backward, optimizer (AdamW step, zero_grad, gradient clipping),
logging/events (metrics rows, progress events, the Trainer's log path, DPO's reward statistics) and the rest
(the Trainer's own loop, scheduler, callbacks); the checkpoint saved when the run reaches max_steps is its own
line. cProfile adds a per-call cost to Python-heavy parts (logging,
collation) and none to time inside torch kernels, so the Python parts read a little high. The load average is
printed (shared machines): compare shares, not seconds. ``docs/performance.md`` holds the figures.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import tempfile
import time
from pathlib import Path
from typing import Any

#: category -> (file suffix, function name) entries whose cumulative time is the category's
CATEGORIES: dict[str, list[tuple[str, str]]] = {
    "collation": [("batching.py", "__call__"), ("dpo_trainer.py", "torch_call"), ("dpo_trainer.py", "__call__")],
    "forward": [("modeling_llama.py", "forward")],
    "backward": [("accelerator.py", "backward")],
    "optimizer": [("optimizer.py", "wrapper"), ("optimizer.py", "zero_grad"), ("clip_grad.py", "_clip_grads_with_norm_"),
                  ("clip_grad.py", "_get_total_norm")],
    # Our Trainer.log override (metrics rows, progress events, the Trainer's own log path) and DPO's reward
    # statistics. Not _maybe_log_save_evaluate: it also holds the checkpoint save, counted on its own below.
    "logging/events": [("hooks.py", "log"), ("preference.py", "_record")],
    # The checkpoint written when max_steps is reached (once per run: read its share as amortised over --steps).
    "checkpoint save": [("", "_save_checkpoint")],
}


def _data(model: str, out: Path, method: str, n: int) -> Path:
    from halo_models.tiny import corpus_path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    tok.model_max_length = 1 << 30
    ids = tok(corpus_path().read_text(encoding="utf-8"))["input_ids"]
    rng = random.Random(0)

    def span(lo: int, hi: int) -> str:
        length = rng.randint(lo, hi)
        start = rng.randint(0, len(ids) - length - 1)
        return tok.decode(ids[start: start + length])

    if method == "sft":
        rows = [{"text": span(16, 255)} for _ in range(n)]
    else:
        rows = [{"prompt": span(24, 96), "chosen": " " + span(16, 128), "rejected": " " + span(16, 128)}
                for _ in range(n)]
    path = out / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def categorise(stats: pstats.Stats, loop_s: float) -> dict[str, float]:
    """Seconds per category (the largest matching entry's cumulative time, summed over a category's entries;
    an empty file suffix matches any file, so the outermost of several same-named functions counts)."""
    out: dict[str, float] = {}
    for cat, entries in CATEGORIES.items():
        total = 0.0
        for suffix, fn in entries:
            best = 0.0
            for (file, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
                if name == fn and file.endswith(suffix):
                    best = max(best, ct)
            total += best
        out[cat] = total
    out["other (Trainer loop, scheduler, callbacks)"] = max(0.0, loop_s - sum(out.values()))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=("sft", "dpo"), default="sft")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice).")
    p.add_argument("--dump", type=Path, default=None, help="Write the raw cProfile stats here.")
    a = p.parse_args()

    import torch
    from halo_models.tiny import make_tiny_cached
    from halo_trainer_torch.core.runner import run_job

    if a.threads:
        torch.set_num_threads(a.threads)
    model = str(make_tiny_cached(arch="llama", size="small"))
    with tempfile.TemporaryDirectory(prefix="halo-profile-") as tmp:
        work = Path(tmp)
        os.environ["HALO_HOME"] = str(work / "home")
        data = _data(model, work, a.method, 40 * a.steps)
        spec: dict[str, Any] = {"model": model, "data": {"train": str(data)}, "max_steps": a.steps,
                                "checkpoint_every_steps": 100000, "lr_scheduler": "linear", "warmup_ratio": 0.0}
        if a.method == "sft":
            spec.update(finetune="full", batch_size=5, max_length=256, learning_rate=1e-3)
        else:
            spec.update(finetune="lora", batch_size=4, max_length=256, learning_rate=5e-4, loss_type="sigmoid")
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        summary = run_job(a.method, spec, work / "run")
        prof.disable()
        wall = time.perf_counter() - t0
        stats = pstats.Stats(prof)
        if a.dump:
            stats.dump_stats(str(a.dump))
        loop = 0.0
        for (file, _l, name), (_cc, _nc, _tt, ct, _c) in stats.stats.items():  # type: ignore[attr-defined]
            if name == "_inner_training_loop" and file.endswith("trainer.py"):
                loop = max(loop, ct)
    cats = categorise(stats, loop)
    print(f"{a.method}: {a.steps} steps · threads {torch.get_num_threads()} · load average {os.getloadavg()[0]:.1f} · "
          f"run_job {wall:.1f}s, training loop {loop:.1f}s ({loop / a.steps:.3f} s/step) · "
          f"{summary.tokens_per_second or 0:.0f} tokens/s · MFU "
          + (f"{summary.mfu:.1%}" if summary.mfu is not None else "n/a"))
    print(f"{'part':<46}{'s/step':>9}{'share':>8}")
    for cat, sec in cats.items():
        print(f"{cat:<46}{sec / a.steps:>9.3f}{sec / loop if loop else 0:>8.1%}")


if __name__ == "__main__":
    main()
