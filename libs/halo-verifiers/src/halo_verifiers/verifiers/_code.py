"""Shared machinery of the code verifiers: compile in the sandbox, run cases, climb the ladder.

``CodeVerifier`` subclasses say which toolchain compiles which language (``compilers``), and the
pipeline is the same for all of them:

extract code -> compile (0.0 fail, 0.3 warnings, 0.5 clean) -> run every case (0.7 when all run
without crashing) -> compare outputs (1.0 when all are correct), with partial credit by default
(see :func:`~halo_verifiers.base.run_reward`).
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from halo_schemas.verifiers import IOCase, VerifyContext, VerifyResult, VerifyStage
from pydantic import Field

from halo_verifiers.base import Ladder, Verifier, VerifierParams, compile_reward, run_reward
from halo_verifiers.extract import ExtractedCode, extract_code, normalize_language
from halo_verifiers.matching import MatchParams, outputs_match
from halo_verifiers.sandbox import ExecResult, SandboxLimits, Workspace
from halo_verifiers.toolchains import Toolchain

DETAIL_CHARS = 2000  # stdout/stderr kept in result details
SOURCE_FILES = {"c": "main.c", "cpp": "main.cpp", "rust": "main.rs", "go": "main.go", "python": "main.py"}


class RunParams(VerifierParams):
    """Limits and scoring shared by every verifier that runs code."""

    timeout_s: float = Field(default=5.0, gt=0, le=300, description="Wall-clock limit of each run (CPU limit too).")
    memory_mb: int = Field(default=1024, ge=16, le=65536, description="Address-space limit of each run, MiB.")
    max_output_kb: int = Field(default=1024, ge=1, le=262144, description="stdout/stderr cap per run, KiB.")
    max_processes: int = Field(default=64, ge=1, le=4096, description="Process/thread limit of each run.")
    compile_timeout_s: float = Field(default=60.0, gt=0, le=600, description="Wall-clock limit of compilation.")
    partial_credit: bool = Field(default=True, description="Graduated credit for partly passing cases/tests.")

    def run_limits(self, base: SandboxLimits) -> SandboxLimits:
        return base.with_(wall_s=self.timeout_s, cpu_s=self.timeout_s, memory_bytes=self.memory_mb * 1024 * 1024,
                          max_output_bytes=self.max_output_kb * 1024, max_processes=self.max_processes)

    def compile_limits(self, base: SandboxLimits) -> SandboxLimits:
        return base.with_(wall_s=self.compile_timeout_s, cpu_s=self.compile_timeout_s)


class CompiledParams(RunParams):
    """Parameters of the compile-and-run verifiers."""

    flags: list[str] = Field(default_factory=list, description="Extra compiler flags (default optimisation is -O1).")
    run: bool = Field(default=True, description="Run the program (with the context's cases) after compiling.")
    match: MatchParams = Field(default_factory=MatchParams, description="How outputs are compared.")


@dataclass
class CompileOutcome:
    ok: bool
    warnings: list[str]
    result: ExecResult | None
    run_argv: list[str] | None  # None: nothing runnable (no main / cross-compiled)
    note: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def reward(self) -> float:
        return compile_reward(bool(self.warnings)) if self.ok else Ladder.COMPILE_FAILED


_C_WARNING = re.compile(r"^[^\n]*:\d+(:\d+)?: warning: .*$", re.M)
# Compiler (not linker) errors: "file:line[:col]: error:" or the compiler proper (cc1, cc1plus).
_C_ERROR = re.compile(r"^(?:[^\n]*:\d+(?::\d+)?: |cc1\w*: )(?:fatal )?error: ", re.M)
_RUST_WARNING = re.compile(r"^warning(\[\w+\])?: (?!\d+ warnings? emitted).*$", re.M)


def cases_of(context: VerifyContext) -> list[IOCase]:
    """The context's cases, or the single stdin/expected_output shorthand, or []."""
    if context.cases:
        return list(context.cases)
    if context.stdin is not None or context.expected_output is not None:
        return [IOCase(stdin=context.stdin or "", expected_output=context.expected_output)]
    return []


def env_for(tc: Toolchain, ws: Workspace, default_path: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(tc.env)
    env["PATH"] = ":".join([*tc.path_prepend, default_path])
    env.update(extra or {})
    return env


class CodeVerifier(Verifier):
    """Compile-and-run pipeline. Subclasses set ``compilers`` (language -> toolchain name) and may
    override :meth:`compile` / :meth:`run_argv`."""

    Params: ClassVar[type[VerifierParams]] = CompiledParams
    sandboxed = True
    kind = "code"
    languages: ClassVar[tuple[str, ...]] = ("c", "cpp")
    compilers: ClassVar[dict[str, str]] = {}
    default_language: ClassVar[str] = "c"
    cap_at_compile: ClassVar[bool] = False  # cross compilers: never run

    params: CompiledParams

    # ---- language & toolchains -------------------------------------------------------------
    def language_for(self, extracted: ExtractedCode | None, context: VerifyContext | None) -> str:
        explicit = getattr(self.params, "language", None)
        for cand in (explicit, context.language if context else None, extracted.language if extracted else None):
            lang = normalize_language(cand)
            if lang in self.languages:
                return lang
        return self.default_language

    def required_toolchains(self, context: VerifyContext | None = None) -> tuple[str, ...]:
        explicit = normalize_language(getattr(self.params, "language", None))
        hint = normalize_language(context.language) if context else None
        lang = explicit if explicit in self.languages else hint if hint in self.languages else None
        if lang:
            return (self.compilers[lang],)
        return (self.compilers[self.default_language],)

    def toolchain(self, lang: str) -> Toolchain:
        return self.runtime.toolchains.get(self.compilers[lang])

    # ---- the pipeline -----------------------------------------------------------------------------
    def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
        extracted = extract_code(completion, getattr(self.params, "language", None) or context.language)
        lang = self.language_for(extracted, context)
        details: dict[str, Any] = {"language": lang, "extracted_from": extracted.source}
        if extracted.empty:
            return self.result(0.0, VerifyStage.NONE, details={**details, "note": "no code found in the completion"})
        tc = self.toolchain(lang)
        if not tc.available:
            from halo_verifiers.base import Availability

            return self.unavailable(Availability(False, f"{tc.name} unavailable: {tc.problem}", tc.install_hint))
        details["toolchain"] = tc.version
        assert self.runtime.sandbox is not None
        with self.runtime.sandbox.workspace() as ws:
            comp = self.compile(ws, lang, extracted.code, tc)
            details["compile"] = {"ok": comp.ok, "warnings": comp.warnings[:20], **comp.details}
            if comp.result is not None:
                details["compile"].update(_exec_brief(comp.result))
            if comp.note:
                details["note"] = comp.note
            if not comp.ok:
                return self.result(0.0, VerifyStage.COMPILE, details=details)
            base = comp.reward
            if self.has_tests(context):
                return self.run_tests(ws, tc, extracted.code, context, base, details)
            cases = cases_of(context)
            if self.cap_at_compile or not self.params.run or comp.run_argv is None:
                if comp.run_argv is None and cases and not self.cap_at_compile:
                    details["note"] = comp.note or "compiled, but there is no entry point to run the cases with"
                    return self.result(base, VerifyStage.COMPILED, details=details, max_reward=1.0)
                return self.result(base, VerifyStage.COMPILED, details=details, max_reward=Ladder.COMPILED_CLEAN)
            return self.run_cases(ws, tc, comp.run_argv, cases, base, details)

    def has_tests(self, context: VerifyContext) -> bool:
        """True when this verifier runs ``context.tests`` instead of cases (go test, cargo test)."""
        return False

    def run_tests(self, ws: Workspace, tc: Toolchain, code: str, context: VerifyContext, base: float,
                  details: dict[str, Any]) -> VerifyResult:
        raise NotImplementedError

    def run_cases(self, ws: Workspace, tc: Toolchain, argv: list[str], cases: list[IOCase], base: float,
                  details: dict[str, Any]) -> VerifyResult:
        """Run ``argv`` once per case (once with empty stdin when there are none) and score."""
        checked = any(c.expected_output is not None for c in cases)
        runs = cases or [IOCase()]
        limits = self.params.run_limits(self.runtime.run_limits)
        ran = correct = 0
        outcomes = []
        for i, case in enumerate(runs):
            res = ws.run([*argv, *case.args], stdin=case.stdin.encode(), limits=limits,
                         env=env_for(tc, ws, self.runtime.sandbox.path_env if self.runtime.sandbox else ""),
                         expose=tc.expose)
            ok_run = res.ok
            good = ok_run and (case.expected_output is None or outputs_match(res.out(), case.expected_output,
                                                                              self.params.match))
            ran += ok_run
            correct += good
            outcome: dict[str, Any] = {"case": case.name or str(i), "ran": ok_run, "passed": good,
                                       "reason": res.reason, "wall_s": round(res.wall_s, 4),
                                       "stdout": res.out(DETAIL_CHARS)}
            if not ok_run:
                outcome["stderr"] = res.err(DETAIL_CHARS)
            if case.expected_output is not None:
                outcome["expected"] = case.expected_output[:DETAIL_CHARS]
            outcomes.append(outcome)
        total = len(runs)
        reward = run_reward(base, total, ran, correct, checked, self.params.partial_credit)
        details.update({"cases": outcomes, "ran": ran, "passed": correct if checked else None, "total": total})
        max_reward = Ladder.CORRECT if checked else Ladder.RAN
        if checked and correct == total:
            stage = VerifyStage.CORRECT
        elif ran == total:
            stage = VerifyStage.RAN
        else:
            stage = VerifyStage.COMPILED
        return self.result(reward, stage, details=details, max_reward=max_reward)

    # ---- compilation per language ------------------------------------------------------------------
    def compile(self, ws: Workspace, lang: str, code: str, tc: Toolchain) -> CompileOutcome:
        if lang in ("c", "cpp"):
            return compile_c_family(self, ws, lang, code, tc)
        if lang == "rust":
            return compile_rust(self, ws, code, tc)
        if lang == "go":
            return compile_go(self, ws, code, tc)
        if lang == "python":
            return compile_python(ws, code, tc)
        raise ValueError(f"unsupported language {lang!r}")


def _exec_brief(res: ExecResult) -> dict[str, Any]:
    return {"exit_code": res.returncode, "reason": res.reason, "wall_s": round(res.wall_s, 4),
            "stderr": res.err(DETAIL_CHARS)}


def _sandbox_env(v: Verifier, tc: Toolchain, ws: Workspace, extra: dict[str, str] | None = None) -> dict[str, str]:
    return env_for(tc, ws, v.runtime.sandbox.path_env if v.runtime.sandbox else "", extra)


def compile_c_family(v: CodeVerifier, ws: Workspace, lang: str, code: str, tc: Toolchain) -> CompileOutcome:
    src = SOURCE_FILES[lang]
    ws.write(src, code)
    cross = v.cap_at_compile
    out = "prog.exe" if cross else "prog"
    params: CompiledParams = v.params
    std = getattr(params, "std", None)
    argv = [tc.exe or "cc", *(["-std=" + std] if std else []), "-O1", *params.flags, "-Wall", "-Wextra",
            src, "-o", out]
    if lang == "c":
        argv.append("-lm")
    res = ws.run(argv, limits=params.compile_limits(v.runtime.compile_limits), env=_sandbox_env(v, tc, ws),
                 expose=tc.expose)
    err = res.err()
    warns = [m.group(0)[:300] for m in _C_WARNING.finditer(err)]
    if res.ok:
        return CompileOutcome(True, warns, res, None if cross else ["./" + out])
    no_main = (not _C_ERROR.search(err) and re.search(r"undefined reference to `(main|WinMain)'", err)
               and not res.timed_out)
    if no_main:
        return CompileOutcome(True, warns, res, None, note="compiled; no main() to link and run")
    return CompileOutcome(False, warns, res, None)


def compile_rust(v: CodeVerifier, ws: Workspace, code: str, tc: Toolchain) -> CompileOutcome:
    ws.write("main.rs", code)
    params: CompiledParams = v.params
    edition = getattr(params, "edition", "2021")
    base = [tc.exe or "rustc", "--edition", edition, "-C", "opt-level=1", "--crate-name", "solution", *params.flags]
    limits = params.compile_limits(v.runtime.compile_limits)
    env = _sandbox_env(v, tc, ws)
    res = ws.run([*base, "main.rs", "-o", "prog"], limits=limits, env=env, expose=tc.expose)
    err = res.err()
    if res.ok:
        return CompileOutcome(True, _rust_warnings(err), res, ["./prog"])
    if "E0601" in err and not res.timed_out:  # no `main`: check it compiles as a library
        lib = ws.run([*base, "--crate-type", "lib", "main.rs", "-o", "libsolution.rlib"], limits=limits, env=env,
                     expose=tc.expose)
        if lib.ok:
            return CompileOutcome(True, _rust_warnings(lib.err()), lib, None, note="compiled as a library; no main()")
        return CompileOutcome(False, _rust_warnings(lib.err()), lib, None)
    return CompileOutcome(False, _rust_warnings(err), res, None)


def _rust_warnings(err: str) -> list[str]:
    return [m.group(0)[:300] for m in _RUST_WARNING.finditer(err)]


def go_env(ws: Workspace) -> dict[str, str]:
    return {"GOCACHE": str(ws.path / ".cache" / "go-build"), "GOPATH": str(ws.path / "go"),
            "GOTMPDIR": str(ws.path), "GOENV": "off"}


def compile_go(v: CodeVerifier, ws: Workspace, code: str, tc: Toolchain) -> CompileOutcome:
    ws.write("main.go", code)
    ws.mkdir(".cache")
    params: CompiledParams = v.params
    is_main = re.search(r"^\s*package\s+main\b", code, re.M) is not None
    argv = [tc.exe or "go", "build", *params.flags, *(["-o", "prog"] if is_main else []), "main.go"]
    limits = params.compile_limits(v.runtime.compile_limits)
    env = _sandbox_env(v, tc, ws, go_env(ws))
    res = ws.run(argv, limits=limits, env=env, expose=tc.expose)
    if not res.ok:
        return CompileOutcome(False, [], res, None)
    warns: list[str] = []
    if getattr(params, "vet", False):
        vet = ws.run([tc.exe or "go", "vet", "main.go"], limits=limits, env=env, expose=tc.expose)
        warns = [ln for ln in vet.err().splitlines() if ln.strip() and not ln.startswith("#")][:20]
    if not is_main:
        return CompileOutcome(True, warns, res, None, note="compiled; not package main, nothing to run")
    return CompileOutcome(True, warns, res, ["./prog"])


def python_syntax(code: str) -> tuple[bool, list[str], str | None]:
    """(compiles, warnings, error) for Python source — checked in-process: parsing runs no code."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            compile(ast.parse(code), "main.py", "exec")
        except SyntaxError as exc:
            return False, [], f"SyntaxError: {exc.msg} (line {exc.lineno})"
        except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
            return False, [], f"{type(exc).__name__}: {exc}"
    warns = [f"{w.category.__name__}: {w.message} (line {w.lineno})" for w in caught
             if issubclass(w.category, SyntaxWarning | DeprecationWarning)]
    return True, warns, None


def compile_python(ws: Workspace, code: str, tc: Toolchain) -> CompileOutcome:
    ok, warns, error = python_syntax(code)
    if not ok:
        return CompileOutcome(False, [], None, None, details={"error": error})
    ws.write("main.py", code)
    return CompileOutcome(True, warns, None, [tc.exe or "python3", "-I", "main.py"])


LanguageName = Literal["c", "cpp", "rust", "go", "python"]
