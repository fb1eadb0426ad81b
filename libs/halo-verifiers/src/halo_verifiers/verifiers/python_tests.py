"""Python test verifiers: pytest, humaneval, mbpp. Reward 0.0 when the code does not compile,
else 0.5 + 0.5 × pass rate (partial credit on by default)."""

from __future__ import annotations

import json
import re
import secrets
import xml.etree.ElementTree as ET
from typing import Any, Literal

from halo_schemas.verifiers import VerifyContext, VerifyResult, VerifyStage
from pydantic import Field

from halo_verifiers.base import Ladder, Verifier, pass_rate_reward
from halo_verifiers.extract import extract_code
from halo_verifiers.registry import register_verifier
from halo_verifiers.sandbox import LIMITS_LAUNCHER, ExecResult, Workspace
from halo_verifiers.verifiers._code import DETAIL_CHARS, RunParams, env_for, python_syntax

HARNESS = LIMITS_LAUNCHER.parent / "pyharness.py"


class PyTestsParams(RunParams):
    timeout_s: float = Field(default=20.0, gt=0, le=600, description="Wall-clock limit of the whole test run.")
    test_timeout_s: float = Field(default=3.0, gt=0, le=300, description="Time limit of each test.")


def run_harness(v: Verifier, ws: Workspace, program: str, mode: str, tests: Any, params: PyTestsParams,
                entry_point: str | None = None, setup: str | None = None) -> tuple[int, int, dict[str, Any]]:
    """Run ``program`` against ``tests`` in the harness; (passed, total, details)."""
    nonce = "@@halo-" + secrets.token_hex(16) + "@@"
    ws.write("solution.py", program)
    ws.write("harness.py", HARNESS.read_text())
    ws.write("harness.json", json.dumps({
        "nonce": nonce, "program": "solution.py", "mode": mode, "tests": tests, "entry_point": entry_point,
        "setup": setup, "test_timeout_s": params.test_timeout_s, "load_timeout_s": max(params.test_timeout_s, 5.0),
    }))
    tc = v.runtime.toolchains.get("python")
    assert v.runtime.sandbox is not None
    res = ws.run_python(tc.exe or "python3", "harness.py", ["harness.json"],
                        limits=params.run_limits(v.runtime.run_limits), env=env_for(tc, ws, v.runtime.sandbox.path_env),
                        expose=tc.expose)
    return parse_harness(res, nonce)


def parse_harness(res: ExecResult, nonce: str) -> tuple[int, int, dict[str, Any]]:
    total: int | None = None
    tests: dict[int, dict[str, Any]] = {}
    details: dict[str, Any] = {}
    done = False
    for line in res.out().splitlines():
        at = line.find(nonce)
        if at < 0:
            continue
        try:
            ev = json.loads(line[at + len(nonce):])
        except ValueError:
            continue
        kind = ev.get("event")
        if kind == "plan" and total is None:
            total = int(ev.get("total", 0))
        elif kind == "test" and total is not None and 0 <= int(ev.get("i", -1)) < total:
            tests.setdefault(int(ev["i"]), {"ok": bool(ev.get("ok")), "error": ev.get("error")})
        elif kind in ("load_error", "setup_error"):
            details[kind] = ev.get("error")
        elif kind == "done":
            done = True
    if total is None:
        details["harness"] = res.reason or "no test plan reported"
        details["stderr"] = res.err(DETAIL_CHARS)
        return 0, 1, details
    passed = sum(1 for t in tests.values() if t["ok"])
    if not done:
        details["interrupted"] = res.reason or "the program ended before the tests finished"
    details["tests"] = [{"i": i, **tests[i]} if i in tests else {"i": i, "ok": False, "error": "not run"}
                        for i in range(total)][:200]
    details["stderr"] = res.err(500)
    return passed, total, details


class PythonTestVerifier(Verifier):
    """Common steps: extract, syntax-check (0.0 on failure), run tests in the sandbox, score."""

    sandboxed = True
    kind = "tests"
    toolchains_needed = ("python",)
    params: PyTestsParams

    def score(self, passed: int, total: int, details: dict[str, Any]) -> VerifyResult:
        reward = pass_rate_reward(passed, total, self.params.partial_credit)
        details.update({"passed": passed, "total": total, "pass_rate": round(passed / total, 6) if total else 0.0})
        stage = VerifyStage.CORRECT if total and passed == total else VerifyStage.TESTED
        return self.result(reward, stage, details=details)

    def syntax_fail(self, error: str | None, details: dict[str, Any]) -> VerifyResult:
        details["compile"] = {"ok": False, "error": error}
        return self.result(Ladder.COMPILE_FAILED, VerifyStage.COMPILE, details=details)


class HumanEvalParams(PyTestsParams):
    mode: Literal["auto", "continuation", "full"] = Field(
        default="auto",
        description="continuation: program = prompt + completion; full: the completion defines the function "
        "(the prompt is prepended for its imports/helpers); auto: full when it defines the entry point.")


@register_verifier("humaneval", origin="builtin")
class HumanEvalVerifier(PythonTestVerifier):
    """HumanEval: prompt + completion run against check(candidate); each assert is one test."""

    Params = HumanEvalParams
    params: HumanEvalParams

    def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
        if not context.prompt:
            return self.missing_context("prompt", "the HumanEval function stub")
        if not isinstance(context.tests, str) or not context.tests.strip():
            return self.missing_context("tests", "the HumanEval check(candidate) program")
        if not context.entry_point:
            return self.missing_context("entry_point")
        code = extract_code(completion, "python")
        body = code.code if code.source != "raw" else completion
        defines = re.search(rf"^\s*def\s+{re.escape(context.entry_point)}\s*\(", body, re.M) is not None
        full = self.params.mode == "full" or (self.params.mode == "auto" and defines)
        program = context.prompt + ("\n" if full else "") + body
        details: dict[str, Any] = {"mode": "full" if full else "continuation"}
        ok, warns, error = python_syntax(program)
        if not ok:
            return self.syntax_fail(error, details)
        details["compile"] = {"ok": True, "warnings": warns}
        assert self.runtime.sandbox is not None
        with self.runtime.sandbox.workspace() as ws:
            passed, total, d = run_harness(self, ws, program, "check", context.tests, self.params,
                                           entry_point=context.entry_point)
        return self.score(passed, total, {**details, **d})


class MbppParams(PyTestsParams):
    pass


@register_verifier("mbpp", origin="builtin")
class MbppVerifier(PythonTestVerifier):
    """MBPP: the completion's code against a list of assert statements; each assert is one test."""

    Params = MbppParams
    params: MbppParams

    def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
        tests = context.tests
        if isinstance(tests, str):
            tests = [t for t in tests.splitlines() if t.strip()]
        if not tests:
            return self.missing_context("tests", "a list of assert statements")
        code = extract_code(completion, "python")
        details: dict[str, Any] = {"extracted_from": code.source}
        if code.empty:
            return self.result(0.0, VerifyStage.NONE, details={**details, "note": "no code found"})
        ok, warns, error = python_syntax(code.code)
        if not ok:
            return self.syntax_fail(error, details)
        bad = [i for i, t in enumerate(tests) if not python_syntax(t)[0]]
        if bad:
            return self.error_result("bad_context", f"context.tests[{bad[0]}] is not valid Python",
                                     details={"field": f"context.tests[{bad[0]}]"})
        details["compile"] = {"ok": True, "warnings": warns}
        assert self.runtime.sandbox is not None
        with self.runtime.sandbox.workspace() as ws:
            passed, total, d = run_harness(self, ws, code.code, "asserts", list(tests), self.params,
                                           setup=context.test_setup)
        return self.score(passed, total, {**details, **d})


class PytestParams(PyTestsParams):
    module: str = Field(default="solution", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                        description="Module name the completion is saved as (tests import it).")
    test_file: str = Field(default="test_solution.py", pattern=r"^test_[A-Za-z0-9_]*\.py$",
                           description="File name of the test module.")


@register_verifier("pytest", origin="builtin")
class PytestVerifier(PythonTestVerifier):
    """Save the completion as a module and run a pytest test module against it (pass rate)."""

    Params = PytestParams
    params: PytestParams
    toolchains_needed = ("pytest",)

    def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
        if not isinstance(context.tests, str) or not context.tests.strip():
            return self.missing_context("tests", "a pytest test module")
        code = extract_code(completion, "python")
        details: dict[str, Any] = {"extracted_from": code.source}
        if code.empty:
            return self.result(0.0, VerifyStage.NONE, details={**details, "note": "no code found"})
        ok, warns, error = python_syntax(code.code)
        if not ok:
            return self.syntax_fail(error, details)
        details["compile"] = {"ok": True, "warnings": warns}
        tc = self.runtime.toolchains.get("pytest")
        report = f".report-{secrets.token_hex(8)}.xml"
        assert self.runtime.sandbox is not None
        with self.runtime.sandbox.workspace() as ws:
            ws.write(f"{self.params.module}.py", code.code)
            ws.write(self.params.test_file, context.tests)
            env = env_for(tc, ws, self.runtime.sandbox.path_env, {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
            argv = [tc.exe or "python3", "-I", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                    "--rootdir", str(ws.path),
                    f"--junitxml={report}", self.params.test_file]
            res = ws.run(argv, limits=self.params.run_limits(self.runtime.run_limits), env=env, expose=tc.expose)
            report_path = ws.path / report
            xml = report_path.read_bytes() if report_path.is_file() and report_path.stat().st_size < 10_000_000 else b""
        passed, total, d = parse_junit(xml)
        d["exit_code"] = res.returncode
        d["output"] = res.out(DETAIL_CHARS) if not res.ok else res.out(300)
        if res.reason and res.returncode not in (0, 1):
            d["reason"] = res.reason
        return self.score(passed, total, {**details, **d})


def parse_junit(xml: bytes) -> tuple[int, int, dict[str, Any]]:
    """(passed, total, details) from a pytest junit XML report; skipped tests do not count."""
    if not xml:
        return 0, 1, {"report": "no junit report (collection failed or the run was killed)"}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        return 0, 1, {"report": f"unreadable junit report: {exc}"}
    cases = []
    for tc in root.iter("testcase"):
        outcome = "passed"
        for child in tc:
            if child.tag in ("failure", "error"):
                outcome = child.tag
                break
            if child.tag == "skipped":
                outcome = "skipped"
        cases.append({"name": f"{tc.get('classname', '')}::{tc.get('name', '')}", "outcome": outcome})
    counted = [c for c in cases if c["outcome"] != "skipped"]
    passed = sum(1 for c in counted if c["outcome"] == "passed")
    total = len(counted)
    if total == 0:
        suite_errors = sum(int(s.get("errors", 0) or 0) for s in root.iter("testsuite"))
        return 0, 1, {"report": "no tests collected" + (f" ({suite_errors} collection errors)" if suite_errors else ""),
                      "tests": cases}
    return passed, total, {"tests": cases[:200]}
