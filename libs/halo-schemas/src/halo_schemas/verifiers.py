"""Verifier wire models: the reward contract between trainers (GRPO, RAFT), eval, data synthesis and
the ``verifier-sandbox`` service.

A caller names a verifier and its parameters with a :class:`VerifierSpec`, sends one completion
(:class:`VerifyRequest`) or many (:class:`VerifyBatchRequest`) with their task context
(:class:`VerifyContext`), and gets :class:`VerifyResult` back: a graduated ``reward`` in [0, 1],
``success``, the ``stage`` reached, details and typed errors. Requests are :class:`UserInput`
(strict: an unknown field is an error naming it, so ``expected_ouput`` never silently becomes
"no expected output"); results are tolerant :class:`Message` s.

The reward ladder every code verifier follows is documented in docs/verifiers.md.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field

from halo_schemas.base import Message, UserInput


class VerifierSpec(UserInput):
    """Which verifier to run and how it is configured. ``params`` are validated by the service
    against the verifier's own parameter model (see the inventory for each JSON schema); a bad
    value is a 400 naming ``params.<field>``."""

    schema_id = "halo.spec.verifier.v1"

    name: str = Field(
        pattern=r"^[a-z][a-z0-9_.-]*$", max_length=100,
        description="Registered verifier name, e.g. 'gcc', 'humaneval', 'bleu', 'llm_judge', 'multi'.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Verifier parameters; validated against the verifier's parameter schema."
    )


class IOCase(UserInput):
    """One stdin -> expected-stdout case of an execution verifier."""

    name: str | None = Field(default=None, max_length=200, description="Optional case name shown in details.")
    stdin: str = Field(default="", description="Bytes (UTF-8 text) fed to the program's standard input.")
    expected_output: str | None = Field(
        default=None, description="Expected standard output; None means 'must only run without crashing'."
    )
    args: list[str] = Field(default_factory=list, description="Command-line arguments passed to the program.")


class VerifyContext(UserInput):
    """Task context a verifier checks a completion against. Every field is optional; each verifier
    documents which ones it needs and answers with error_type 'missing_context' when one is absent."""

    prompt: str | None = Field(default=None, description="The prompt the completion answers (HumanEval: the function stub).")
    language: str | None = Field(
        default=None, max_length=32, description="Language hint for extraction and routing: c, cpp, rust, go, python…"
    )
    tests: str | list[str] | None = Field(
        default=None,
        description="Test code: a pytest module, a HumanEval check() program, Rust/Go test code, or a list of "
        "assert statements (MBPP).",
    )
    test_setup: str | None = Field(default=None, description="Code run before the tests (MBPP test_setup_code).")
    entry_point: str | None = Field(default=None, max_length=200, description="Function under test (HumanEval).")
    cases: list[IOCase] = Field(default_factory=list, description="stdin/expected-output cases for execution verifiers.")
    stdin: str | None = Field(default=None, description="Shorthand for a single case: its standard input.")
    expected_output: str | None = Field(default=None, description="Shorthand for a single case: its expected output.")
    reference: str | None = Field(default=None, description="One reference text (BLEU, chrF, ROUGE) or answer.")
    references: list[str] = Field(default_factory=list, description="Several reference texts; scored against all.")
    json_schema: dict[str, Any] | None = Field(default=None, description="JSON Schema the completion must satisfy.")
    rubric: str | None = Field(default=None, description="Grading rubric for llm_judge.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Free-form task data passed through to custom verifiers and plugins."
    )


class VerifyStage(StrEnum):
    """How far a completion got. Code verifiers climb none -> compile -> compiled -> ran -> correct."""

    NONE = "none"  # nothing usable was extracted (empty completion, no code)
    COMPILE = "compile"  # reached compilation and failed
    COMPILED = "compiled"  # compiled (with or without warnings); did not run cleanly
    RAN = "ran"  # ran without crashing; output not (all) correct
    TESTED = "tested"  # tests ran; some failed (test-based verifiers)
    CORRECT = "correct"  # everything checked passed
    SCORED = "scored"  # a similarity / format score was computed (bleu, rouge, regex, json…)
    JUDGED = "judged"  # an LLM judge produced a verdict
    UNAVAILABLE = "unavailable"  # the verifier's toolchain or sandbox is missing here
    ERROR = "error"  # the verifier could not check the completion (bad context, judge failure…)


class VerifyResult(Message):
    """The outcome of one verification."""

    schema_id = "halo.rpc.verify-result.v1"

    verifier: str = Field(description="Name of the verifier that produced this result.")
    reward: float = Field(ge=0.0, le=1.0, description="Graduated reward in [0, 1] (see docs/verifiers.md).")
    success: bool = Field(description="True when the completion reached the highest reward this context allows.")
    stage: VerifyStage = Field(description="Stage reached: none, compile, compiled, ran, tested, correct, scored…")
    details: dict[str, Any] = Field(
        default_factory=dict, description="Verifier-specific details: warnings, per-case/test outcomes, scores."
    )
    error: str | None = Field(default=None, description="Human-readable reason when the verifier could not check.")
    error_type: str | None = Field(
        default=None,
        description="Typed error: unavailable, missing_context, sandbox_unavailable, judge_empty_verdict, "
        "judge_unparseable_verdict, judge_request_failed, internal…",
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Execution metadata: sandbox mechanism, max_reward, toolchain versions."
    )
    cached: bool = Field(default=False, description="True when served from the result cache without re-running.")
    duration_s: float = Field(default=0.0, ge=0.0, description="Wall seconds spent verifying (0 for cache hits).")
    id: str | None = Field(default=None, description="The caller's item id, echoed back (batches).")


class VerifyRequest(UserInput):
    """Verify one completion (``halo.rpc.verifier-sandbox.verify``; ``POST /api/v1/verify``)."""

    schema_id = "halo.rpc.verify-request.v1"

    spec: VerifierSpec = Field(description="Verifier name and parameters.")
    completion: str = Field(max_length=2_000_000, description="The model's completion (code is extracted from it).")
    context: VerifyContext = Field(default_factory=VerifyContext, description="Task context: tests, references…")
    use_cache: bool = Field(default=True, description="Serve an identical earlier verification from the cache.")


class VerifyItem(UserInput):
    """One completion of a batch."""

    id: str | None = Field(default=None, max_length=200, description="Caller's id, echoed in the result.")
    completion: str = Field(max_length=2_000_000, description="The model's completion.")
    context: VerifyContext = Field(default_factory=VerifyContext, description="Task context of this completion.")


class VerifyBatchRequest(UserInput):
    """Verify many completions with one verifier (``…verify-batch``; ``POST /api/v1/verify/batch``).
    Results come back in item order; one item's failure never affects another."""

    schema_id = "halo.rpc.verify-batch-request.v1"

    spec: VerifierSpec = Field(description="Verifier name and parameters, shared by every item.")
    items: list[VerifyItem] = Field(max_length=10_000, description="Completions with their contexts.")
    use_cache: bool = Field(default=True, description="Serve identical earlier verifications from the cache.")


class VerifyBatchResult(Message):
    """Results of a batch, in the order of the request's items."""

    schema_id = "halo.rpc.verify-batch-result.v1"

    results: list[VerifyResult] = Field(description="One result per item, same order as the request.")
    duration_s: float = Field(ge=0.0, description="Wall seconds for the whole batch.")
    cache_hits: int = Field(default=0, ge=0, description="Items answered from the cache (or a duplicate in the batch).")
    errors: int = Field(default=0, ge=0, description="Items whose result carries an error.")


class InventoryRequest(Message):
    """Ask for the verifier inventory (``…inventory``; ``GET /api/v1/verifiers``)."""

    schema_id = "halo.rpc.inventory-request.v1"

    reload_plugins: bool = Field(default=False, description="Re-scan HALO_HOME/verifiers and entry points first.")


class VerifierParameter(Message):
    """One parameter of a verifier, for listings; the full JSON Schema is in ``params_schema``."""

    name: str = Field(description="Parameter name.")
    type: str = Field(description="JSON Schema type (or a short description of a union).")
    required: bool = Field(description="True when the spec must set it.")
    default: Any = Field(default=None, description="Default value when not required.")
    description: str = Field(default="", description="What the parameter does.")


class VerifierInfo(Message):
    """One registered verifier."""

    name: str = Field(description="Name used in VerifierSpec.name.")
    origin: str = Field(description="builtin | plugin:<file> | entry-point:<distribution> | api.")
    doc: str = Field(default="", description="One-line description.")
    kind: str = Field(default="code", description="code | tests | text | structured | judge | meta | custom.")
    aliases: list[str] = Field(default_factory=list, description="Other names that resolve to this verifier.")
    parameters: list[VerifierParameter] = Field(default_factory=list, description="Parameters, in declaration order.")
    params_schema: dict[str, Any] = Field(default_factory=dict, description="JSON Schema of the params object.")
    available: bool = Field(default=True, description="False when its toolchain or the sandbox is missing here.")
    unavailable_reason: str | None = Field(default=None, description="Why it is unavailable.")
    install_hint: str | None = Field(default=None, description="How to make it available (e.g. an apt-get line).")
    sandboxed: bool = Field(default=False, description="True when it runs untrusted code in the sandbox.")


class PluginProblem(Message):
    """A plugin that failed to load; reported in the inventory, never fatal."""

    source: str = Field(description="Plugin file or entry point that failed.")
    error: str = Field(description="The error, one line.")


class SandboxInfo(Message):
    """The isolation mechanism this instance uses."""

    mechanism: str | None = Field(description="bwrap | unshare | sandbox-exec | container | host; None when none.")
    isolation: list[str] = Field(default_factory=list, description="What is isolated: network, pid, filesystem…")
    problem: str | None = Field(default=None, description="Why no sandbox is available (fail-closed), with a hint.")


class VerifierInventory(Message):
    """Every verifier this instance can run, broken plugins, and the sandbox in use."""

    schema_id = "halo.rpc.verifier-inventory.v1"

    verifiers: list[VerifierInfo] = Field(description="Registered verifiers, sorted by name.")
    broken_plugins: list[PluginProblem] = Field(default_factory=list, description="Plugins that failed to load.")
    sandbox: SandboxInfo = Field(description="Sandbox mechanism and isolation of this instance.")
    workers: int = Field(default=1, ge=1, description="Verifications this instance runs in parallel.")
