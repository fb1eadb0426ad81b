"""Training plumbing shared by Halo Forge's trainers (trainer-torch, trainer-mlx), free of torch and MLX.

* :mod:`halo_training.rundir` — the run directory (spec, replay, metrics, checkpoints), crash-safe writes.
* :mod:`halo_training.data` — reading, format detection and validation of training records (file:line errors).
* :mod:`halo_training.tokenize` — records to token ids and loss masks (chat templates, completion-only).
* :mod:`halo_training.reporting` — :class:`Reporter`, :class:`JobControl`, artifact hashes.
* :mod:`halo_training.runs` — spec validation, attempts bookkeeping and the :class:`TrainingSummary`.
* :mod:`halo_training.jobs` — a job delivery on a trainer service: the recipe in a worker thread, its events on
  the bus through :class:`halo_runtime.jobs.JobLifecycle`; :class:`TrainerService` is the service base.
"""

__version__ = "0.1.0"
