"""Compile-and-run verifiers: gcc, clang, mingw (cross-compile only), rust, go, execution."""

from __future__ import annotations

import re
from typing import Any, Literal

from halo_schemas.verifiers import VerifyContext, VerifyResult, VerifyStage
from pydantic import Field

from halo_verifiers.base import pass_rate_reward
from halo_verifiers.registry import register_verifier
from halo_verifiers.sandbox import Workspace
from halo_verifiers.toolchains import Toolchain
from halo_verifiers.verifiers._code import (
    DETAIL_CHARS,
    CodeVerifier,
    CompiledParams,
    _sandbox_env,
    go_env,
)


class CParams(CompiledParams):
    language: Literal["c", "cpp"] | None = Field(
        default=None, description="c or cpp; default: the code fence / context.language / detection, else c.")
    std: str | None = Field(default=None, pattern=r"^[a-z0-9+]+$",
                            description="Language standard, e.g. c11, c17, c++17, gnu++20.")


@register_verifier("gcc", origin="builtin")
class GccVerifier(CodeVerifier):
    """Compile C/C++ with GCC (-Wall -Wextra), run the context's cases, compare outputs."""

    Params = CParams
    languages = ("c", "cpp")
    compilers = {"c": "gcc", "cpp": "g++"}
    toolchains_needed = ("gcc",)


@register_verifier("clang", origin="builtin")
class ClangVerifier(CodeVerifier):
    """Compile C/C++ with Clang (-Wall -Wextra), run the context's cases, compare outputs."""

    Params = CParams
    languages = ("c", "cpp")
    compilers = {"c": "clang", "cpp": "clang++"}
    toolchains_needed = ("clang",)


class MingwParams(CParams):
    run: bool = Field(default=False, description="Ignored: MinGW output is a Windows binary and is never run.")


@register_verifier("mingw", origin="builtin")
class MingwVerifier(CodeVerifier):
    """Cross-compile C/C++ for Windows with MinGW-w64; reward capped at the compile stage (0.5)."""

    Params = MingwParams
    languages = ("c", "cpp")
    compilers = {"c": "mingw-gcc", "cpp": "mingw-g++"}
    toolchains_needed = ("mingw-gcc",)
    cap_at_compile = True


class RustParams(CompiledParams):
    edition: Literal["2015", "2018", "2021"] = Field(default="2021", description="Rust edition.")


@register_verifier("rust", origin="builtin")
class RustVerifier(CodeVerifier):
    """Compile Rust with rustc (warnings count), run the context's cases, compare outputs."""

    Params = RustParams
    languages = ("rust",)
    compilers = {"rust": "rustc"}
    default_language = "rust"
    toolchains_needed = ("rustc",)


class GoParams(CompiledParams):
    vet: bool = Field(default=False, description="Run `go vet`; its findings count as warnings (0.3).")


_GO_RESULT = re.compile(r"^\s*--- (PASS|FAIL|SKIP): (\S+)", re.M)


@register_verifier("go", origin="builtin")
class GoVerifier(CodeVerifier):
    """Build Go with `go build` (optionally `go vet` as warnings), then run `go test` on
    context.tests (0.5 + 0.5 × pass rate) or the context's stdin/expected cases."""

    Params = GoParams
    languages = ("go",)
    compilers = {"go": "go"}
    default_language = "go"
    toolchains_needed = ("go",)

    def has_tests(self, context: VerifyContext) -> bool:
        return isinstance(context.tests, str) and bool(context.tests.strip())

    def run_tests(self, ws: Workspace, tc: Toolchain, code: str, context: VerifyContext, base: float,
                  details: dict[str, Any]) -> VerifyResult:
        tests = str(context.tests)
        pkg = re.search(r"^\s*package\s+(\w+)", code, re.M)
        if not re.search(r"^\s*package\s+\w+", tests, re.M):
            imports = "" if re.search(r'"testing"', tests) else 'import "testing"\n\n'
            tests = f"package {pkg.group(1) if pkg else 'main'}\n\n{imports}{tests}"
        ws.write("main_test.go", tests)
        declared = len(re.findall(r"^\s*func\s+Test\w*\s*\(", tests, re.M))
        limits = self.params.compile_limits(self.runtime.compile_limits).with_(
            wall_s=self.params.compile_timeout_s + self.params.timeout_s)
        res = ws.run([tc.exe or "go", "test", "-v", "-count=1", "-p", "1", "."], limits=limits,
                     env=_sandbox_env(self, tc, ws, go_env(ws)), expose=tc.expose)
        outcomes = [{"name": m.group(2), "outcome": m.group(1).lower()} for m in _GO_RESULT.finditer(res.out())]
        counted = [o for o in outcomes if o["outcome"] != "skip"]
        passed = sum(1 for o in counted if o["outcome"] == "pass")
        total = max(len(counted), declared - sum(1 for o in outcomes if o["outcome"] == "skip"), 1)
        details.update({"tests": outcomes[:200], "passed": passed, "total": total,
                        "test_output": res.out(DETAIL_CHARS), "test_exit_code": res.returncode})
        if not res.ok and not outcomes:
            details["test_error"] = res.reason or "tests did not build"
            details["test_stderr"] = res.err(DETAIL_CHARS)
        reward = pass_rate_reward(passed, total, self.params.partial_credit)
        stage = VerifyStage.CORRECT if passed == total else VerifyStage.TESTED
        return self.result(reward, stage, details=details)


class ExecutionParams(CompiledParams):
    language: Literal["c", "cpp", "rust", "go", "python"] | None = Field(
        default=None, description="Language; default: code fence / context.language / detection, else python.")
    std: str | None = Field(default=None, pattern=r"^[a-z0-9+]+$", description="C/C++ standard, e.g. c17, c++20.")
    edition: Literal["2015", "2018", "2021"] = Field(default="2021", description="Rust edition.")
    vet: bool = Field(default=False, description="Go: run `go vet`; findings count as warnings.")


@register_verifier("execution", origin="builtin")
class ExecutionVerifier(CodeVerifier):
    """Compile (C, C++, Rust, Go) or syntax-check (Python), run stdin/expected cases, compare outputs."""

    Params = ExecutionParams
    languages = ("c", "cpp", "rust", "go", "python")
    compilers = {"c": "gcc", "cpp": "g++", "rust": "rustc", "go": "go", "python": "python"}
    default_language = "python"
    toolchains_needed = ()
