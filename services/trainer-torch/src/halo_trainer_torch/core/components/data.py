"""Loading and validating training records: the code lives in :mod:`halo_training.data`, shared with
trainer-mlx so that both trainers accept, reject and split the same data the same way. Re-exported here."""

from halo_training.data import *  # noqa: F401,F403
