"""Records to token ids and loss masks: the code lives in :mod:`halo_training.tokenize`, shared with
trainer-mlx so that both trainers (and their previews) train exactly the same tokens. Re-exported here."""

from halo_training.tokenize import *  # noqa: F401,F403
