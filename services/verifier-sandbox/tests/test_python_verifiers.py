"""pytest, humaneval (a few problems; all 164 are in test_humaneval.py), mbpp, custom, subprocess."""

from __future__ import annotations

from typing import Any

import pytest
from halo_common.errors import BadRequest
from halo_schemas.verifiers import VerifierSpec, VerifyContext, VerifyResult, VerifyStage
from halo_verifiers.engine import VerifierEngine


def run(engine: VerifierEngine, name: str, completion: str, context: VerifyContext | None = None,
        **params: Any) -> VerifyResult:
    return engine.verify(VerifierSpec(name=name, params=params), completion, context or VerifyContext())


PYTEST_TESTS = """
from solution import fizz

def test_three():
    assert fizz(3) == "Fizz"

def test_five():
    assert fizz(5) == "Buzz"

def test_fifteen():
    assert fizz(15) == "FizzBuzz"

def test_other():
    assert fizz(7) == "7"
"""
FIZZ = ("def fizz(n):\n    if n % 15 == 0:\n        return 'FizzBuzz'\n    if n % 3 == 0:\n        return 'Fizz'\n"
        "    if n % 5 == 0:\n        return 'Buzz'\n    return str(n)\n")


def test_pytest_verifier(engine: VerifierEngine) -> None:
    ctx = VerifyContext(tests=PYTEST_TESTS)
    ok = run(engine, "pytest", f"Here:\n```python\n{FIZZ}```", ctx)
    assert (ok.reward, ok.stage, ok.details["passed"], ok.details["total"]) == (1.0, VerifyStage.CORRECT, 4, 4)
    partial = run(engine, "pytest", FIZZ.replace("'FizzBuzz'", "'Fizz'"), ctx)  # fifteen fails
    assert partial.reward == pytest.approx(0.5 + 0.5 * 3 / 4) and partial.details["passed"] == 3
    failed = [t["name"] for t in partial.details["tests"] if t["outcome"] != "passed"]
    assert failed == ["test_solution::test_fifteen"]
    assert run(engine, "pytest", FIZZ.replace("'FizzBuzz'", "'Fizz'"), ctx, partial_credit=False).reward == 0.5
    crash = run(engine, "pytest", "raise RuntimeError('import-time crash')\n", ctx)
    assert crash.reward == 0.5 and crash.details["passed"] == 0
    syntax = run(engine, "pytest", "def fizz(n) return n\n", ctx)
    assert syntax.reward == 0.0 and syntax.stage == VerifyStage.COMPILE
    missing = run(engine, "pytest", FIZZ)
    assert missing.error_type == "missing_context" and missing.details["field"] == "context.tests"


HE_PROMPT = 'def add_pos(a: int, b: int) -> int:\n    """Sum of a and b, but never below zero."""\n'
HE_TEST = """
METADATA = {}

def check(candidate):
    assert candidate(1, 2) == 3
    assert candidate(0, 0) == 0
    assert candidate(-5, 1) == 0
    for a in range(3):
        assert candidate(a, a) == 2 * a
    assert True
"""


def test_humaneval_continuation_full_and_partial(engine: VerifierEngine) -> None:
    ctx = VerifyContext(prompt=HE_PROMPT, tests=HE_TEST, entry_point="add_pos")
    body = "    return max(0, a + b)\n"
    ok = run(engine, "humaneval", body, ctx)
    assert (ok.reward, ok.details["total"], ok.details["mode"]) == (1.0, 5, "continuation")
    full = run(engine, "humaneval", "```python\ndef add_pos(a, b):\n    return max(0, a + b)\n```", ctx)
    assert full.reward == 1.0 and full.details["mode"] == "full"
    wrong = run(engine, "humaneval", "    return a + b\n", ctx)  # fails only the negative case
    assert wrong.details["passed"] == 4 and wrong.reward == pytest.approx(0.5 + 0.5 * 4 / 5)
    assert [t["i"] for t in wrong.details["tests"] if not t["ok"]] == [2]
    hangs = run(engine, "humaneval", "    while a < 0:\n        pass\n    return a + b\n", ctx, test_timeout_s=0.5)
    assert hangs.details["passed"] == 4 and hangs.details["tests"][2]["error"] == "timeout"
    exits = run(engine, "humaneval", "    import sys\n    sys.exit(0)\n", ctx)
    assert exits.reward == pytest.approx(0.5 + 0.5 * 1 / 5)  # only `assert True` passes
    forged = run(engine, "humaneval", '    print(\'{"event": "test", "i": 0, "ok": true}\')\n    return -1\n', ctx)
    assert forged.details["passed"] == 1
    syntax = run(engine, "humaneval", "    return (a +\n", ctx)
    assert syntax.reward == 0.0 and syntax.stage == VerifyStage.COMPILE
    missing = run(engine, "humaneval", body, VerifyContext(prompt=HE_PROMPT, tests=HE_TEST))
    assert missing.error_type == "missing_context" and "entry_point" in (missing.error or "")


def test_mbpp(engine: VerifierEngine) -> None:
    tests = ["assert is_even(2) == True", "assert is_even(3) == False", "assert is_even(0) == True",
             "assert is_even(LIMIT) == True"]
    ctx = VerifyContext(tests=tests, test_setup="LIMIT = 10")
    ok = run(engine, "mbpp", "```python\ndef is_even(n):\n    return n % 2 == 0\n```", ctx)
    assert ok.reward == 1.0 and ok.details["total"] == 4
    partial = run(engine, "mbpp", "def is_even(n):\n    return n > 0 and n % 2 == 0\n", ctx)
    assert partial.reward == pytest.approx(0.875) and partial.details["passed"] == 3
    failing = run(engine, "mbpp", "def is_even(n):\n    raise ValueError(n)\n", ctx)
    assert failing.reward == 0.5 and failing.stage == VerifyStage.TESTED
    bad_ctx = run(engine, "mbpp", "def is_even(n): return True", VerifyContext(tests=["assert is_even(("]))
    assert bad_ctx.error_type == "bad_context"


def test_custom_verifier_runs_check_in_sandbox(engine: VerifierEngine) -> None:
    source = """
import os
def verify(completion, context):
    words = completion.split()
    wanted = context["metadata"]["words"]
    hits = sum(w in words for w in wanted)
    return {"reward": hits / len(wanted), "details": {"hits": hits, "uid": os.getuid()}}
"""
    ctx = VerifyContext(metadata={"words": ["alpha", "beta", "gamma", "delta"]})
    r = run(engine, "custom", "alpha and gamma", ctx, source=source)
    assert r.reward == 0.5 and r.details["hits"] == 2 and r.stage == VerifyStage.SCORED and not r.success
    full = run(engine, "custom", "delta gamma beta alpha", ctx, source=source)
    assert full.reward == 1.0 and full.success
    assert run(engine, "custom", "none of them", ctx, source=source).reward == 0.0
    assert r.details["uid"] != 0  # it ran as the sandbox's private uid
    boom = run(engine, "custom", "x", ctx, source="def verify(c, ctx):\n    raise KeyError('nope')\n")
    assert boom.error_type == "custom_error" and "KeyError" in (boom.error or "")
    with pytest.raises(BadRequest) as err:
        engine.prepare(VerifierSpec(name="custom", params={"source": "def check(c, x): return 1"}))
    assert "defines no function 'verify'" in err.value.message and err.value.param == "params"


def test_subprocess_verifier(engine: VerifierEngine) -> None:
    checker = "import sys\ntext = open(sys.argv[1]).read()\nsys.exit(0 if text.strip().endswith('.') else 1)\n"
    spec = {"command": ["python3", "-I", "check.py", "{completion_file}"], "files": {"check.py": checker}}
    assert run(engine, "subprocess", "A sentence.", **spec).reward == 1.0
    assert run(engine, "subprocess", "No period", **spec).reward == 0.0
    scored = {"command": ["python3", "-I", "-c", "import sys; t = sys.stdin.read(); print(min(1.0, len(t) / 10))"],
              "reward_from": "stdout"}
    assert run(engine, "subprocess", "12345", **scored).reward == 0.5
    out_of_range = {"command": ["python3", "-I", "-c", "print(7)"], "reward_from": "stdout"}
    assert run(engine, "subprocess", "x", **out_of_range).error_type == "bad_output"
    missing_cmd = run(engine, "subprocess", "x", command=["definitely-not-a-command-xyz"])
    assert missing_cmd.error_type == "command_failed"
    with pytest.raises(BadRequest) as err:
        engine.prepare(VerifierSpec(name="subprocess", params={"command": ["true"], "files": {"../escape": "x"}}))
    assert err.value.param == "params.files"
