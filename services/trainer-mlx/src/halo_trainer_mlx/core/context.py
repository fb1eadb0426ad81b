"""What a trainer-mlx recipe gets from the runner: the shared :class:`halo_training.runs.JobContext` (its
``resolved`` is :class:`halo_trainer_mlx.core.model.ResolvedSettings`)."""

from halo_training.runs import JobContext  # noqa: F401
