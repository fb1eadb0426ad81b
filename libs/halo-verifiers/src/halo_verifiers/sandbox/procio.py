"""Process I/O of one sandboxed command: its :class:`ExecResult`, feeding stdin and collecting
capped stdout/stderr before a deadline (:func:`communicate`), killing its process group, and reading
framed replies from the warm agent (:func:`read_exact`)."""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass

from halo_verifiers.sandbox.uids import kill_uid


@dataclass
class ExecResult:
    """What a sandboxed command did. ``ok`` is exit code 0 with no limit hit."""

    argv: list[str]
    returncode: int | None
    stdout: bytes
    stderr: bytes
    wall_s: float
    mechanism: str
    timed_out: bool = False
    output_exceeded: bool = False
    signal: int | None = None
    spawn_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not (self.timed_out or self.output_exceeded or self.spawn_error)

    @property
    def reason(self) -> str | None:
        """Why it failed, in a few words; None when ``ok``."""
        if self.spawn_error:
            return f"could not start: {self.spawn_error}"
        if self.timed_out:
            return "timeout (wall clock)"
        if self.output_exceeded:
            return "output limit exceeded"
        if self.signal == signal.SIGXCPU:
            return "CPU time limit exceeded"
        if self.signal:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            return f"killed by {name}"
        if self.returncode:
            return f"exit code {self.returncode}"
        return None

    def out(self, limit: int | None = None) -> str:
        text = self.stdout.decode("utf-8", "replace")
        return text if limit is None else text[:limit]

    def err(self, limit: int | None = None) -> str:
        text = self.stderr.decode("utf-8", "replace")
        return text if limit is None else text[-limit:] if len(text) > limit else text

    def summary(self, limit: int = 2000) -> dict[str, object]:
        """Small JSON-able description for result details (outputs truncated)."""
        return {
            "exit_code": self.returncode,
            "signal": self.signal,
            "timed_out": self.timed_out,
            "output_exceeded": self.output_exceeded,
            "wall_s": round(self.wall_s, 4),
            "stdout": self.out(limit),
            "stderr": self.err(limit),
            "reason": self.reason,
        }


def read_exact(f: object, n: int, deadline: float) -> bytes:
    """Read exactly ``n`` bytes from a pipe before ``deadline`` (EOFError when it closes)."""
    fd = f.fileno()  # type: ignore[attr-defined]
    out = bytearray()
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no reply from the sandbox agent")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise EOFError("the sandbox agent exited")
        out += chunk
    return bytes(out)


def kill_group(proc: subprocess.Popen[bytes], uid: int | None) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    if uid is not None:
        kill_uid(uid)


def exited(proc: subprocess.Popen[bytes]) -> bool:
    """True once ``proc`` exited, WITHOUT reaping it: while it is a zombie its pid (= its process
    group id) cannot be reused, so killing that group later can only hit the sandbox's stragglers."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def communicate(
    proc: subprocess.Popen[bytes], stdin: bytes, deadline: float, max_output: int, uid: int | None
) -> tuple[bytes, bytes, bool, bool]:
    """Feed stdin, collect stdout/stderr up to ``max_output`` bytes each, enforce the deadline.

    Returns (stdout, stderr, timed_out, output_exceeded). When the command exits but something it
    started keeps the pipes open, that straggler gets a short grace period and is then killed.
    """
    assert proc.stdin and proc.stdout and proc.stderr
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs: dict[int, bytearray] = {out_fd: bytearray(), err_fd: bytearray()}
    timed_out = exceeded = False
    exited_at: float | None = None
    sel = selectors.DefaultSelector()
    for f in (proc.stdout, proc.stderr):
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ)
    pending = memoryview(stdin)
    if pending:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    try:
        while sel.get_map() and not exceeded:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if exited_at is None and exited(proc):
                exited_at = now
            if exited_at is not None and now - exited_at > 0.25:
                break  # the command is gone; whatever still holds the pipes is a straggler
            wait = min(deadline - now, 0.05 if exited_at is not None else 0.25)
            for key, _ev in sel.select(wait):
                f = key.fileobj
                if f is proc.stdin:
                    try:
                        n = os.write(proc.stdin.fileno(), pending[:65536])
                        pending = pending[n:]
                    except BlockingIOError:
                        continue
                    except OSError:  # the program closed its stdin / exited
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(proc.stdin)
                        with contextlib.suppress(OSError):
                            proc.stdin.close()
                    continue
                fd = f.fileno()  # type: ignore[union-attr]
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(f)
                    continue
                buf = bufs[fd]
                room = max_output - len(buf)
                buf += chunk[:room]
                if len(chunk) > room:
                    exceeded = True
                    break
        if timed_out or exceeded:
            kill_group(proc, uid)
        grace = max(deadline, time.monotonic()) + 0.5
        while not exited(proc):
            if time.monotonic() > grace:
                timed_out = True
                kill_group(proc, uid)
                grace = float("inf")
            time.sleep(0.001)
        # Still unreaped: the group id is ours. Nothing in it may outlive the command.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        sel.close()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                f.close()
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), timed_out, exceeded
