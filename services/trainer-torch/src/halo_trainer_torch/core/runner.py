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
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from halo_common.errors import HaloError
from halo_schemas.jobs import JobState
from halo_schemas.training import TrainingSummary, TrainSpecBase
from halo_training.runlog import logged_job
from halo_training.runs import (  # noqa: F401  (Preempted and validate_spec are imported from here too)
    Preempted,
    attempt_info,
    record_attempt,
    validate_spec,
)
from halo_training.runs import package_versions as _package_versions
from halo_training.runs import summarize as _summarize

from halo_trainer_torch.core.components.data import TrainingData, load_training_data
from halo_trainer_torch.core.components.hooks import JobControl, Reporter
from halo_trainer_torch.core.components.model import ResolvedSettings, resolve_settings
from halo_trainer_torch.core.components.rundir import RunDir
from halo_trainer_torch.core.components.session import JobContext, RecipeResult, is_main_process

log = logging.getLogger("halo_trainer_torch")

SERVICE = "trainer-torch"
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "halo-trainer-torch", "halo-models")


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


def preflight(method: str, spec: TrainSpecBase) -> tuple[ResolvedSettings, TrainingData]:
    """Backend and data checks that must pass before any model is loaded."""
    resolved = resolve_settings(spec)
    completion_only = bool(getattr(spec, "completion_only_loss", True))
    data = load_training_data(spec.data, method, completion_only=completion_only, seed=spec.seed)
    return resolved, data


def package_versions() -> dict[str, str]:
    return _package_versions(PACKAGES)


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
        "data_source_format": data.source_format or data.format,
        "records": {"train": len(data.train), "eval": len(data.eval)},
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "backend": resolved.backend,
        "capabilities": capabilities().model_dump(mode="json"),
        "resolved": resolved.to_dict(),
    })


def summarize(run: RunDir, method: str, spec: TrainSpecBase | None, *, state: JobState, run_id: str, job_id: str | None,
              resolved: ResolvedSettings | None, result: RecipeResult | None, failure: str | None,
              started_at: datetime, duration_s: float, attempt: int) -> TrainingSummary:
    return _summarize(run, method, spec, service=SERVICE, backend=resolved.backend if resolved else None, state=state,
                      run_id=run_id, job_id=job_id, result=result, failure=failure, started_at=started_at,
                      duration_s=duration_s, attempt=attempt, write=is_main_process())


@logged_job  # the job's own log: runs/<id>/logs/train.log
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
    guard: Callable[[TrainSpecBase], None] | None = None,
) -> TrainingSummary:
    """Train ``method`` with ``spec`` into ``run_dir`` and return the summary (also written to disk).

    ``guard`` is the host's policy (:func:`halo_trainer_torch.core.policy.spec_guard`), called on the validated
    spec before anything is read or loaded; the HaloError it raises fails the job with its message.

    Raises :class:`Preempted` when stopped by :meth:`JobControl.preempt` (a checkpoint was written).
    """
    from halo_trainer_torch.core.recipes import RECIPES

    quiet_libraries()
    run = RunDir(Path(run_dir)).ensure()
    run_id = run_id or run.root.name
    reporter = reporter or Reporter()
    control = control or JobControl()
    t0 = time.monotonic()
    started_at, prior = attempt_info(run)
    typed: TrainSpecBase | None = None
    resolved: ResolvedSettings | None = None

    def finish(state: JobState, result: RecipeResult | None, failure: str | None) -> TrainingSummary:
        duration = prior + (time.monotonic() - t0)
        if is_main_process():
            record_attempt(run, started_at, duration, attempt)
        return summarize(run, method, typed, state=state, run_id=run_id, job_id=job_id, resolved=resolved,
                         result=result, failure=failure, started_at=started_at, duration_s=duration, attempt=attempt)

    try:
        typed = validate_spec(method, spec)
        if is_main_process():
            run.write_json("spec.json", typed.model_dump(mode="json"))
        if guard is not None:
            guard(typed)
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
            record_attempt(run, started_at, prior + (time.monotonic() - t0), attempt)
        raise Preempted(f"run {run_id} preempted at step {result.steps}")
    if result.state == "cancelled":
        return finish(JobState.CANCELLED, result, "cancelled by request")
    return finish(JobState.SUCCEEDED, result, None)
