"""Halo Forge trainer-torch: SFT, DPO, ORPO and reward-model recipes run as durable bus jobs.

``python -m halo_trainer_torch`` runs the service. The recipes are usable without NATS::

    from halo_trainer_torch.core.runner import run_job
    summary = run_job("sft", spec_dict, run_dir)
"""

__version__ = "0.1.0"
