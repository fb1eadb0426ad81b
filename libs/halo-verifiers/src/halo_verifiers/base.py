"""The verifier interface, the reward ladder, and the runtime verifiers run with.

Write a verifier (a plugin in ``HALO_HOME/verifiers/*.py``, an entry point in the
``halo_forge.verifiers`` group, or code that imports this library)::

    from pydantic import Field
    from halo_verifiers import Verifier, VerifierParams, register_verifier, VerifyStage

    class Params(VerifierParams):
        word: str = Field(description="Word the completion must contain.")

    @register_verifier("contains_word")
    class ContainsWord(Verifier):
        \"\"\"Reward 1 when the completion contains a word.\"\"\"
        Params = Params
        kind = "text"

        def verify(self, completion, context):
            hit = self.params.word in completion
            return self.result(1.0 if hit else 0.0, VerifyStage.SCORED)

Parameters are a pydantic model (``extra="forbid"``), so a spec is validated — an unknown or bad
parameter is an error naming ``params.<field>`` — and the inventory shows their JSON Schema.

The ladder (docs/verifiers.md) is the same for every code verifier: does not compile 0.0 ·
compiles with warnings 0.3 · compiles clean 0.5 · runs without crashing 0.7 · correct output 1.0;
test-based verifiers give 0.5 + 0.5 × pass rate.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from halo_common.paths import HaloPaths
from halo_schemas.verifiers import VerifyContext, VerifyResult, VerifyStage
from pydantic import BaseModel, ConfigDict

from halo_verifiers.sandbox import COMPILE_LIMITS, RUN_LIMITS, Sandbox, SandboxLimits
from halo_verifiers.toolchains import Toolchains


class Ladder:
    """The graduated reward ladder shared by every code verifier."""

    COMPILE_FAILED = 0.0
    COMPILED_WITH_WARNINGS = 0.3
    COMPILED_CLEAN = 0.5
    RAN = 0.7
    CORRECT = 1.0
    TESTS_BASE = 0.5  # test-based: 0.5 + 0.5 × pass rate


def compile_reward(warnings: bool) -> float:
    """0.3 with warnings, 0.5 clean."""
    return Ladder.COMPILED_WITH_WARNINGS if warnings else Ladder.COMPILED_CLEAN


def pass_rate_reward(passed: int, total: int, partial_credit: bool = True) -> float:
    """Test-based reward once the code compiles: 1.0 when every test passes; else
    ``0.5 + 0.5 × passed/total`` with partial credit, 0.5 without."""
    if total <= 0:
        return Ladder.TESTS_BASE
    if passed >= total:
        return Ladder.CORRECT
    if not partial_credit:
        return Ladder.TESTS_BASE
    return Ladder.TESTS_BASE + (1.0 - Ladder.TESTS_BASE) * passed / total


def run_reward(base: float, total: int, ran: int, correct: int, checked: bool, partial_credit: bool = True) -> float:
    """Execution reward after compiling with reward ``base`` (0.3/0.5).

    ``total`` runs, ``ran`` of them without crashing, ``correct`` of them with the right output;
    ``checked`` says whether any expected output exists (without one, 0.7 is the top). With
    partial credit: ``base + (0.7 - base) × ran/total + 0.3 × correct/total``; without:
    1.0 all correct, 0.7 all ran, else ``base``.
    """
    if total <= 0:
        return base
    if not checked:
        correct = 0
        if not partial_credit:
            return Ladder.RAN if ran == total else base
        return base + (Ladder.RAN - base) * ran / total
    if not partial_credit:
        if correct == total:
            return Ladder.CORRECT
        return Ladder.RAN if ran == total else base
    return base + (Ladder.RAN - base) * ran / total + (Ladder.CORRECT - Ladder.RAN) * correct / total


class VerifierParams(BaseModel):
    """Base of every verifier's parameter model: strict, so typos are errors naming the field."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class NoParams(VerifierParams):
    """A verifier without parameters."""


@dataclass
class Availability:
    """Whether a verifier can run here; ``hint`` says how to fix it when not."""

    ok: bool
    reason: str | None = None
    hint: str | None = None


@dataclass
class Runtime:
    """What verifiers run with: the sandbox (None when unavailable: fail closed), toolchains,
    default limits, local judge callables and the registry (for routing verifiers)."""

    sandbox: Sandbox | None
    toolchains: Toolchains = field(default_factory=Toolchains)
    sandbox_problem: str | None = None
    run_limits: SandboxLimits = RUN_LIMITS
    compile_limits: SandboxLimits = COMPILE_LIMITS
    judges: dict[str, Callable[..., Any]] = field(default_factory=dict)
    registry: Any = None  # VerifierRegistry; typed loosely to avoid an import cycle
    # HALO_HOME of the runs a learned verifier (reward_model) may load; None = $HALO_HOME.
    paths: HaloPaths | None = None
    # The host's HALO_ALLOW_REMOTE_CODE: whether a model trained here with trust_remote_code may run its code.
    allow_remote_code: bool = False

    def sandbox_availability(self) -> Availability:
        if self.sandbox is not None:
            return Availability(True)
        from halo_verifiers.sandbox import INSTALL_HINT

        return Availability(False, self.sandbox_problem or "no sandbox available", INSTALL_HINT)


def missing_modules(cls: type[Verifier]) -> list[str]:
    """The verifier's ``python_modules`` that cannot be imported here."""
    import importlib.util

    return [m for m in cls.python_modules if importlib.util.find_spec(m) is None]


class Verifier(abc.ABC):
    """Base class of every verifier. Subclasses set ``Params`` (a :class:`VerifierParams`),
    ``kind``, optionally ``toolchains_needed`` / ``sandboxed`` and implement :meth:`verify`.

    ``python_modules`` are Python packages the verifier imports lazily (e.g. torch for ``reward_model``); when
    one is missing the verifier is unavailable, with ``install_hint``.

    ``name`` is set by :func:`~halo_verifiers.registry.register_verifier`. Bump
    ``version`` when the same inputs should give a different result (it is part of the cache key).
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[VerifierParams]] = NoParams
    kind: ClassVar[str] = "code"
    version: ClassVar[str] = "1"
    sandboxed: ClassVar[bool] = False
    toolchains_needed: ClassVar[tuple[str, ...]] = ()
    python_modules: ClassVar[tuple[str, ...]] = ()
    install_hint: ClassVar[str | None] = None

    def __init__(self, params: VerifierParams, runtime: Runtime) -> None:
        self.params = params
        self.runtime = runtime

    # ---- to override ---------------------------------------------------------------------
    @abc.abstractmethod
    def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
        """Check ``completion`` against ``context``; return a result (never raise for bad code)."""

    def required_toolchains(self, context: VerifyContext | None = None) -> tuple[str, ...]:
        """Toolchains this configured instance needs (default: ``toolchains_needed``)."""
        return self.toolchains_needed

    def cacheable(self) -> bool:
        """Whether identical inputs may be answered from the cache (False for non-deterministic ones)."""
        return True

    # ---- availability ----------------------------------------------------------------------
    def availability(self, context: VerifyContext | None = None) -> Availability:
        """Sandbox, toolchains and Python modules present? Checked before :meth:`verify` and for the inventory."""
        missing = missing_modules(type(self))
        if missing:
            return Availability(False, f"{', '.join(missing)} not installed", self.install_hint)
        if self.sandboxed:
            sb = self.runtime.sandbox_availability()
            if not sb.ok:
                return sb
        for name in self.required_toolchains(context):
            tc = self.runtime.toolchains.get(name)
            if not tc.available:
                return Availability(False, f"{name} unavailable: {tc.problem}", tc.install_hint)
        return Availability(True)

    # ---- result helpers ----------------------------------------------------------------------
    def result(
        self,
        reward: float,
        stage: VerifyStage,
        *,
        success: bool | None = None,
        max_reward: float = 1.0,
        details: dict[str, Any] | None = None,
        error: str | None = None,
        error_type: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> VerifyResult:
        """Build a result; ``success`` defaults to "reached ``max_reward``" (the top this context allows)."""
        reward = min(1.0, max(0.0, round(float(reward), 6)))
        if success is None:
            success = error is None and reward >= max_reward - 1e-9
        meta = {"max_reward": max_reward, **(metadata or {})}
        if self.sandboxed and self.runtime.sandbox is not None:
            meta.setdefault("sandbox", self.runtime.sandbox.mechanism.value)
        return VerifyResult(verifier=self.name, reward=reward, success=success, stage=stage, details=details or {},
                            error=error, error_type=error_type, metadata=meta)

    def error_result(self, error_type: str, message: str, *, details: dict[str, Any] | None = None,
                     stage: VerifyStage = VerifyStage.ERROR) -> VerifyResult:
        """Reward 0 with a typed error (missing_context, judge_unparseable_verdict…)."""
        return self.result(0.0, stage, success=False, error=message, error_type=error_type, details=details)

    def missing_context(self, field_name: str, why: str = "") -> VerifyResult:
        msg = f"context.{field_name} is required by verifier '{self.name}'" + (f": {why}" if why else "")
        return self.error_result("missing_context", msg, details={"field": f"context.{field_name}"})

    def unavailable(self, av: Availability) -> VerifyResult:
        return self.result(0.0, VerifyStage.UNAVAILABLE, success=False, error=av.reason, error_type="unavailable",
                           details={"install_hint": av.hint} if av.hint else {})
