"""The verifier library: graduated-reward verifiers (compilers, test runners, schemas, text metrics, an LLM
judge) run in a sandbox. Pure in-process code — the verifier-sandbox service serves it over the bus, and a
trainer's ``verifier_transport: local`` runs it in the trainer's own process::

    from halo_verifiers import VerifierEngine, VerifierSpec, VerifyContext
    engine = VerifierEngine.create()
    result = engine.verify(VerifierSpec(name="gcc"), completion, VerifyContext(expected_output="3\\n"))

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

from halo_verifiers.base import Ladder, Runtime, Verifier, VerifierParams
from halo_verifiers.engine import VerifierEngine
from halo_verifiers.extract import detect_language, extract_code
from halo_verifiers.registry import REGISTRY, register_verifier
from halo_verifiers.sandbox import Sandbox, SandboxLimits, SandboxUnavailable

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
