"""The baseline: the plain TRL script a user would write — ``SFTTrainer`` with its default settings.

Only what must match for a fair comparison is set (learning rate, batch size, max length, epochs, seed,
no checkpoint saving, and ``use_cpu`` on a machine without GPU); everything else — no packing, padded batches, gradient checkpointing, precision —
is TRL's default. Prints one JSON line: steady-state non-padding tokens/s of the training loop.

    python benchmarks/sft/baseline_trl.py --model DIR --data train.jsonl --out OUT --lr 1e-3 --batch-size 4 --max-length 256
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--max-length", type=int, required=True)
    p.add_argument("--epochs", type=float, default=1.0)
    args = p.parse_args()

    dataset = load_dataset("json", data_files=args.data, split="train")
    config = SFTConfig(
        output_dir=args.out, learning_rate=args.lr, per_device_train_batch_size=args.batch_size,
        max_length=args.max_length, num_train_epochs=args.epochs, logging_steps=1, save_strategy="no",
        report_to="none", seed=42, disable_tqdm=True,
        # TRL defaults to bf16, which transformers only accepts on CPU with use_cpu: the one flag a CPU user must add.
        use_cpu=not torch.cuda.is_available(),
    )
    meter = Throughput()
    trainer = SFTTrainer(model=args.model, args=config, train_dataset=dataset, callbacks=[meter])
    trainer.train()
    trainer.save_model(args.out + "/final")
    (t0, tok0, _), (t1, tok1, steps) = meter.points[0], meter.points[-1]
    print(json.dumps({"tokens_per_second": (tok1 - tok0) / (t1 - t0), "tokens": tok1, "steps": steps,
                      "final": args.out + "/final", "bf16": config.bf16,
                      "gradient_checkpointing": config.gradient_checkpointing, "packing": config.packing}))


if __name__ == "__main__":
    main()
