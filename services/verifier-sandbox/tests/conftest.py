"""Fixtures for verifier-sandbox tests: a real sandbox (bubblewrap here) and engines on it."""

from __future__ import annotations

from collections.abc import Iterator

import halo_verifiers.verifiers  # noqa: F401  (registers the built-ins)
import pytest
from halo_verifiers.base import Runtime
from halo_verifiers.engine import VerifierEngine, _expose_toolchains
from halo_verifiers.registry import REGISTRY
from halo_verifiers.sandbox import Sandbox
from halo_verifiers.toolchains import Toolchains


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """The strongest mechanism here; the tests need a real one (CI installs bubblewrap)."""
    sb = Sandbox.detect()
    yield sb
    sb.close()


@pytest.fixture(scope="session")
def engine(sandbox: Sandbox) -> Iterator[VerifierEngine]:
    """An engine on the real sandbox, without a cache (each test checks real executions)."""
    runtime = Runtime(sandbox=sandbox, toolchains=Toolchains())
    _expose_toolchains(runtime)
    eng = VerifierEngine(runtime, REGISTRY.copy(), cache=None, workers=2)
    yield eng
    eng.close()
