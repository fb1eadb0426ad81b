"""What a trainer-mlx recipe gets from the runner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from halo_schemas.training import TrainSpecBase
from halo_training.data import TrainingData
from halo_training.reporting import JobControl, Reporter
from halo_training.rundir import RunDir

from halo_trainer_mlx.core.model import ResolvedSettings


@dataclass
class JobContext:
    """Everything a recipe needs. Built by :func:`halo_trainer_mlx.core.runner.run_job`."""

    method: str
    spec: TrainSpecBase
    resolved: ResolvedSettings
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
