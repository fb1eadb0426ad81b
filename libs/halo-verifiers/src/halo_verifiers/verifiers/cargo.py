"""The cargo verifier: the completion as a one-crate Cargo project, built offline, then
``cargo test`` on context.tests (0.5 + 0.5 × pass rate) or the binary run on stdin/expected cases."""

from __future__ import annotations

import re
from typing import Any, Literal

from halo_schemas.verifiers import VerifyContext, VerifyResult, VerifyStage
from pydantic import Field

from halo_verifiers.base import Availability, compile_reward, pass_rate_reward
from halo_verifiers.extract import extract_code
from halo_verifiers.registry import register_verifier
from halo_verifiers.sandbox import Workspace
from halo_verifiers.toolchains import Toolchain
from halo_verifiers.verifiers._code import (
    DETAIL_CHARS,
    CodeVerifier,
    CompiledParams,
    _exec_brief,
    _sandbox_env,
    cases_of,
)

_WARN = re.compile(r"^warning(\[\w+\])?: (?!.*generated \d+ warnings?)(?!\d+ warnings? emitted).*$", re.M)
_RESULT = re.compile(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored")
_TEST_LINE = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)", re.M)


class CargoParams(CompiledParams):
    edition: Literal["2015", "2018", "2021"] = Field(default="2021", description="Rust edition of the crate.")
    release: bool = Field(default=False, description="Build with --release.")
    test_threads: int = Field(default=1, ge=1, le=64, description="cargo test -- --test-threads.")


@register_verifier("cargo", origin="builtin")
class CargoVerifier(CodeVerifier):
    """Build the completion as a Cargo crate (offline); run `cargo test` on context.tests or the cases."""

    Params = CargoParams
    params: CargoParams
    languages = ("rust",)
    compilers = {"rust": "cargo"}
    default_language = "rust"
    toolchains_needed = ("cargo",)

    def env(self, ws: Workspace, tc: Toolchain) -> dict[str, str]:
        return _sandbox_env(self, tc, ws, {
            "CARGO_HOME": str(ws.path / ".cargo"), "CARGO_TARGET_DIR": str(ws.path / "target"),
            "CARGO_NET_OFFLINE": "true", "CARGO_INCREMENTAL": "0", "CARGO_TERM_COLOR": "never",
            "CARGO_BUILD_JOBS": "2",
        })

    def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
        code = extract_code(completion, "rust")
        details: dict[str, Any] = {"language": "rust", "extracted_from": code.source}
        if code.empty:
            return self.result(0.0, VerifyStage.NONE, details={**details, "note": "no code found"})
        tc = self.runtime.toolchains.get("cargo")
        if not tc.available:
            return self.unavailable(Availability(False, f"cargo unavailable: {tc.problem}", tc.install_hint))
        details["toolchain"] = tc.version
        tests = context.tests if isinstance(context.tests, str) and context.tests.strip() else None
        is_bin = re.search(r"\bfn\s+main\s*\(", code.code) is not None
        src = code.code
        if tests:
            src += "\n" + (tests if re.search(r"#\[cfg\(test\)\]", tests)
                           else f"#[cfg(test)]\nmod halo_tests {{\n    #[allow(unused_imports)]\n    use super::*;\n{tests}\n}}\n")
        assert self.runtime.sandbox is not None
        with self.runtime.sandbox.workspace() as ws:
            ws.write("Cargo.toml", "[package]\nname = \"solution\"\nversion = \"0.1.0\"\n"
                                   f"edition = \"{self.params.edition}\"\n\n[dependencies]\n")
            ws.write("src/main.rs" if is_bin else "src/lib.rs", src)
            env = self.env(ws, tc)
            limits = self.params.compile_limits(self.runtime.compile_limits)
            mode = ["--release"] if self.params.release else []
            build = ws.run([tc.exe or "cargo", "build", "--offline", *mode], limits=limits, env=env,
                           expose=tc.expose)
            warns = [m.group(0)[:300] for m in _WARN.finditer(build.err())]
            details["compile"] = {"ok": build.ok, "warnings": warns[:20], **_exec_brief(build)}
            if not build.ok:
                return self.result(0.0, VerifyStage.COMPILE, details=details)
            base = compile_reward(bool(warns))
            if tests:
                return self._cargo_test(ws, tc, env, mode, tests, details)
            if not is_bin:
                details["note"] = "compiled as a library; no main() to run"
                return self.result(base, VerifyStage.COMPILED, details=details, max_reward=0.5)
            if not self.params.run:
                return self.result(base, VerifyStage.COMPILED, details=details, max_reward=0.5)
            binary = f"./target/{'release' if self.params.release else 'debug'}/solution"
            return self.run_cases(ws, tc, [binary], cases_of(context), base, details)

    def _cargo_test(self, ws: Workspace, tc: Toolchain, env: dict[str, str], mode: list[str], tests: str,
                    details: dict[str, Any]) -> VerifyResult:
        declared = len(re.findall(r"#\[test\]", tests))
        limits = self.params.compile_limits(self.runtime.compile_limits).with_(
            wall_s=self.params.compile_timeout_s + self.params.timeout_s)
        res = ws.run([tc.exe or "cargo", "test", "--offline", *mode, "--", f"--test-threads={self.params.test_threads}"],
                     limits=limits, env=env, expose=tc.expose)
        out = res.out()
        passed = failed = ignored = 0
        for m in _RESULT.finditer(out):
            passed, failed, ignored = passed + int(m.group(1)), failed + int(m.group(2)), ignored + int(m.group(3))
        total = max(passed + failed, declared - ignored, 1)
        details.update({
            "tests": [{"name": m.group(1), "outcome": m.group(2).lower()} for m in _TEST_LINE.finditer(out)][:200],
            "passed": passed, "total": total, "test_exit_code": res.returncode,
        })
        if not _RESULT.search(out):
            details["test_error"] = res.reason or "tests did not build"
            details["test_stderr"] = res.err(DETAIL_CHARS)
        reward = pass_rate_reward(passed, total, self.params.partial_credit)
        return self.result(reward, VerifyStage.CORRECT if passed == total else VerifyStage.TESTED, details=details)
