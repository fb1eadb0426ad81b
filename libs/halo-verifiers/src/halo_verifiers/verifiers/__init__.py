"""The built-in verifiers. Importing this package registers them (origin ``builtin``)."""

from halo_verifiers.verifiers import (  # noqa: F401
    cargo,
    compiled,
    custom,
    llm_judge,
    multi,
    python_tests,
    reward_model,
    structured,
    text_metrics,
)
