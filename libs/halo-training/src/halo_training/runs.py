"""What every trainer does around a recipe: validate the spec, keep the attempts' bookkeeping, and write the one
``training_summary.json`` shape (:class:`~halo_schemas.training.TrainingSummary`) from the run directory.

::

    typed = validate_spec("sft", spec_dict)                  # BadRequest naming the field
    started_at, prior_s = attempt_info(run)                  # first start, seconds of earlier attempts
    summary = summarize(run, "sft", typed, service="trainer-mlx", backend="mlx", state=JobState.SUCCEEDED,
                        run_id=run_id, job_id=None, result=result, failure=None,
                        started_at=started_at, duration_s=prior_s + elapsed, attempt=1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from halo_common.errors import BadRequest
from halo_schemas.base import describe_validation_error
from halo_schemas.jobs import JobState
from halo_schemas.methods import TRAINING_JOB_SPECS
from halo_schemas.training import TrainingSummary, TrainSpecBase
from pydantic import ValidationError

from halo_training.data import TrainingData
from halo_training.flops import mfu
from halo_training.reporting import JobControl, Reporter
from halo_training.rundir import RunDir


class Preempted(Exception):
    """The job stopped for a service shutdown after writing a checkpoint; redeliver it to resume."""


@dataclass
class JobContext:
    """Everything a recipe needs, built by a trainer's ``run_job``. ``resolved`` is that trainer's own resolved
    settings (dtype, learning rate, model path... for its backend)."""

    method: str
    spec: TrainSpecBase
    resolved: Any
    data: TrainingData
    run: RunDir
    reporter: Reporter
    control: JobControl
    resume_from: Path | None = None
    run_id: str | None = None
    job_id: str | None = None

    @property
    def has_eval(self) -> bool:
        return bool(self.data.eval)


@dataclass
class RecipeResult:
    """What a recipe hands back to the runner for the summary."""

    state: str  # "succeeded" | "cancelled" | "preempted"
    steps: int = 0
    total_steps: int | None = None
    epochs: float | None = None
    weights_updated: bool = False
    stop_reason: str | None = None
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    resumed_from_step: int | None = None
    train_seconds: float = 0.0  # training-loop wall time of this attempt
    attempt_tokens: int = 0  # tokens trained in this attempt
    flops_per_token: float | None = None  # model FLOPs per trained token (halo_training.flops)
    peak_flops: float | None = None  # device peak FLOP/s in the training dtype (all devices of the run)
    peak_source: str | None = None  # "table:<device>" | "measured:<dtype> matmul"
    outputs: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


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


def package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Installed version of each distribution (``absent`` when not installed), for ``replay.json``."""
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def loss_stats(run: RunDir) -> dict[str, float | None]:
    """First / last / best training loss, best eval loss and the last token count from metrics.jsonl."""
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


def attempt_info(run: RunDir) -> tuple[datetime, float]:
    """(first start time, seconds spent in earlier attempts) from the run's bookkeeping file."""
    info = run.read_json("attempts.json") or {}
    started = info.get("started_at")
    return (datetime.fromisoformat(started) if started else datetime.now(UTC)), float(info.get("duration_s", 0.0))


def record_attempt(run: RunDir, started_at: datetime, duration_s: float, attempt: int) -> None:
    run.write_json("attempts.json", {"started_at": started_at.isoformat(), "duration_s": duration_s, "attempts": attempt})


def _flops(result: RecipeResult | None) -> dict[str, Any]:
    """The summary's model FLOPs fields: per token, achieved FLOP/s of the attempt, peak and MFU."""
    if result is None or not result.flops_per_token:
        return {}
    achieved = (result.flops_per_token * result.attempt_tokens / result.train_seconds
                if result.train_seconds > 0 and result.attempt_tokens > 0 else None)
    return {"model_flops_per_token": result.flops_per_token, "model_flops_per_second": achieved,
            "peak_flops_per_second": result.peak_flops, "peak_flops_source": result.peak_source,
            "mfu": mfu(achieved, result.peak_flops)}


def summarize(run: RunDir, method: str, spec: TrainSpecBase | None, *, service: str, backend: str | None,
              state: JobState, run_id: str, job_id: str | None, result: RecipeResult | None, failure: str | None,
              started_at: datetime, duration_s: float, attempt: int, write: bool = True) -> TrainingSummary:
    """The run's :class:`TrainingSummary` (written to ``training_summary.json`` when ``write``)."""
    stats = loss_stats(run)
    tokens = int(stats.pop("tokens") or 0)  # type: ignore[arg-type]
    summary = TrainingSummary(
        run_id=run_id, job_id=job_id, method=method, service=service, state=state,
        base_model=spec.model if spec else None, finetune=spec.finetune if spec else None, backend=backend,
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
        started_at=started_at, **_flops(result), **stats,  # type: ignore[arg-type]
    )
    if write:
        run.write_json("training_summary.json", summary.model_dump(mode="json"))
    return summary
