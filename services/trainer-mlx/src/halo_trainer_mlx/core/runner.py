"""Run one trainer-mlx job end to end, without NATS: validate, refuse what MLX cannot honour, read the data,
resume, train, export, summarise — the same order, run directory and summary as trainer-torch::

    summary = run_job("sft", {"model": "tiny://llama", "data": {"train": "chat.jsonl"}, "backend": "mlx"}, run_dir)

1. the spec is validated (unknown keys and bad values name the field);
2. fields MLX cannot honour (rsLoRA, PiSSA, QLoRA, multi-process, flash-attention...) are refused, naming the
   capability and the backend (:mod:`halo_trainer_mlx.core.capabilities`);
3. every data record is read and validated (file:line and field of each bad record);
4. only then is the model loaded. A run directory with a complete checkpoint resumes from it.

Failures end in ``training_summary.json`` with ``state=failed`` and the reason (returned, never raised), except
:class:`~halo_training.runs.Preempted`, which the service turns into a redelivery.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from halo_common.errors import HaloError
from halo_schemas.jobs import JobState
from halo_schemas.training import TrainingSummary, TrainSpecBase
from halo_training.data import TrainingData, load_training_data
from halo_training.reporting import JobControl, Reporter
from halo_training.rundir import RunDir
from halo_training.runlog import logged_job
from halo_training.runs import (
    Preempted,
    RecipeResult,
    attempt_info,
    package_versions,
    record_attempt,
    summarize,
    validate_spec,
)

from halo_trainer_mlx.core.capabilities import check_spec
from halo_trainer_mlx.core.context import JobContext
from halo_trainer_mlx.core.model import ResolvedSettings, resolve_settings

log = logging.getLogger("halo_trainer_mlx")

SERVICE = "trainer-mlx"
PACKAGES = ("mlx", "mlx-metal", "mlx-cpu", "mlx-lm", "transformers", "halo-trainer-mlx", "halo-training")


def preflight(method: str, spec: TrainSpecBase) -> tuple[ResolvedSettings, TrainingData]:
    """Capability, backend and data checks that must pass before any model is loaded."""
    check_spec(method, spec)
    resolved = resolve_settings(spec)
    data = load_training_data(spec.data, method, completion_only=bool(getattr(spec, "completion_only_loss", True)),
                              seed=spec.seed)
    return resolved, data


def write_replay(run: RunDir, method: str, spec: TrainSpecBase, resolved: ResolvedSettings, data: TrainingData,
                 argv: list[str] | None) -> None:
    run.write_json("replay.json", {
        "method": method, "service": SERVICE, "spec": spec.model_dump(mode="json"),
        "argv": argv or ["halo-forge", "train", method, "--config", str(run.spec_json)],
        "seeds": {"seed": spec.seed, "data_seed": spec.seed},
        "datasets": [f.to_dict() for f in data.files], "data_format": data.format,
        "data_source_format": data.source_format or data.format,
        "records": {"train": len(data.train), "eval": len(data.eval)},
        "packages": package_versions(PACKAGES), "python": sys.version.split()[0], "platform": platform.platform(),
        "backend": resolved.backend, "resolved": resolved.to_dict(),
    })


@logged_job  # the job's own log: runs/<id>/logs/train.log
def run_job(method: str, spec: dict[str, Any] | TrainSpecBase, run_dir: Path | str, *,
            reporter: Reporter | None = None, control: JobControl | None = None, run_id: str | None = None,
            job_id: str | None = None, attempt: int = 1, argv: list[str] | None = None,
            guard: Callable[[TrainSpecBase], None] | None = None) -> TrainingSummary:
    """Train ``method`` with ``spec`` into ``run_dir`` on MLX and return the summary (also written to disk).

    ``guard``: the host's policy (remote code, bundle paths), called on the validated spec before anything is read.
    Raises :class:`Preempted` when stopped by :meth:`JobControl.preempt` (a checkpoint was written).
    """
    from halo_trainer_mlx.core.recipes import recipe

    run = RunDir(Path(run_dir)).ensure()
    run_id, reporter, control = run_id or run.root.name, reporter or Reporter(), control or JobControl()
    started_at, prior = attempt_info(run)  # a resumed run keeps its first start and adds earlier attempts' time
    t0 = time.monotonic()
    typed: TrainSpecBase | None = None
    resolved: ResolvedSettings | None = None

    def finish(state: JobState, result: RecipeResult | None, failure: str | None) -> TrainingSummary:
        duration = prior + (time.monotonic() - t0)
        record_attempt(run, started_at, duration, attempt)
        return summarize(run, method, typed, service=SERVICE, backend="mlx", state=state, run_id=run_id,
                         job_id=job_id, result=result, failure=failure, started_at=started_at, duration_s=duration,
                         attempt=attempt)

    try:
        typed = validate_spec(method, spec)
        run.write_json("spec.json", typed.model_dump(mode="json"))
        if guard is not None:
            guard(typed)
        resolved, data = preflight(method, typed)
    except HaloError as exc:
        if not run.spec_json.exists():
            run.write_json("spec.json", spec if isinstance(spec, dict) else spec.model_dump(mode="json"))
        return finish(JobState.FAILED, None, str(exc))

    run.clean_partial()  # leftovers of an interrupted attempt; complete checkpoints stay
    resume_from = run.latest_checkpoint()
    if resume_from is not None:
        run.rewind_metrics(int(resume_from.name.split("-")[1]))
    else:
        run.metrics_jsonl.unlink(missing_ok=True)
    write_replay(run, method, typed, resolved, data, argv)
    ctx = JobContext(method=method, spec=typed, resolved=resolved, data=data, run=run, reporter=reporter,
                     control=control, resume_from=resume_from, run_id=run_id, job_id=job_id)
    try:
        result = recipe(method).train(ctx)
    except HaloError as exc:
        return finish(JobState.FAILED, None, str(exc))
    except Exception as exc:  # a crash in training is a failed job, never a dead service
        log.exception("training %s failed", run_id)
        return finish(JobState.FAILED, None, f"{type(exc).__name__}: {exc}")
    if result.state == "preempted":
        record_attempt(run, started_at, prior + (time.monotonic() - t0), attempt)
        raise Preempted(f"run {run_id} preempted at step {result.steps}")
    if result.state == "cancelled":
        return finish(JobState.CANCELLED, result, "cancelled by request")
    return finish(JobState.SUCCEEDED, result, None)
