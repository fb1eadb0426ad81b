"""Verifiers configured entirely by their spec: ``custom`` (a Python check function run in the
sandbox) and ``subprocess`` (any command run in the sandbox; reward from its exit code or output)."""

from __future__ import annotations

import ast
import json
import re
import secrets
from typing import Any, Literal

from halo_schemas.verifiers import VerifyContext, VerifyResult, VerifyStage
from pydantic import Field, field_validator, model_validator

from halo_verifiers.base import Verifier
from halo_verifiers.extract import extract_code
from halo_verifiers.registry import coerce_result, register_verifier
from halo_verifiers.verifiers._code import DETAIL_CHARS, RunParams, env_for

_RUNNER = r'''
import importlib.util, json, os, sys
with open("halo_input.json") as f:
    cfg = json.load(f)
os.remove("halo_input.json")
os.remove(os.path.abspath(__file__))
nonce = cfg.pop("nonce")
out = os.fdopen(os.dup(1), "w")
spec = importlib.util.spec_from_file_location("halo_custom_check", "custom_check.py")
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
try:
    res = getattr(mod, cfg["function"])(cfg["completion"], cfg["context"])
    msg = {"ok": True, "result": res}
except BaseException as exc:
    msg = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
try:
    text = json.dumps(msg)
except (TypeError, ValueError) as exc:
    text = json.dumps({"ok": False, "error": f"result is not JSON-serialisable: {exc}"})
out.write("\n" + nonce + text + "\n")
out.flush()
os._exit(0)
'''


class CustomParams(RunParams):
    source: str = Field(min_length=1, max_length=200_000,
                        description="Python source defining `verify(completion: str, context: dict)` returning a "
                        "reward float, a bool, or {'reward': float, 'success'?: bool, 'details'?: dict}.")
    function: str = Field(default="verify", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                          description="Name of the check function in `source`.")
    timeout_s: float = Field(default=10.0, gt=0, le=600, description="Wall-clock limit of the check.")

    @model_validator(mode="after")
    def _defines_function(self) -> CustomParams:
        try:
            tree = ast.parse(self.source)
        except SyntaxError as exc:
            raise ValueError(f"source is not valid Python: {exc.msg} (line {exc.lineno})") from None
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        if self.function not in names:
            raise ValueError(f"source defines no function {self.function!r}")
        return self


@register_verifier("custom", origin="builtin")
class CustomVerifier(Verifier):
    """A Python check function from the spec, run in the sandbox on (completion, context)."""

    Params = CustomParams
    params: CustomParams
    sandboxed = True
    kind = "custom"
    toolchains_needed = ("python",)

    def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
        nonce = "@@halo-" + secrets.token_hex(16) + "@@"
        tc = self.runtime.toolchains.get("python")
        assert self.runtime.sandbox is not None
        with self.runtime.sandbox.workspace() as ws:
            ws.write("custom_check.py", self.params.source)
            ws.write("halo_runner.py", _RUNNER)
            ws.write("halo_input.json", json.dumps({"nonce": nonce, "function": self.params.function,
                                                    "completion": completion,
                                                    "context": context.model_dump(mode="json")}))
            res = ws.run([tc.exe or "python3", "-I", "halo_runner.py"],
                         limits=self.params.run_limits(self.runtime.run_limits),
                         env=env_for(tc, ws, self.runtime.sandbox.path_env), expose=tc.expose)
        msg = None
        for line in res.out().splitlines():
            at = line.find(nonce)
            if at >= 0:
                try:
                    msg = json.loads(line[at + len(nonce):])
                except ValueError:
                    msg = None
        run = {"reason": res.reason, "stdout": res.out(DETAIL_CHARS), "stderr": res.err(DETAIL_CHARS)}
        if msg is None:
            return self.error_result("custom_error", f"the check produced no result ({res.reason or 'no output'})",
                                     details=run)
        if not msg.get("ok"):
            return self.error_result("custom_error", f"the check raised {msg.get('error')}", details=run)
        try:
            return coerce_result(self, msg["result"])
        except (TypeError, ValueError) as exc:
            return self.error_result("custom_error", str(exc), details=run)


_PLACEHOLDER = re.compile(r"\{(completion_file|context_file|workdir)\}")


class SubprocessParams(RunParams):
    command: list[str] = Field(min_length=1, max_length=256,
                               description="argv run in the sandbox; {completion_file}, {context_file} and {workdir} "
                               "are substituted.")
    files: dict[str, str] = Field(default_factory=dict, description="Extra files (relative path -> text) written "
                                  "to the working directory first, e.g. a checker script.")
    completion_file: str = Field(default="completion.txt", description="File the completion is written to.")
    stdin: Literal["completion", "context", "none"] = Field(
        default="completion", description="What the command reads on stdin: the completion, the context JSON, nothing.")
    reward_from: Literal["exit_code", "stdout"] = Field(
        default="exit_code", description="exit_code: 0 -> 1.0, else 0.0; stdout: the last line, a number in [0, 1] "
        "or JSON {reward, success?, details?}.")
    extract: bool = Field(default=False, description="Extract code from the completion before writing it.")
    language: str | None = Field(default=None, description="Language hint for extraction.")
    timeout_s: float = Field(default=10.0, gt=0, le=600, description="Wall-clock limit of the command.")

    @field_validator("files")
    @classmethod
    def _safe_paths(cls, files: dict[str, str]) -> dict[str, str]:
        for name in files:
            if not name or name.startswith(("/", "~")) or ".." in name.split("/") or "\0" in name:
                raise ValueError(f"file name {name!r} must be a relative path inside the working directory")
        return files

    @field_validator("completion_file")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
            raise ValueError("completion_file must be a plain file name")
        return name


@register_verifier("subprocess", origin="builtin")
class SubprocessVerifier(Verifier):
    """Any command, run in the sandbox with the completion; reward from its exit code or stdout."""

    Params = SubprocessParams
    params: SubprocessParams
    sandboxed = True
    kind = "custom"

    def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
        text = completion
        if self.params.extract:
            got = extract_code(completion, self.params.language or context.language)
            text = got.code
        ctx_json = context.model_dump_json()
        assert self.runtime.sandbox is not None
        py = self.runtime.toolchains.get("python")
        with self.runtime.sandbox.workspace() as ws:
            for name, content in self.params.files.items():
                ws.write(name, content, mode=0o755)
            cfile = ws.write(self.params.completion_file, text)
            xfile = ws.write("context.json", ctx_json)
            subst = {"completion_file": str(cfile), "context_file": str(xfile), "workdir": str(ws.path)}
            argv = [_PLACEHOLDER.sub(lambda m: subst[m.group(1)], a) for a in self.params.command]
            stdin = {"completion": text, "context": ctx_json, "none": ""}[self.params.stdin]
            res = ws.run(argv, stdin=stdin.encode(), limits=self.params.run_limits(self.runtime.run_limits),
                         expose=py.expose)
        details: dict[str, Any] = {"exit_code": res.returncode, "reason": res.reason,
                                   "stdout": res.out(DETAIL_CHARS), "stderr": res.err(DETAIL_CHARS)}
        if res.spawn_error or (res.returncode == 127 and not res.out()):
            return self.error_result("command_failed", f"cannot run {self.params.command[0]!r}: "
                                     f"{res.spawn_error or res.err(300).strip()}", details=details)
        if self.params.reward_from == "exit_code":
            ok = res.ok
            return self.result(1.0 if ok else 0.0, VerifyStage.CORRECT if ok else VerifyStage.RAN, details=details)
        lines = [ln.strip() for ln in res.out().splitlines() if ln.strip()]
        if not res.ok or not lines:
            return self.result(0.0, VerifyStage.RAN, details={**details, "note": "no reward line on stdout"})
        last = lines[-1]
        try:
            value: Any = json.loads(last)
        except ValueError:
            return self.error_result("bad_output", f"last stdout line is not a number or JSON: {last[:100]!r}",
                                     details=details)
        try:
            out = coerce_result(self, value)
        except (TypeError, ValueError) as exc:
            return self.error_result("bad_output", str(exc), details=details)
        if isinstance(value, int | float) and not 0.0 <= float(value) <= 1.0:
            return self.error_result("bad_output", f"reward {value} is outside [0, 1]", details=details)
        return out.model_copy(update={"details": {**details, **out.details}})
