"""Halo Forge trainer-mlx: the training methods of trainer-torch computed by MLX (mlx + mlx-lm).

``python -m halo_trainer_mlx`` runs the service. The recipes are usable without NATS::

    from halo_trainer_mlx.core.runner import run_job
    summary = run_job("sft", spec_dict, run_dir)      # same run dir, events and summary as trainer-torch
"""

__version__ = "0.1.0"
