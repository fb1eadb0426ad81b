"""Training plumbing shared by Halo Forge's trainers (trainer-torch, trainer-mlx), free of torch and MLX.

* :mod:`halo_training.rundir` — the run directory (spec, replay, metrics, checkpoints), crash-safe writes.
* :mod:`halo_training.data` — reading, format detection and validation of training records (file:line errors).
* :mod:`halo_training.tokenize` — records to token ids and loss masks (chat templates, completion-only).
* :mod:`halo_training.reporting` — :class:`Reporter`, :class:`JobControl`, artifact hashes.
* :mod:`halo_training.runs` — spec validation, attempts bookkeeping and the :class:`TrainingSummary`.
* :mod:`halo_training.jobs` — a job delivery on a trainer service: the recipe in a worker thread, its events on
  the bus through :class:`halo_runtime.jobs.JobLifecycle`; :class:`TrainerService` is the service base.
* :mod:`halo_training.rl_prompts` — RL records (GRPO, RAFT) to prompts with their verifier contexts.
* :mod:`halo_training.rewards` — the weighted verifier reward of RL jobs (verifier-sandbox over the bus, or the
  verifier library in-process).
* :mod:`halo_training.probe` — the mid-training probe's bookkeeping (:class:`~halo_training.probe.Prober`: baseline,
  verdicts, last passing model) and probe jobs on the eval service over the bus.
* :mod:`halo_training.runlog` — the job's own log, ``runs/<id>/logs/train.log`` (:func:`~halo_training.runlog.run_log`,
  and :func:`~halo_training.runlog.logged_job` around a trainer's ``run_job``).
"""

__version__ = "0.1.0"
