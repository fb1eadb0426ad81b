"""The run directory and crash-safe checkpoints: the code lives in :mod:`halo_training.rundir`, shared with
trainer-mlx so that both trainers write the same layout. Re-exported here."""

from halo_training.rundir import *  # noqa: F401,F403
