"""GRPO step time: our recipe (Halo rollout backend + verifier-sandbox over the bus + Halo hooks) vs TRL's
``GRPOTrainer`` with an in-process Python reward function — what a user would otherwise write.

Two workloads, each side run in this process, alternating rounds, on the same model, prompts and settings
(num_generations, batch, max new tokens, temperature 1, loss dapo, beta 0, float32, full finetuning):

* ``python_reward``: the reward is a format check. Baseline: a Python function applying three regular
  expressions (partial credit). Ours: the ``regex_format`` verifier with the same patterns, batched to the
  verifier-sandbox service over NATS. Target: ours no more than 10 % slower per step.
* ``compile_run``: the reward compiles and runs C. The policy is first warmed up (SFT) to write a small C
  program that prints a word. Baseline: a Python function that writes each completion to a file, runs
  ``gcc -O1 -Wall -Wextra`` and the program with ``subprocess.run``, one after another, and grades it on the
  same ladder (0 / 0.3 / 0.5 / 0.7 / 1.0). Ours: the ``gcc`` verifier (sandboxed, parallel, cached) over the
  bus. Target: ours faster.

Step time = wall time between consecutive optimizer steps (generation, rewards, loss, update, logging),
median over the measured steps after ``--warmup`` steps, pooled over ``--rounds`` rounds.

Usage::

    python benchmarks/rl/grpo.py            # ~3-4 min on 2 CPU cores
    python benchmarks/rl/grpo.py --quick    # a smoke run

Results: ``benchmarks/results/rl_grpo.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "rl_grpo.json"
DATA = ROOT / "services" / "trainer-torch" / "src" / "halo_trainer_torch" / "data"
MAX_SLOWDOWN = 1.10  # python_reward: ours / TRL step time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
warnings.filterwarnings("ignore")

TAG_PATTERNS = ["^<answer>", "</answer>$", "^<answer>[a-z]+</answer>$"]
C_PROGRAM = '#include <stdio.h>\nint main(void){{puts("{w}");return 0;}}'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="small", choices=("tiny", "small"), help="model of the python_reward workload")
    p.add_argument("--steps", type=int, default=8, help="measured optimizer steps per round")
    p.add_argument("--warmup", type=int, default=2, help="steps not measured at the start of each round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per side")
    p.add_argument("--prompts", type=int, default=4, help="prompts per optimizer step")
    p.add_argument("--n", type=int, default=8, help="completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=32, help="python_reward: tokens per completion")
    p.add_argument("--parts", default="python_reward,compile_run", help="comma-separated workloads")
    p.add_argument("--quick", action="store_true", help="tiny model, few steps: a smoke run")
    p.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.warmup, args.rounds = "tiny", 3, 1, 1
    return args


# ---- the baseline's reward functions (plain Python, in process) ---------------------------------------
def regex_reward(completions: list[Any], **kw: Any) -> list[float]:
    out = []
    for c in completions:
        text = (c[-1]["content"] if isinstance(c, list) else str(c)).strip()
        out.append(sum(re.search(p, text) is not None for p in TAG_PATTERNS) / len(TAG_PATTERNS))
    return out


def gcc_reward(completions: list[Any], expected: list[str], **kw: Any) -> list[float]:
    """Compile and run each completion, one after another (the ladder of docs/verifiers.md)."""
    out = []
    for c, want in zip(completions, expected, strict=True):
        text = c[-1]["content"] if isinstance(c, list) else str(c)
        with tempfile.TemporaryDirectory() as d:
            src, exe = Path(d) / "main.c", Path(d) / "main"
            src.write_text(text)
            try:
                r = subprocess.run(["gcc", "-O1", "-Wall", "-Wextra", "-o", str(exe), str(src)], capture_output=True,
                                   timeout=30)
            except subprocess.TimeoutExpired:
                out.append(0.0)
                continue
            if r.returncode != 0:
                out.append(0.0)
                continue
            base = 0.3 if r.stderr.strip() else 0.5
            try:
                p = subprocess.run([str(exe)], capture_output=True, timeout=5)
            except subprocess.TimeoutExpired:
                out.append(base)
                continue
            if p.returncode != 0:
                out.append(base)
            else:
                out.append(1.0 if p.stdout.decode(errors="replace").strip() == want.strip() else 0.7)
    return out


# ---- the stack: nats-server + verifier-sandbox ----------------------------------------------------------
class VerifierStack:
    def __init__(self, root: Path) -> None:
        from halo_common.natsproc import NatsProcess

        self.nats = NatsProcess.start(root / "nats", log_file=root / "nats.log")
        env = {**os.environ, "HALO_HOME": str(root / "home"), "HALO_NATS_URL": self.nats.url, "HALO_LOG_JSON": "false"}
        self.log = (root / "verifier.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "halo_verifier_sandbox"], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        os.environ["HALO_NATS_URL"] = self.nats.url  # the recipe's private bus connection reads it
        asyncio.run(self._wait())

    async def _wait(self) -> None:
        from halo_bus import NatsBus, subjects
        from halo_schemas.health import HealthRequest, ServiceHealth

        bus = await NatsBus.connect(self.nats.url, name="bench")
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError("verifier-sandbox exited")
                try:
                    h = await bus.request(subjects.rpc("verifier-sandbox", "health"), HealthRequest(), ServiceHealth,
                                          timeout=1)
                    if h.status in ("ok", "degraded"):
                        return
                except Exception:
                    await asyncio.sleep(0.3)
            raise RuntimeError("verifier-sandbox did not come up")
        finally:
            await bus.close()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        self.nats.stop()


# ---- workloads --------------------------------------------------------------------------------------------
def tag_records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / "rl_tags_train.jsonl").read_text().splitlines()]


def c_records() -> list[dict[str, Any]]:
    out = []
    for r in tag_records():
        word = r["messages"][0]["content"].removeprefix("tag:")
        out.append({"messages": [{"role": "user", "content": f"c:{word}"},
                                 {"role": "assistant", "content": C_PROGRAM.format(w=word)}],
                    "context": {"expected_output": word}})
    return out


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def warm_up(data: Path, out: Path, steps: int) -> str:
    from halo_trainer_torch.core.runner import run_job

    s = run_job("sft", {"model": "tiny://llama", "data": {"train": str(data)}, "finetune": "full", "max_steps": steps,
                        "batch_size": 8, "max_length": 128, "learning_rate": 3e-3, "warmup_ratio": 0.0,
                        "lr_scheduler": "constant", "checkpoint_every_steps": 10_000, "packing": False,
                        "dtype": "float32"}, out)
    if s.state != "succeeded":
        raise RuntimeError(f"warm-up failed: {s.failure_reason}")
    return s.outputs["final"]


def trl_steps(model_path: str, records: list[dict[str, Any]], reward: Any, *, steps: int, prompts: int, n: int,
              max_new_tokens: int, seed: int, out: Path) -> list[float]:
    """Per-step wall times of TRL's GRPOTrainer with ``reward`` (a Python function) and its own generate."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    ds = Dataset.from_list([{"prompt": [r["messages"][0]], "expected": r.get("context", {}).get("expected_output", "")}
                            for r in records])
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a: Any, **k: Any) -> None:
            stamps.append(time.perf_counter())

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            stamps.append(time.perf_counter())

    args = GRPOConfig(output_dir=str(out), per_device_train_batch_size=prompts * n, num_generations=n,
                      max_completion_length=max_new_tokens, temperature=1.0, learning_rate=1e-4, beta=0.0,
                      loss_type="dapo", max_steps=steps, logging_steps=1, save_strategy="no", report_to="none",
                      bf16=False, use_cpu=True, activation_checkpointing=False, disable_tqdm=True, seed=seed,
                      lr_scheduler_type="constant", warmup_steps=0, disable_dropout=True, log_level="error")
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=ds, processing_class=tok,
                          callbacks=[Clock()])
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for noisy in (PrinterCallback, ProgressCallback):  # printing is not part of either side's work
        trainer.remove_callback(noisy)
    trainer.train()
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def our_steps(model_path: str, data: Path, verifier: dict[str, Any], *, steps: int, prompts: int, n: int,
              max_new_tokens: int, seed: int, out: Path) -> tuple[list[float], dict[str, float]]:
    """Per-step wall times of our GRPO recipe (metrics.jsonl timestamps), rewards over the bus."""
    from halo_trainer_torch.core.runner import run_job

    shutil.rmtree(out, ignore_errors=True)
    s = run_job("grpo", {
        "model": model_path, "data": {"train": str(data)}, "verifiers": [verifier], "verifier_transport": "bus",
        "finetune": "full", "max_steps": steps, "batch_size": prompts * n, "num_generations": n,
        "max_new_tokens": max_new_tokens, "temperature": 1.0, "learning_rate": 1e-4, "beta": 0.0, "loss_type": "dapo",
        "warmup_ratio": 0.0, "lr_scheduler": "constant", "checkpoint_every_steps": 10_000, "seed": seed,
        "dtype": "float32", "eval_max_prompts": 1, "eval_num_generations": 1, "max_length": 256,
        "progress_interval_s": 0.0, "log_samples": 4}, out)
    if s.state != "succeeded":
        raise RuntimeError(f"our GRPO run failed: {s.failure_reason}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    ts = [r["ts"] for r in train]
    parts = {k: statistics.median(r[k] for r in train[1:]) for k in ("generate_seconds", "verify_seconds")
             if all(k in r for r in train[1:])}
    print(f"  ours per step: generate {[round(r.get('generate_seconds', 0), 3) for r in train]} "
          f"verify {[round(r.get('verify_seconds', 0), 3) for r in train]}", file=sys.stderr)
    return [b - a for a, b in zip(ts, ts[1:], strict=False)], parts


def measure(name: str, args: argparse.Namespace, model_path: str, data: Path, records: list[dict[str, Any]],
            reward: Any, verifier: dict[str, Any], max_new_tokens: int, work: Path) -> dict[str, Any]:
    total = args.warmup + args.steps
    times: dict[str, list[float]] = {"ours": [], "trl": []}
    parts: list[dict[str, float]] = []
    for r in range(args.rounds):
        for side in (["trl", "ours"] if r % 2 == 0 else ["ours", "trl"]):
            t0 = time.perf_counter()
            if side == "trl":
                st = trl_steps(model_path, records, reward, steps=total, prompts=args.prompts, n=args.n,
                               max_new_tokens=max_new_tokens, seed=r, out=work / f"{name}-trl-{r}")
            else:
                st, p = our_steps(model_path, data, verifier, steps=total, prompts=args.prompts, n=args.n,
                                  max_new_tokens=max_new_tokens, seed=r, out=work / f"{name}-ours-{r}")
                parts.append(p)
            # the first step of ours has no previous row: ours has total-1 intervals; skip warm-up in both
            measured = st[-args.steps:]
            times[side] += measured
            print(f"[{name}] round {r + 1}/{args.rounds} {side:<5} median step {statistics.median(measured):.3f}s "
                  f"({time.perf_counter() - t0:.1f}s with setup)", file=sys.stderr)
    ours, trl = statistics.median(times["ours"]), statistics.median(times["trl"])
    return {"ours_step_s": ours, "trl_step_s": trl, "ratio_step_time": ours / trl, "speedup": trl / ours,
            "ours_steps_s": times["ours"], "trl_steps_s": times["trl"],
            "ours_generate_s": statistics.median(p["generate_seconds"] for p in parts if "generate_seconds" in p),
            "ours_verify_s": statistics.median(p["verify_seconds"] for p in parts if "verify_seconds" in p),
            "max_new_tokens": max_new_tokens, "model": Path(model_path).name}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from halo_models.tiny import make_tiny_cached

    torch.set_num_threads(os.cpu_count() or 1)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    work = Path(tempfile.mkdtemp(prefix="halo-bench-grpo-"))
    stack = VerifierStack(work)
    results: dict[str, Any] = {}
    try:
        if "python_reward" in parts:
            model = str(make_tiny_cached(size=args.size, arch="llama"))
            data = write_jsonl(work / "tags.jsonl", tag_records())
            results["python_reward"] = measure(
                "python_reward", args, model, data, tag_records(), regex_reward,
                {"name": "regex_format", "params": {"patterns": TAG_PATTERNS}}, args.max_new_tokens, work)
            results["python_reward"]["target"] = f"<= {MAX_SLOWDOWN:.2f}x TRL's step time"
            results["python_reward"]["meets_target"] = results["python_reward"]["ratio_step_time"] <= MAX_SLOWDOWN
        if "compile_run" in parts and shutil.which("gcc"):
            data = write_jsonl(work / "c.jsonl", c_records())
            model = warm_up(data, work / "c-warmup", 20 if args.quick else 60)
            results["compile_run"] = measure("compile_run", args, model, data, c_records(), gcc_reward,
                                             {"name": "gcc", "params": {"timeout_s": 5}}, 48, work)
            results["compile_run"]["target"] = "faster than TRL (ratio < 1)"
            results["compile_run"]["meets_target"] = results["compile_run"]["ratio_step_time"] < 1.0
    finally:
        stack.close()
        shutil.rmtree(work, ignore_errors=True)

    out = {
        "benchmark": "rl.grpo",
        "workload": {"prompts_per_step": args.prompts, "n": args.n, "steps": args.steps, "warmup": args.warmup,
                     "rounds": args.rounds, "size": args.size, "loss_type": "dapo", "beta": 0.0, "dtype": "float32"},
        "results": results,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nGRPO step time, {args.prompts} prompts x {args.n} completions per step, {torch.get_num_threads()} threads")
    head = f"{'workload':<16}{'ours s/step':>13}{'TRL s/step':>12}{'ratio':>8}{'  target':<28}"
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        verdict = "PASS" if r["meets_target"] else "MISS"
        print(f"{name:<16}{r['ours_step_s']:>13.3f}{r['trl_step_s']:>12.3f}{r['ratio_step_time']:>8.2f}  "
              f"{r['target']} {verdict}")
        print(f"{'':<16}ours: generate {r['ours_generate_s']:.3f}s + verify {r['ours_verify_s']:.3f}s per step")
    print("ratio = our step time / TRL's (below 1: ours is faster)")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
