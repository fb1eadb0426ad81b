"""Run one training job end to end, without NATS: validate, preflight, resume, train, summarise.

::

    summary = run_job("sft", {"model": "tiny://llama", "data": {"train": "chat.jsonl"}}, run_dir)

The order matters and is the same for every method:

1. the spec is validated (unknown keys and bad values name the field);
2. backend support is checked (QLoRA without bitsandbytes, float16 on CPU... are refused);
3. every data record is read and validated (file:line and field of each bad record);
4. only then is anything loaded or trained. A run directory with a complete checkpoint resumes from it
   (a crashed or preempted earlier attempt), ending with the same number of optimizer steps.

Failures before training and during training both end in a ``training_summary.json`` with
``state=failed`` and the reason; the summary is returned, never raised, except :class:`Preempted`
(the service must leave the job for redelivery).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
import warnings
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from halo_common.errors import BadRequest, HaloError
from halo_schemas.base import describe_validation_error
from halo_schemas.jobs import JobState
from halo_schemas.training import TRAINING_JOB_SPECS, TrainingSummary, TrainSpecBase
from pydantic import ValidationError

from halo_trainer_torch.core.components.data import TrainingData, load_training_data
from halo_trainer_torch.core.components.hooks import JobControl, Reporter
from halo_trainer_torch.core.components.model import ResolvedSettings, resolve_settings
from halo_trainer_torch.core.components.rundir import RunDir
from halo_trainer_torch.core.components.session import JobContext, RecipeResult, is_main_process

log = logging.getLogger("halo_trainer_torch")

SERVICE = "trainer-torch"
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "halo-trainer-torch", "halo-models")


class Preempted(Exception):
    """The job stopped for a service shutdown after writing a checkpoint; redeliver it to resume."""


def quiet_libraries() -> None:
    """No progress bars from datasets / transformers: progress is reported through events and metrics."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # Deprecation notices about the libraries' own internals (e.g. TRL reading a renamed attribute) are noise
    # in a service log; our own code is kept free of them.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|trl|peft|accelerate)\.")
    try:
        import datasets
        from transformers.utils import logging as hf_logging

        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def validate_spec(method: str, spec: dict[str, Any] | TrainSpecBase) -> TrainSpecBase:
    """The typed spec for ``method``; :class:`BadRequest` naming the field otherwise."""
    cls = TRAINING_JOB_SPECS.get(method)
    if cls is None:
        raise BadRequest(f"unknown training method {method!r}; known: {', '.join(TRAINING_JOB_SPECS)}", param="method")
    if isinstance(spec, cls):
        return spec
    try:
        return cls.model_validate(spec if isinstance(spec, dict) else spec.model_dump())
    except ValidationError as exc:
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        raise BadRequest(describe_validation_error(exc, what=f"{method} spec"),
                         param=".".join(str(p) for p in first) or None) from None


def preflight(method: str, spec: TrainSpecBase) -> tuple[ResolvedSettings, TrainingData]:
    """Backend and data checks that must pass before any model is loaded."""
    resolved = resolve_settings(spec)
    completion_only = bool(getattr(spec, "completion_only_loss", True))
    data = load_training_data(spec.data, method, completion_only=completion_only, seed=spec.seed)
    return resolved, data


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def write_replay(run: RunDir, method: str, spec: TrainSpecBase, resolved: ResolvedSettings, data: TrainingData,
                 argv: list[str] | None) -> None:
    from halo_common.backend import capabilities

    run.write_json("replay.json", {
        "method": method,
        "spec": spec.model_dump(mode="json"),
        "argv": argv or ["halo-forge", "train", method, "--config", str(run.spec_json)],
        "seeds": {"seed": spec.seed, "data_seed": spec.seed},
        "datasets": [f.to_dict() for f in data.files],
        "data_format": data.format,
        "records": {"train": len(data.train), "eval": len(data.eval)},
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "backend": resolved.backend,
        "capabilities": capabilities().model_dump(mode="json"),
        "resolved": resolved.to_dict(),
    })


def _loss_stats(run: RunDir) -> dict[str, float | None]:
    rows = run.read_metrics()
    losses = [r["loss"] for r in rows if "loss" in r]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    tokens = [r["tokens"] for r in rows if "tokens" in r]
    return {
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "loss_best": min(losses) if losses else None,
        "eval_loss_best": min(evals) if evals else None,
        "tokens": tokens[-1] if tokens else 0,
    }


def _attempt_info(run: RunDir, attempt: int) -> tuple[datetime, float]:
    """(first start time, seconds spent in earlier attempts) from the run's bookkeeping file."""
    info = run.read_json("attempts.json") or {}
    started = info.get("started_at")
    return (datetime.fromisoformat(started) if started else datetime.now(UTC)), float(info.get("duration_s", 0.0))


def _record_attempt(run: RunDir, started_at: datetime, duration_s: float, attempt: int) -> None:
    run.write_json("attempts.json", {"started_at": started_at.isoformat(), "duration_s": duration_s, "attempts": attempt})


def summarize(run: RunDir, method: str, spec: TrainSpecBase | None, *, state: JobState, run_id: str, job_id: str | None,
              resolved: ResolvedSettings | None, result: RecipeResult | None, failure: str | None,
              started_at: datetime, duration_s: float, attempt: int) -> TrainingSummary:
    stats = _loss_stats(run)
    tokens = int(stats.pop("tokens") or 0)  # type: ignore[arg-type]
    summary = TrainingSummary(
        run_id=run_id, job_id=job_id, method=method, service=SERVICE, state=state,
        base_model=spec.model if spec else None, finetune=spec.finetune if spec else None,
        backend=resolved.backend if resolved else None,
        steps=result.steps if result else 0, total_steps=result.total_steps if result else None,
        epochs=result.epochs if result else None,
        tokens=tokens,
        tokens_per_second=(result.attempt_tokens / result.train_seconds)
        if result and result.train_seconds > 0 and result.attempt_tokens > 0 else None,
        duration_s=duration_s, weights_updated=bool(result and result.weights_updated),
        failure_reason=failure, resumed_from_step=result.resumed_from_step if result else None, attempts=attempt,
        trainable_parameters=result.trainable_parameters if result else None,
        total_parameters=result.total_parameters if result else None,
        outputs=result.outputs if result else {}, extras=result.extras if result else {},
        started_at=started_at, **stats,  # type: ignore[arg-type]
    )
    if is_main_process():
        run.write_json("training_summary.json", summary.model_dump(mode="json"))
    return summary


def run_job(
    method: str,
    spec: dict[str, Any] | TrainSpecBase,
    run_dir: Path | str,
    *,
    reporter: Reporter | None = None,
    control: JobControl | None = None,
    run_id: str | None = None,
    job_id: str | None = None,
    attempt: int = 1,
    argv: list[str] | None = None,
) -> TrainingSummary:
    """Train ``method`` with ``spec`` into ``run_dir`` and return the summary (also written to disk).

    Raises :class:`Preempted` when stopped by :meth:`JobControl.preempt` (a checkpoint was written).
    """
    from halo_trainer_torch.core.recipes import RECIPES

    quiet_libraries()
    run = RunDir(Path(run_dir)).ensure()
    run_id = run_id or run.root.name
    reporter = reporter or Reporter()
    control = control or JobControl()
    t0 = time.monotonic()
    started_at, prior = _attempt_info(run, attempt)
    typed: TrainSpecBase | None = None
    resolved: ResolvedSettings | None = None

    def finish(state: JobState, result: RecipeResult | None, failure: str | None) -> TrainingSummary:
        duration = prior + (time.monotonic() - t0)
        if is_main_process():
            _record_attempt(run, started_at, duration, attempt)
        return summarize(run, method, typed, state=state, run_id=run_id, job_id=job_id, resolved=resolved,
                         result=result, failure=failure, started_at=started_at, duration_s=duration, attempt=attempt)

    try:
        typed = validate_spec(method, spec)
        if is_main_process():
            run.write_json("spec.json", typed.model_dump(mode="json"))
        resolved, data = preflight(method, typed)
    except HaloError as exc:
        if is_main_process() and not run.spec_json.exists():
            run.write_json("spec.json", spec if isinstance(spec, dict) else spec.model_dump(mode="json"))
        return finish(JobState.FAILED, None, str(exc))

    # Resume from the newest complete checkpoint; anything an interrupted attempt left half-written goes.
    if is_main_process():
        run.clean_partial()
    resume_from = run.latest_checkpoint()
    if is_main_process():
        if resume_from is not None:
            run.rewind_metrics(int(resume_from.name.split("-")[1]))
        else:
            run.metrics_jsonl.unlink(missing_ok=True)
        write_replay(run, method, typed, resolved, data, argv)

    if typed.num_processes > 1 and "RANK" not in os.environ:
        from halo_trainer_torch.core.components.distributed import launch_distributed

        try:
            return launch_distributed(method, typed, run, reporter=reporter, control=control, run_id=run_id,
                                      job_id=job_id, attempt=attempt)
        except Preempted:
            raise
        except HaloError as exc:
            return finish(JobState.FAILED, None, str(exc))

    ctx = JobContext(method=method, spec=typed, resolved=resolved, data=data, run=run, reporter=reporter,
                     control=control, resume_from=resume_from, run_id=run_id, job_id=job_id)
    recipe = RECIPES[method]
    try:
        from transformers import set_seed

        set_seed(typed.seed)  # adapter initialisation happens before the Trainer seeds anything
        result = recipe.train(ctx)
    except HaloError as exc:
        return finish(JobState.FAILED, None, str(exc))
    except Exception as exc:  # a crash in training is a failed job, never a dead service
        log.exception("training %s failed", run_id)
        return finish(JobState.FAILED, None, f"{type(exc).__name__}: {exc}")
    if result.state == "preempted":
        if is_main_process():
            _record_attempt(run, started_at, prior + (time.monotonic() - t0), attempt)
        raise Preempted(f"run {run_id} preempted at step {result.steps}")
    if result.state == "cancelled":
        return finish(JobState.CANCELLED, result, "cancelled by request")
    return finish(JobState.SUCCEEDED, result, None)
