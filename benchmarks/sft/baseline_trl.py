"""The baselines: the TRL ``SFTTrainer`` scripts a user would write — with TRL's defaults, or tuned for speed.

* ``--mode defaults``: only what must match for a fair comparison is set (learning rate, batch size, max length,
  epochs, seed, no checkpoint saving, and ``use_cpu`` on a machine without GPU); everything else — no packing,
  padded batches, gradient checkpointing, bf16 autocast — is TRL's default. ``--max-steps`` bounds it (on a CPU
  without native bf16 those defaults take minutes per handful of steps).
* ``--mode tuned``: what a user who cares about speed sets: ``packing=True`` (best-fit decreasing) with
  ``padding_free=True``, no gradient checkpointing, and the dtype policy of ours (bf16 only where the CPU has
  native bf16, else float32; bf16 on a GPU that supports it). ``--batch-size`` is then packed rows of
  ``max_length``, the same rows per optimizer step as ours.

Prints one JSON line: steady-state non-padding tokens/s of the training loop.

    python benchmarks/sft/baseline_trl.py --mode tuned --model DIR --data train.jsonl --out OUT --lr 1e-3 \
        --batch-size 4 --max-length 256
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from datasets import load_dataset
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer


class Throughput(TrainerCallback):
    """(time, cumulative non-padding tokens) at every logged step; SFTTrainer logs num_tokens itself."""

    def __init__(self) -> None:
        self.points: list[tuple[float, float, int]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
        if logs and "num_tokens" in logs and "loss" in logs:
            self.points.append((time.perf_counter(), float(logs["num_tokens"]), state.global_step))


def tuned_settings() -> dict[str, object]:
    """SFTConfig fields of the tuned baseline (see the module docstring)."""
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
    else:
        from halo_trainer_torch.core.components.model import cpu_has_native_bf16

        bf16 = cpu_has_native_bf16()
    return {"packing": True, "packing_strategy": "bfd", "padding_free": True, "gradient_checkpointing": False,
            "bf16": bf16, "lr_scheduler_type": "linear", "warmup_steps": 0}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--max-length", type=int, required=True)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--mode", choices=("defaults", "tuned"), default="defaults")
    p.add_argument("--max-steps", type=int, default=-1, help="Stop after this many optimizer steps (-1: epochs).")
    args = p.parse_args()

    dataset = load_dataset("json", data_files=args.data, split="train")
    config = SFTConfig(
        output_dir=args.out, learning_rate=args.lr, per_device_train_batch_size=args.batch_size,
        max_length=args.max_length, num_train_epochs=args.epochs, logging_steps=1, save_strategy="no",
        report_to="none", seed=42, disable_tqdm=True,
        # TRL defaults to bf16, which transformers only accepts on CPU with use_cpu: the one flag a CPU user must add.
        use_cpu=not torch.cuda.is_available(), max_steps=args.max_steps,
        **(tuned_settings() if args.mode == "tuned" else {}),
    )
    meter = Throughput()
    trainer = SFTTrainer(model=args.model, args=config, train_dataset=dataset, callbacks=[meter])
    trainer.train()
    trainer.save_model(args.out + "/final")
    (t0, tok0, _), (t1, tok1, steps) = meter.points[0], meter.points[-1]
    print(json.dumps({"tokens_per_second": (tok1 - tok0) / (t1 - t0), "tokens": tok1, "steps": steps,
                      "final": args.out + "/final", "bf16": config.bf16,
                      "gradient_checkpointing": config.gradient_checkpointing, "packing": config.packing,
                      "padding_free": config.padding_free, "mode": args.mode}))


if __name__ == "__main__":
    main()
