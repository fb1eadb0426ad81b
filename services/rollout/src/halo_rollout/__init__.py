"""Halo Forge rollout service: batched sampling of N completions per prompt from a policy, with
versioned weight updates so a trainer can prove each rollout used the weights it just wrote.

``python -m halo_rollout`` runs the service. Its backends live in the ``halo_sampling`` library, usable in
process without NATS (the trainers colocate them for GRPO and RAFT).
"""

__version__ = "0.1.0"
