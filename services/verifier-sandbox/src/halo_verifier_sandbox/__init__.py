"""Halo Forge verifier-sandbox: graduated-reward verifiers run in a sandbox, over the bus.

Library use (no bus)::

    from halo_verifier_sandbox import VerifierEngine, VerifierSpec, VerifyContext
    engine = VerifierEngine.create()
    result = engine.verify(VerifierSpec(name="gcc"), completion, VerifyContext(expected_output="3\\n"))

Over the bus (trainers, eval): :class:`halo_clients.verifier_sandbox.VerifierClient`.
Writing a verifier: :class:`Verifier` + :func:`register_verifier` (see docs/verifiers.md).
"""

from halo_schemas.verifiers import (
    IOCase,
    VerifierSpec,
    VerifyContext,
    VerifyItem,
    VerifyResult,
    VerifyStage,
)

from halo_verifier_sandbox.core.base import Ladder, Runtime, Verifier, VerifierParams
from halo_verifier_sandbox.core.engine import VerifierEngine
from halo_verifier_sandbox.core.extract import detect_language, extract_code
from halo_verifier_sandbox.core.registry import REGISTRY, register_verifier
from halo_verifier_sandbox.core.sandbox import Sandbox, SandboxLimits, SandboxUnavailable

__version__ = "0.1.0"

__all__ = [
    "IOCase",
    "Ladder",
    "REGISTRY",
    "Runtime",
    "Sandbox",
    "SandboxLimits",
    "SandboxUnavailable",
    "Verifier",
    "VerifierEngine",
    "VerifierParams",
    "VerifierSpec",
    "VerifyContext",
    "VerifyItem",
    "VerifyResult",
    "VerifyStage",
    "detect_language",
    "extract_code",
    "register_verifier",
]
