"""Private uids for sandboxes (as root) and finding / killing every process of one::

    pool = UidPool(2_900_000, 64, lock_dir)     # host-wide flock per uid
    uid = pool.acquire(); ...; kill_uid(uid); pool.release(uid)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
from pathlib import Path

from halo_verifiers.sandbox.base import SandboxUnavailable


class UidPool:
    """Private uids for sandboxes when running as root. A uid is held with an ``flock`` on a lock
    file, so several service processes on one host never share (or kill) each other's uid."""

    def __init__(self, base: int, count: int, lock_dir: Path) -> None:
        self.base, self.count, self.lock_dir = base, count, lock_dir
        lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._cond = threading.Condition()
        self._held: dict[int, int] = {}

    def acquire(self, timeout: float = 300.0) -> int:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for uid in range(self.base, self.base + self.count):
                    if uid in self._held:
                        continue
                    fd = os.open(self.lock_dir / f"{uid}.lock", os.O_CREAT | os.O_RDWR, 0o600)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        os.close(fd)
                        continue
                    self._held[uid] = fd
                    return uid
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SandboxUnavailable(f"no free sandbox uid in {self.base}..{self.base + self.count - 1}")
                self._cond.wait(min(left, 0.05))

    def release(self, uid: int) -> None:
        with self._cond:
            fd = self._held.pop(uid, None)
            if fd is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            self._cond.notify()


def processes_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) process ids owned by ``uid`` (Linux /proc; empty elsewhere)."""
    out = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # state is the field after the parenthesised command name (which may contain spaces)
        if stat[stat.rfind(b")") + 2: stat.rfind(b")") + 3] != b"Z":
            out.append(int(name))
    return out


def kill_uid(uid: int, timeout: float = 5.0) -> int:
    """SIGKILL every process of ``uid`` until none is left; returns how many were killed."""
    killed = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = processes_of_uid(uid)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.005)
    return killed
