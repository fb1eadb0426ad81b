"""Halo Forge rollout service: batched sampling of N completions per prompt from a policy, with
versioned weight updates so a trainer can prove each rollout used the weights it just wrote.

``python -m halo_rollout`` runs the service. The backends are usable in process, without NATS::

    from halo_rollout.core.backends import make_backend
    from halo_rollout.core.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend.from_model(policy, tokenizer)     # a trainer's own model, no copy
    results = backend.generate([SampleRequest(prompt="2+2=", params=SampleParams(n=4, seed=0))])

Importing this package is cheap (no torch / mlx / vllm until a backend is built).
"""

__version__ = "0.1.0"
