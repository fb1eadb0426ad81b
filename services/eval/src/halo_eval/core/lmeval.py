"""Run lm-evaluation-harness and turn its output into one summary per task.

    outcome = run_lm_eval(EvalRun(model=ref, tasks=["halo_offline"], limit=20), index, out_dir)
    outcome.summary["tasks"]["halo_arith_mc"]
    # {"primary_metric": "acc", "value": 0.2, "metrics": {"acc": {"value": 0.2, "stderr": 0.09}, ...},
    #  "n": 20, "num_fewshot": 0, "version": 1.0, "task_hash": "…", "higher_is_better": {...}}

This calls ``lm_eval.simple_evaluate`` with exactly the arguments lm-eval's CLI builds from the same
flags (model, model_args, tasks, limit, num_fewshot, batch size, device), so the numbers are the CLI's.
Files written to ``out_dir``: ``lm_eval_summary.json`` (the summary), ``lm_eval_results.json`` (lm-eval's
raw results) and ``samples/<task>.jsonl`` (per-sample logs, from which the task hashes come).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from halo_common.errors import BadRequest, NotFound

from halo_eval.core.models import ModelRef
from halo_eval.core.tasks import TaskIndex

log = logging.getLogger("halo_eval")

#: Preferred primary metric, first found wins; else the task's first metric.
PRIMARY_ORDER = ("acc", "exact_match", "pass@1", "pass_at_1", "acc_norm", "f1", "em", "mcc", "bleu", "word_perplexity")


@dataclass
class EvalRun:
    """One lm-eval invocation. ``backend``: hf | vllm | served (``served_url`` = serve's OpenAI base URL)."""

    model: ModelRef
    tasks: Sequence[str]
    backend: str = "hf"
    limit: int | float | None = None
    num_fewshot: int | None = None
    batch_size: int | str = 8
    device: str | None = None
    dtype: str = "auto"
    apply_chat_template: bool = False
    served_url: str | None = None
    served_model: str | None = None
    tokenizer: str | None = None
    seed: int = 0
    extra_model_args: dict[str, Any] = field(default_factory=dict)


def default_device() -> str:
    """``cuda`` (CUDA and ROCm builds of torch), else ``mps``, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def model_spec(run: EvalRun) -> tuple[str, dict[str, Any]]:
    """lm-eval's ``model`` name and ``model_args`` for the run (what ``--model``/``--model_args`` would say)."""
    ref = run.model
    if run.backend == "hf":
        args: dict[str, Any] = {"pretrained": ref.pretrained}
        if ref.peft:
            args["peft"] = ref.peft
        args["dtype"] = run.dtype if run.dtype != "auto" else ("float32" if (run.device or "cpu") == "cpu" else "auto")
        return "hf", {**args, **run.extra_model_args}
    if run.backend == "vllm":
        args = {"pretrained": ref.pretrained, "dtype": run.dtype}
        if ref.peft:
            args["lora_local_path"] = ref.peft
            args["enable_lora"] = True
        return "vllm", {**args, **run.extra_model_args}
    if run.backend == "served":
        if not run.served_url:
            raise BadRequest("backend 'served' needs the serve service's OpenAI URL (is serve running?)",
                             param="backend")
        # Chat tasks go to chat completions; loglikelihood needs /v1/completions with echo + logprobs.
        chat = run.apply_chat_template
        base = run.served_url.rstrip("/")
        args = {"model": run.served_model or ref.requested,
                "base_url": f"{base}/chat/completions" if chat else f"{base}/completions",
                "num_concurrent": 1, "max_retries": 2, "tokenized_requests": False}
        if not chat:
            args["tokenizer_backend"] = "huggingface"
            args["tokenizer"] = run.tokenizer or ref.pretrained
        return ("local-chat-completions" if chat else "local-completions"), {**args, **run.extra_model_args}
    raise BadRequest(f"backend must be hf, vllm or served; got {run.backend!r}", param="backend")


def model_args_string(args: dict[str, Any]) -> str:
    """``k=v,k=v`` as lm-eval's ``--model_args`` (for logs and the CLI comparison)."""
    return ",".join(f"{k}={v}" for k, v in args.items())


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Per task: primary metric, every metric with its stderr, n, few-shot, version, task hash (see module doc)."""
    results: dict[str, dict[str, Any]] = raw.get("results") or {}
    hib_all: dict[str, dict[str, bool]] = raw.get("higher_is_better") or {}
    nshot: dict[str, Any] = raw.get("n-shot") or {}
    nsamples: dict[str, Any] = raw.get("n-samples") or {}
    versions: dict[str, Any] = raw.get("versions") or {}
    hashes: dict[str, Any] = raw.get("task_hashes") or {}
    groups: dict[str, list[str]] = raw.get("group_subtasks") or {}
    tasks: dict[str, Any] = {}
    for task, entry in results.items():
        by_metric: dict[str, list[tuple[str, float | None, float | None]]] = {}
        for key, value in entry.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            stderr = entry.get(f"{metric}_stderr,{filt}")
            by_metric.setdefault(metric, []).append((filt, _finite(value), _finite(stderr)))
        metrics: dict[str, dict[str, Any]] = {}
        for metric, rows in by_metric.items():
            for filt, value, stderr in rows:
                if value is None:
                    continue
                name = metric if len(rows) == 1 or filt == "none" else f"{metric},{filt}"
                metrics[name] = {"value": value, "stderr": stderr, "filter": filt}
        if not metrics:
            continue  # a group without aggregate metrics
        primary = next((m for m in PRIMARY_ORDER if m in metrics), next(iter(metrics)))
        hib = hib_all.get(task) or {}
        n = nsamples.get(task, {}).get("effective") if isinstance(nsamples.get(task), dict) else None
        if n is None and task in groups:
            n = sum((nsamples.get(t) or {}).get("effective", 0) for t in groups[task]) or None
        tasks[task] = {
            "primary_metric": primary, "value": metrics[primary]["value"], "metrics": metrics,
            "higher_is_better": {m: bool(hib.get(m.split(",")[0], True)) for m in metrics},
            "n": n if n is not None else entry.get("sample_len"), "num_fewshot": nshot.get(task),
            "version": versions.get(task), "task_hash": hashes.get(task), "is_group": task in groups,
        }
    return {"lm_eval_version": raw.get("lm_eval_version"), "model": raw.get("model_name"),
            "model_source": raw.get("model_source"), "config": _jsonable(raw.get("config") or {}),
            "tasks": tasks}


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def eval_results(summary: dict[str, Any], details: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Registry rows (run x task x metric) from a summary: one per metric, primary marked in details."""
    rows = []
    for task, t in summary["tasks"].items():
        for metric, m in t["metrics"].items():
            rows.append({
                "task": task, "metric": metric, "value": m["value"], "stderr": m["stderr"],
                "higher_is_better": t["higher_is_better"].get(metric, True), "num_samples": t["n"],
                "details": {"primary": metric == t["primary_metric"], "num_fewshot": t["num_fewshot"],
                            "version": t["version"], "task_hash": t["task_hash"],
                            "lm_eval_version": summary["lm_eval_version"], **(details or {})},
            })
    return rows


@dataclass
class EvalOutcome:
    summary: dict[str, Any]
    summary_path: Path
    raw_path: Path


def run_lm_eval(run: EvalRun, index: TaskIndex, out_dir: Path,
                on_progress: Callable[[str], None] | None = None) -> EvalOutcome:
    """Run the tasks and write the summary + raw files under ``out_dir`` (see the module docstring)."""
    import lm_eval

    tasks = index.resolve(run.tasks)
    if run.backend == "hf" and not run.device:
        run.device = default_device()
    model, args = model_spec(run)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if on_progress:
        on_progress(f"lm-eval {model} {model_args_string(args)} tasks={','.join(tasks)}")
    try:
        raw = lm_eval.simple_evaluate(
            model=model, model_args=args, tasks=tasks, num_fewshot=run.num_fewshot, limit=run.limit,
            batch_size=run.batch_size, device=run.device, task_manager=index.manager, log_samples=True,
            apply_chat_template=run.apply_chat_template, random_seed=run.seed, numpy_random_seed=run.seed,
            torch_random_seed=run.seed, fewshot_random_seed=run.seed,
        )
    except OSError as exc:  # transformers: a missing repo / file
        raise NotFound(f"model {run.model.requested!r} could not be loaded: {exc}", param="model") from None
    if raw is None:
        raise BadRequest("lm-eval returned no results", param="tasks")
    samples = raw.pop("samples", {}) or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "samples").mkdir(exist_ok=True)
    for task, rows in samples.items():
        with (out_dir / "samples" / f"{task}.jsonl").open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, default=str) + "\n")
    empty = [t for t, rows in samples.items() if not rows]
    if empty:
        raise BadRequest(f"task(s) {', '.join(empty)} have no documents to evaluate (empty dataset)", param="tasks")
    # The same per-task hash lm-eval's CLI writes with --log_samples (its EvaluationTracker's formula).
    from lm_eval.utils import hash_string

    raw["task_hashes"] = {task: hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in rows))
                          for task, rows in samples.items()}
    raw_path = out_dir / "lm_eval_results.json"
    raw_path.write_text(json.dumps(raw, indent=2, default=str), encoding="utf-8")
    summary = summarize(raw)
    summary.update({"backend": run.backend, "model_ref": run.model.to_json(), "limit": run.limit,
                    "num_fewshot": run.num_fewshot, "tasks_requested": list(run.tasks), "tasks_resolved": tasks,
                    "lm_eval_model": model, "lm_eval_model_args": args, "device": run.device,
                    "batch_size": run.batch_size, "seed": run.seed})
    summary_path = out_dir / "lm_eval_summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return EvalOutcome(summary, summary_path, raw_path)
