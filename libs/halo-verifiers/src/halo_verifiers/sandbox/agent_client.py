"""Client of the warm sandboxes (bwrap as root): one long-lived bwrap sandbox per private uid runs
``_launch/agent.py``; commands go to it over a length-prefixed JSON pipe and are started with
fork/vfork+exec (through ``_launch/halo_exec.c`` when a C compiler could build it)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from halo_verifiers.sandbox.base import (
    AGENT,
    HALO_EXEC_C,
    PYZYGOTE,
    Mechanism,
    SandboxUnavailable,
    real,
    top_level,
    under,
)
from halo_verifiers.sandbox.limits import SandboxLimits
from halo_verifiers.sandbox.procio import ExecResult, read_exact
from halo_verifiers.sandbox.view import DEFAULT_PATH

if TYPE_CHECKING:
    from halo_verifiers.sandbox.bwrap import BwrapLauncher
    from halo_verifiers.sandbox.runner import Sandbox, Workspace

log = logging.getLogger("halo_verifiers.sandbox")


class WarmAgent:
    """A warm bwrap sandbox for one private uid running ``_launch/agent.py`` (see there).

    The sandbox binds the uid's slot directory (``<base>/slot-<uid>-<instance>``) read-write; workspaces are
    created inside it. The expose set only grows: a run that needs a toolchain directory the
    sandbox does not show yet restarts it with the union."""

    def __init__(self, sandbox: Sandbox, uid: int) -> None:
        self.sandbox, self.uid = sandbox, uid
        # Per process: several services on one host share the base dir and (one at a time, under
        # the flock) the uids, but each has its own slots, so one closing never removes another's.
        self.slot_dir = sandbox.base_dir / f"slot-{uid}-{sandbox.instance}"
        self.slot_dir.mkdir(mode=0o711, exist_ok=True)
        os.chmod(self.slot_dir, 0o711)
        self.script = self.slot_dir / ".halo-agent.py"
        self.script.write_text(AGENT.read_text())
        os.chmod(self.script, 0o644)
        self.zygote = self.slot_dir / ".halo-pyzygote.py"
        self.zygote.write_text(PYZYGOTE.read_text())
        os.chmod(self.zygote, 0o644)
        self.launcher: Path | None = None
        if sandbox.launcher is not None:
            self.launcher = self.slot_dir / ".halo-exec"
            shutil.copyfile(sandbox.launcher, self.launcher)
            os.chmod(self.launcher, 0o755)
        self.python = os.path.realpath(sys.executable)
        self.expose: set[Path] = set()
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        self.fork_python = True  # False once the Python fork server failed (Workspace.run_python)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _start(self, expose: set[Path]) -> None:
        self.close()
        py_dirs = {real(Path(self.python).parent.parent), real(sys.base_prefix)}
        wanted = {p for p in (*self.sandbox.expose, *self.expose, *expose, *py_dirs) if self.sandbox.needs_bind(p)}
        final = top_level(wanted)
        bwrap: BwrapLauncher = self.sandbox.impl  # type: ignore[assignment]  # warm = bwrap only
        argv = bwrap.prefix(self.slot_dir, self.slot_dir, final, self.uid, self.uid) + [
            self.python, "-I", "-S", str(self.script), *([str(self.launcher)] if self.launcher else [])]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
                                     env={"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"})
        self.expose = set(final)
        reply = self._call({"op": "ping"}, timeout=30)
        if not reply.get("ok"):
            raise SandboxUnavailable(f"sandbox agent did not start: {reply}")

    def _call(self, req: dict[str, object], timeout: float) -> dict[str, object]:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise SandboxUnavailable("sandbox agent is not running")
        data = json.dumps(req).encode()
        try:
            proc.stdin.write(len(data).to_bytes(4, "big") + data)
            proc.stdin.flush()
            head = read_exact(proc.stdout, 4, time.monotonic() + timeout)
            body = read_exact(proc.stdout, int.from_bytes(head, "big"), time.monotonic() + timeout)
        except (OSError, TimeoutError, EOFError) as exc:
            self.close()
            raise SandboxUnavailable(f"sandbox agent failed: {type(exc).__name__}: {exc}") from None
        return json.loads(body)

    def call(self, req: dict[str, object], timeout: float, expose: set[Path] | None = None) -> dict[str, object]:
        """Send one request; (re)starts the sandbox when needed or when ``expose`` grows."""
        with self.lock:
            need = set(expose or ())
            covered = all(any(under(n, e) for e in self.expose) for n in need)
            if not self.alive() or not covered:
                if req.get("op") == "reset" and not self.alive():
                    return {"killed": 0}
                self._start(need)
            return self._call(req, timeout)

    def run(self, ws: Workspace, argv: Sequence[str], *, stdin: bytes | str, limits: SandboxLimits,
            env: dict[str, str], cwd: Path, expose: list[Path], python: tuple[str, str, Sequence[str]] | None = None,
            ) -> ExecResult:
        """Run ``argv``; with ``python=(interpreter, script, args)`` (``argv`` being ``interpreter -I script
        args…``) the child is forked from the sandbox's warm interpreter instead (same limits, uid and
        session; no interpreter start), falling back to ``argv`` if that fork server fails."""
        data = stdin.encode() if isinstance(stdin, str) else stdin
        cpu = max(1, math.ceil(limits.cpu_s))
        req = {
            "op": "run", "argv": list(argv), "cwd": str(cwd), "env": env, "uid": ws.uid, "gid": ws.gid,
            "stdin": base64.b64encode(data).decode(), "wall_s": limits.wall_s, "max_output": limits.max_output_bytes,
            "limits": {"as": limits.memory_bytes, "cpu": cpu, "nproc": limits.max_processes,
                       "fsize": limits.max_file_bytes, "nofile": limits.max_open_files},
        }
        need = {e for e in expose if self.sandbox.needs_bind(e)}
        if python is not None and self.fork_python:
            py_req = {**req, "op": "pyrun", "python": python[0], "zygote": str(self.zygote), "script": python[1],
                      "args": list(python[2])}
            try:
                reply = self.call(py_req, timeout=limits.wall_s + 30, expose=need)
            except SandboxUnavailable:
                reply = {"error": "agent failed"}
            if "error" not in reply:
                return self._result(argv, reply)
            self.fork_python = False  # not again in this sandbox: each try would cost a failed start
            log.warning("python fork server failed (%s); starting the interpreter from now on", reply["error"])
        try:
            reply = self.call(req, timeout=limits.wall_s + 30, expose=need)
        except SandboxUnavailable:
            reply = self.call(req, timeout=limits.wall_s + 30, expose=need)  # one retry on a fresh sandbox
        return self._result(argv, reply)

    @staticmethod
    def _result(argv: Sequence[str], reply: dict[str, object]) -> ExecResult:
        if "error" in reply:
            raise SandboxUnavailable(f"sandbox agent error: {reply['error']}")
        rc = reply["rc"]
        return ExecResult(list(argv), rc, base64.b64decode(reply["stdout"]), base64.b64decode(reply["stderr"]),  # type: ignore[arg-type]
                          float(reply["wall_s"]), Mechanism.BWRAP.value, timed_out=bool(reply["timed_out"]),  # type: ignore[arg-type]
                          output_exceeded=bool(reply["output_exceeded"]), signal=reply.get("signal"))  # type: ignore[arg-type]

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(5)
        for f in (proc.stdin, proc.stdout):
            with contextlib.suppress(Exception):
                if f:
                    f.close()


def remove_stale_slots(base_dir: Path) -> None:
    """Remove slot directories (``slot-<uid>-<pid>-<token>``) of processes that no longer exist
    (a service that was killed could not clean up after itself)."""
    for d in base_dir.glob("slot-*-*-*"):
        try:
            pid = int(d.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def build_launcher(base_dir: Path) -> Path | None:
    """Compile ``halo_exec.c`` once per source version (cached in ``base_dir``); None without a C
    compiler (the agent then forks itself for each command, about a millisecond slower)."""
    src = HALO_EXEC_C.read_bytes()
    out = base_dir / f".halo-exec-{hashlib.sha256(src).hexdigest()[:12]}"
    if out.exists():
        return out
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    tmp = base_dir / f".halo-exec-{uuid.uuid4().hex[:8]}.tmp"
    try:
        # Static when libc.a is there: no dynamic loader work on every exec.
        built = subprocess.run([cc, "-O2", "-static", "-o", str(tmp), str(HALO_EXEC_C)], capture_output=True,
                               timeout=120)
        if built.returncode != 0:
            built = subprocess.run([cc, "-O2", "-o", str(tmp), str(HALO_EXEC_C)], capture_output=True, timeout=120)
        if built.returncode != 0:
            log.warning("could not build halo-exec: %s", built.stderr.decode(errors="replace")[-300:])
            return None
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)  # atomic: concurrent builders of the same source agree
        return out
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not build halo-exec: %s", exc)
        return None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
