"""Running one job delivery: the bridge between the bus and :func:`halo_trainer_torch.core.runner.run_job`.

The delivery, the events and the status are the shared trainer machinery of :mod:`halo_training.jobs`
(a recipe in a worker thread reporting through a :class:`~halo_training.jobs.BusReporter` into the
:class:`~halo_runtime.jobs.JobLifecycle`); this module only says how trainer-torch runs the recipe.
"""

from __future__ import annotations

from collections.abc import Callable

from halo_schemas.training import TrainingSummary, TrainSpecBase
from halo_training.jobs import BusReporter, TrainingJobExecution  # noqa: F401  (re-exported)
from halo_training.reporting import HASH_LIMIT_BYTES, artifact_identity  # noqa: F401  (re-exported)

from halo_trainer_torch.core.runner import run_job


def run_execution(execution: TrainingJobExecution, guard: Callable[[TrainSpecBase], None] | None) -> TrainingSummary:
    """Train the job of ``execution`` here (a worker thread); raises Preempted after a checkpoint."""
    env = execution.env
    return run_job(env.job_type, env.spec, execution.run_dir, reporter=execution.reporter, control=execution.control,
                   run_id=env.run_id, job_id=env.job_id, attempt=execution.attempt, guard=guard)
