"""Sampling backends shared by the rollout service and the trainers that colocate generation (GRPO, RAFT),
and the reward workbench the CLI uses. No bus, no service: plain in-process code::

    from halo_sampling.backends import make_backend
    from halo_sampling.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend.from_model(policy, tokenizer)     # a trainer's own model, no copy
    results = backend.generate([SampleRequest(prompt="2+2=", params=SampleParams(n=4, seed=0))])

Importing this package is cheap (no torch / mlx / vllm until a backend is built).
"""
