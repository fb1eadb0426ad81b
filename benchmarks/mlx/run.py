"""SFT throughput of trainer-mlx vs a plain ``mlx_lm.lora`` run (and vs trainer-torch, informational).

Same model (the tiny-model kit's Llama, ``--model tiny://llama?size=small`` for ~25M parameters; float32), same chat records, LoRA rank 16 /
scale 2 on every linear layer of every block, batch 8, prompt tokens masked, no packing (``mlx_lm.lora`` has none),
no evaluation, no checkpoints inside the measured loop. Each side runs in its own fresh process, alternating, for
``--rounds`` rounds; the median is reported.

Throughput = real (non-padding) tokens of the trained records / seconds of the training loop (loading, export and
evaluation excluded). ``mlx_lm.lora`` reports its own tokens/s counting only trained (completion) tokens; the
benchmark converts its loop time back to the same real-token count (every record is seen the same number of times:
iters x batch is a whole number of epochs). Target: trainer-mlx / mlx_lm.lora >= 1.0.

Usage::

    python benchmarks/mlx/run.py            # ~3-5 min on 2 CPU cores
    python benchmarks/mlx/run.py --quick    # a smoke run

Results: ``benchmarks/results/mlx.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECORDS = 64
BATCH = 8
THINGS = ["sky", "grass", "snow", "coal", "blood", "sun", "sea", "rose", "leaf", "cloud", "plum", "lime", "ink",
          "milk", "rust", "sand"]
COLOURS = ["blue", "green", "white", "black", "red", "yellow", "grey", "purple"]


def write_data(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"messages": [{"role": "user", "content": f"What colour is the {THINGS[i % 16]} number {i}?"},
                          {"role": "assistant", "content": f"The {THINGS[i % 16]} number {i} is "
                                                           f"{COLOURS[i % 8]}, as far as I can tell."}]}
            for i in range(RECORDS)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    for name in ("train.jsonl", "valid.jsonl"):
        (folder / name).write_text(text)
    return folder


def real_tokens(model: str, data: Path) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    return sum(len(tok.apply_chat_template(json.loads(line)["messages"], tokenize=True, return_dict=False))
               for line in (data / "train.jsonl").read_text().splitlines())


OURS = """
import json, sys
from halo_trainer_mlx.core.runner import run_job
spec = json.loads(sys.argv[1])
s = run_job("sft", spec, sys.argv[2])
print(json.dumps({"state": str(s.state), "tps": s.tokens_per_second, "error": s.failure_reason}))
"""

TORCH = """
import json, sys, torch
from halo_trainer_torch.core.runner import run_job
spec = json.loads(sys.argv[1])
s = run_job("sft", spec, sys.argv[2])
print(json.dumps({"state": str(s.state), "tps": s.tokens_per_second, "error": s.failure_reason}))
"""

MLX_LM = """
import json, sys, types
import mlx.optimizers as optim
from mlx_lm.utils import load
from mlx_lm.tuner.trainer import TrainingArgs, train
from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx_lm.tuner.datasets import load_dataset
cfg = json.loads(sys.argv[1])
model, tok = load(cfg["model"])
model.freeze()
linear_to_lora_layers(model, len(model.layers), {"rank": 16, "scale": 2.0, "dropout": 0.0})
args = types.SimpleNamespace(data=cfg["data"], train=True, test=False, mask_prompt=True, hf_dataset=None,
                             chat_feature="messages", prompt_feature="prompt", completion_feature="completion",
                             text_feature="text")
train_set, val_set, _ = load_dataset(args, tok)
reports = []
class CB:
    def on_train_loss_report(self, info): reports.append(info)
    def on_val_loss_report(self, info): pass
targs = TrainingArgs(batch_size=cfg["batch"], iters=cfg["iters"], val_batches=0, steps_per_report=cfg["iters"],
                     steps_per_eval=10**9, steps_per_save=10**9, max_seq_length=cfg["max_length"],
                     adapter_file=cfg["adapter"])
from mlx_lm.tuner.datasets import CacheDataset
train(model=model, optimizer=optim.Adam(learning_rate=2e-4), train_dataset=CacheDataset(train_set),
      val_dataset=None, args=targs, training_callback=CB())
r = reports[-1]
print(json.dumps({"loop_s": r["trained_tokens"] / r["tokens_per_second"], "trained_tokens": r["trained_tokens"]}))
"""


def run_py(code: str, *args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5, help="passes over the 64 records (iters = epochs * 8)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--model", default="tiny://llama",
                   help="tiny://llama (default; seconds per run on 2 cores) or tiny://llama?size=small (~25M params; "
                        "use it on a Mac or a larger CPU: on 2 busy cores one step takes tens of seconds)")
    a = p.parse_args()
    if a.quick:
        a.rounds, a.epochs = 1, 2
    from halo_training.models import resolve_model_path

    model = resolve_model_path(a.model)
    iters = a.epochs * RECORDS // BATCH
    work = Path(tempfile.mkdtemp(prefix="halo-bench-mlx-"))
    data = write_data(work / "data")
    tokens = a.epochs * real_tokens(model, data)
    spec = {"model": model, "data": {"train": str(data / "train.jsonl")}, "finetune": "lora", "max_steps": iters,
            "batch_size": BATCH, "max_length": 256, "packing": False, "learning_rate": 2e-4, "dtype": "float32",
            "lora": {"rank": 16, "alpha": 32, "dropout": 0.0}, "checkpoint_every_steps": 10**6,
            "log_every_steps": iters, "progress_interval_s": 1e9}
    results: dict[str, list[float]] = {"trainer-mlx": [], "mlx_lm.lora": [], "trainer-torch": []}
    for r in range(a.rounds):
        ours = run_py(OURS, json.dumps({**spec, "backend": "mlx"}), str(work / f"ours-{r}"))
        assert ours["state"].endswith("succeeded"), ours
        results["trainer-mlx"].append(ours["tps"])
        base = run_py(MLX_LM, json.dumps({"model": model, "data": str(data), "batch": BATCH, "iters": iters,
                                          "max_length": 256, "adapter": str(work / f"mlxlm-{r}.safetensors")}))
        results["mlx_lm.lora"].append(tokens / base["loop_s"])
        if not a.no_torch:
            t = run_py(TORCH, json.dumps({**spec, "backend": "torch"}), str(work / f"torch-{r}"))
            results["trainer-torch"].append(t["tps"])
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} tok/s" for k, v in results.items() if v))
    med = {k: statistics.median(v) for k, v in results.items() if v}
    out = {"benchmark": "mlx-sft-throughput", "model": a.model, "records": RECORDS, "batch": BATCH,
           "iters": iters, "rounds": a.rounds, "tokens_per_second": med, "runs": results,
           "ratio_vs_mlx_lm": med["trainer-mlx"] / med["mlx_lm.lora"],
           "ratio_vs_torch": (med["trainer-mlx"] / med["trainer-torch"]) if "trainer-torch" in med else None,
           "target": ">= 1.0 vs mlx_lm.lora", "platform": platform.platform(), "machine": platform.machine()}
    print(f"trainer-mlx / mlx_lm.lora = {out['ratio_vs_mlx_lm']:.2f}x (target >= 1.0)")
    if out["ratio_vs_torch"] is not None:
        print(f"trainer-mlx / trainer-torch (same CPU, informational) = {out['ratio_vs_torch']:.2f}x")
    dest = ROOT / "benchmarks" / "results" / "mlx.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
