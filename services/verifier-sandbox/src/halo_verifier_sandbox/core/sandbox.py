"""Run untrusted code: no network, a private writable directory only, read-only system, limits.

Usage::

    sandbox = Sandbox.detect()                        # strongest mechanism here, or SandboxUnavailable
    with sandbox.workspace() as ws:                   # private dir (+ a private uid when root)
        ws.write("main.c", source)
        built = ws.run(["gcc", "main.c", "-o", "prog"], limits=COMPILE_LIMITS)
        ran = ws.run(["./prog"], stdin=b"1 2\\n", limits=SandboxLimits(wall_s=2))
        ran.ok, ran.stdout, ran.reason                # "timeout", "output limit", "exit code 1"…

Mechanisms, strongest first (``detect`` probes each by really running ``true`` through it):

* ``bwrap`` (bubblewrap, Linux): new network, PID, IPC and UTS namespaces; ``/`` bound read-only;
  ``/tmp``, ``/var/tmp``, ``/root``, ``/home``, ``/run`` and HALO_HOME hidden behind empty
  read-only tmpfs (toolchain directories under them are bound back read-only); a fresh ``/dev``
  (read-only) and ``/proc``; only the workspace is writable. As root, the command then drops to a
  private uid from a pool (``setpriv``), so RLIMIT_NPROC really applies (root ignores it) and every
  leftover process of that uid can be found and killed. ``--die-with-parent`` plus the PID
  namespace mean killing the sandbox kills everything in it.
* ``unshare`` (util-linux, Linux): the same namespaces via ``unshare``, and the same filesystem
  view built by a small init (``_launch/nsinit.py``) inside the new mount namespace.
* ``sandbox-exec`` (macOS): a Seatbelt profile denying network and writes outside the workspace.
* ``container``: no isolation of our own beyond limits, uid and environment — for compose/helm,
  where the container itself has no network and a read-only root. Only when configured explicitly.
* ``host``: limits, uid and environment only. Never chosen unless the operator opts in
  (``HALO_VERIFIER_SANDBOX_ALLOW_HOST=1``); without a mechanism and without that opt-in,
  :meth:`Sandbox.detect` fails closed with :class:`SandboxUnavailable`.

Every mechanism applies rlimits (address space, CPU seconds, processes, file size, open files, no
core dumps) through ``prlimit`` (or a tiny Python launcher where it is missing), a reduced
environment, a wall-clock timeout and a stdout/stderr size cap; on timeout or overflow the whole
process group (and, with a private uid, every process of that uid) is SIGKILLed.

Warm sandboxes (bwrap as root, the default there): each private uid keeps one long-lived bwrap
sandbox running ``_launch/agent.py``; commands are sent to it and started with fork/vfork+exec
(through ``_launch/halo_exec.c``, compiled once, when a C compiler exists) instead of building
namespaces and mounts per command. Same isolation; between verifications the agent kills the
uid's processes and removes its SysV IPC objects.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import math
import os
import platform
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from halo_common.errors import Unavailable

log = logging.getLogger("halo_verifier_sandbox.sandbox")

_LAUNCH_DIR = Path(__file__).resolve().parent / "_launch"
NSINIT = _LAUNCH_DIR / "nsinit.py"
AGENT = _LAUNCH_DIR / "agent.py"
HALO_EXEC_C = _LAUNCH_DIR / "halo_exec.c"
LIMITS_LAUNCHER = _LAUNCH_DIR / "limits.py"

MiB = 1024 * 1024
GiB = 1024 * MiB


class SandboxUnavailable(Unavailable):
    """No isolation mechanism works here and host execution was not allowed (fail closed)."""


class Mechanism(StrEnum):
    BWRAP = "bwrap"
    UNSHARE = "unshare"
    SANDBOX_EXEC = "sandbox-exec"
    CONTAINER = "container"
    HOST = "host"


INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap), "
    "or run in a container and set HALO_VERIFIER_SANDBOX_MECHANISM=container, or — unsafe, trusted code "
    "only — set HALO_VERIFIER_SANDBOX_ALLOW_HOST=1"
)


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed command. ``memory_bytes`` is the address-space limit (RLIMIT_AS)."""

    wall_s: float = 10.0
    cpu_s: float = 10.0
    memory_bytes: int = 1 * GiB
    max_processes: int = 64
    max_output_bytes: int = 1 * MiB
    max_file_bytes: int = 64 * MiB
    max_open_files: int = 256

    def with_(self, **changes: object) -> SandboxLimits:
        """A copy with some limits changed (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


#: Defaults for running a compiled program / a test script.
RUN_LIMITS = SandboxLimits()
#: Compilers need more: rustc and go spawn many threads (RLIMIT_NPROC counts threads) and map lots.
COMPILE_LIMITS = SandboxLimits(wall_s=60.0, cpu_s=60.0, memory_bytes=4 * GiB, max_processes=512,
                               max_output_bytes=1 * MiB, max_file_bytes=256 * MiB, max_open_files=1024)


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


# ---- uid pool ---------------------------------------------------------------------------------


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


# ---- workspace ----------------------------------------------------------------------------------


@dataclass
class Workspace:
    """A private directory (and uid, as root) for one verification; commands run with ``run``."""

    sandbox: Sandbox
    path: Path
    uid: int | None
    gid: int | None
    agent: _Agent | None = None
    runs: list[ExecResult] = field(default_factory=list)

    def write(self, rel: str, content: str | bytes, mode: int = 0o644) -> Path:
        """Write a file in the workspace (owned by the sandbox uid so the code may rewrite it)."""
        target = (self.path / rel).resolve()
        if self.path.resolve() not in target.parents:
            raise ValueError(f"{rel!r} is outside the workspace")
        target.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        target.write_bytes(data)
        os.chmod(target, mode)
        self._own(target)
        parent = target.parent
        while parent != self.path and self.path in parent.parents:
            self._own(parent)
            parent = parent.parent
        return target

    def mkdir(self, rel: str) -> Path:
        d = self.path / rel
        d.mkdir(parents=True, exist_ok=True)
        self._own(d)
        return d

    def _own(self, p: Path) -> None:
        if self.uid is not None:
            os.chown(p, self.uid, self.gid if self.gid is not None else self.uid)

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | str = b"",
        limits: SandboxLimits = RUN_LIMITS,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        expose: Sequence[str | Path] = (),
    ) -> ExecResult:
        """Run ``argv`` in the sandbox with the workspace as working directory."""
        res = self.sandbox.run(self, argv, stdin=stdin, limits=limits, env=env, cwd=cwd, expose=expose)
        self.runs.append(res)
        return res


# ---- the sandbox ----------------------------------------------------------------------------------


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _real(p: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(p))))


def _under(p: Path, root: Path) -> bool:
    return p == root or root in p.parents


def _top_level(paths: object) -> list[Path]:
    """The paths that are not inside another one of them (a nested bind would be redundant)."""
    out: list[Path] = []
    for p in sorted(set(paths), key=lambda p: len(p.parts)):  # type: ignore[call-overload]
        if not any(_under(p, q) for q in out):
            out.append(p)
    return out


DEFAULT_HIDE = ("/tmp", "/var/tmp", "/root", "/home", "/run", "/mnt", "/media", "/srv")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class Sandbox:
    """Runs commands under one :class:`Mechanism`. Build with :meth:`detect` (or the constructor
    for a specific mechanism, then :meth:`probe`). Thread-safe: one workspace per verification."""

    def __init__(
        self,
        mechanism: Mechanism,
        *,
        base_dir: Path | None = None,
        hide: Sequence[str | Path] = DEFAULT_HIDE,
        expose: Sequence[str | Path] = (),
        uid_base: int = 2_900_000,
        uid_count: int = 64,
        drop_uid: bool | None = None,
        tools: Mapping[str, str] | None = None,
        path_env: str = DEFAULT_PATH,
        warm: bool = True,
    ) -> None:
        self.mechanism = Mechanism(mechanism)
        default_base = Path(tempfile.gettempdir()) / ("halo-verifier-sandbox" if _is_root()
                                                      else f"halo-verifier-sandbox-{os.getuid()}")
        self.base_dir = _real(base_dir or default_base)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o711)  # others may traverse to their own workspace, not list it
        self.tools = {"bwrap": "bwrap", "unshare": "unshare", "prlimit": "prlimit", "setpriv": "setpriv",
                      "sandbox-exec": "sandbox-exec", **(tools or {})}
        self.path_env = path_env
        root = _is_root()
        # Host mode keeps the service's uid by default: a private uid could not even reach
        # toolchains installed under /root (the namespaced mechanisms bind those back instead).
        default_drop = root and self.mechanism != Mechanism.HOST
        self.drop_uid = default_drop if drop_uid is None else (drop_uid and root)
        # The uid locks are host-wide, not per base_dir: two sandboxes with different workspaces
        # (two services, a service and a test) must never hand out the same uid, or one's cleanup
        # (kill every process of the uid) would kill the other's programs.
        uid_locks = Path(tempfile.gettempdir()) / "halo-verifier-sandbox-uids"
        self.uid_pool = UidPool(uid_base, uid_count, uid_locks) if self.drop_uid else None
        hidden = sorted({_real(h) for h in hide if Path(h).exists()}, key=lambda p: len(p.parts))
        # Only the top-most hidden directories get a tmpfs; nested ones are hidden already.
        self.hidden: list[Path] = []
        for h in hidden:
            if h == Path("/") or any(_under(h, t) for t in self.hidden):
                continue
            self.hidden.append(h)
        self.expose: list[Path] = []
        for e in expose:
            self.add_expose(e)
        self._prlimit = shutil.which(self.tools["prlimit"]) if platform.system() == "Linux" else None
        # Warm sandboxes: one long-lived bwrap + agent per private uid (root only), so a command
        # costs a fork+exec instead of fresh namespaces and mounts. Isolation is the same; between
        # verifications the agent kills the uid's processes and removes its SysV IPC objects.
        self.warm = warm and self.mechanism == Mechanism.BWRAP and self.drop_uid
        self._agents: dict[int, _Agent] = {}
        self._agents_lock = threading.Lock()
        self.instance = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.launcher = _build_launcher(self.base_dir) if self.warm else None
        if self.warm:
            _remove_stale_slots(self.base_dir)

    # ---- configuration ---------------------------------------------------------------------
    def add_expose(self, path: str | Path) -> None:
        """Make ``path`` (a toolchain directory under a hidden one) visible read-only in the sandbox."""
        p = _real(path)
        if p in self.hidden or p == Path("/"):
            return  # never re-expose a hidden root itself (e.g. a script directory in /tmp on sys.path)
        if p.exists() and any(_under(p, h) for h in self.hidden) and p not in self.expose:
            if not any(_under(p, e) for e in self.expose):
                self.expose = [e for e in self.expose if not _under(e, p)] + [p]

    @property
    def isolation(self) -> list[str]:
        """What this mechanism isolates (for the inventory and result metadata)."""
        base = ["rlimits", "reduced-env", "process-group-kill"] + (["private-uid"] if self.drop_uid else [])
        if self.mechanism in (Mechanism.BWRAP, Mechanism.UNSHARE):
            return ["network", "pid", "ipc", "uts", "filesystem-readonly", "private-workdir", *base]
        if self.mechanism == Mechanism.SANDBOX_EXEC:
            return ["network", "filesystem-readonly", "private-workdir", *base]
        if self.mechanism == Mechanism.CONTAINER:
            return ["container", "private-workdir", *base]
        return ["private-workdir", *base]

    # ---- detection ---------------------------------------------------------------------------
    @classmethod
    def detect(
        cls,
        preferred: str = "auto",
        *,
        allow_host: bool = False,
        candidates: Sequence[str] | None = None,
        **kwargs: object,
    ) -> Sandbox:
        """The strongest working mechanism. ``preferred`` forces one (``auto`` probes
        bwrap -> unshare -> sandbox-exec). ``container`` and ``host`` are never picked by ``auto``;
        ``host`` additionally needs ``allow_host``. Raises :class:`SandboxUnavailable` (fail closed)."""
        problems: list[str] = []
        if preferred not in ("auto", *[m.value for m in Mechanism]):
            raise ValueError(f"unknown sandbox mechanism {preferred!r}")
        if preferred == Mechanism.HOST and not allow_host:
            raise SandboxUnavailable("sandbox mechanism 'host' needs HALO_VERIFIER_SANDBOX_ALLOW_HOST=1 (unsafe)")
        order = [preferred] if preferred != "auto" else list(
            candidates or (Mechanism.BWRAP, Mechanism.UNSHARE, Mechanism.SANDBOX_EXEC))
        for name in order:
            try:
                sb = cls(Mechanism(name), **kwargs)  # type: ignore[arg-type]
                sb.probe()
                return sb
            except SandboxUnavailable as exc:
                problems.append(f"{name}: {exc.message}")
            except Exception as exc:  # a probe must never crash detection
                problems.append(f"{name}: {type(exc).__name__}: {exc}")
        if allow_host and preferred == "auto":
            log.warning("no sandbox mechanism works (%s); running untrusted code on the HOST as allowed by "
                        "HALO_VERIFIER_SANDBOX_ALLOW_HOST", "; ".join(problems))
            sb = cls(Mechanism.HOST, **kwargs)  # type: ignore[arg-type]
            sb.probe()
            return sb
        raise SandboxUnavailable(f"no sandbox mechanism available ({'; '.join(problems)}); {INSTALL_HINT}")

    def probe(self) -> None:
        """Really run ``true`` (and check the network is gone where it should be); raise if broken."""
        need = {Mechanism.BWRAP: "bwrap", Mechanism.UNSHARE: "unshare", Mechanism.SANDBOX_EXEC: "sandbox-exec"}
        if self.mechanism in need and not shutil.which(self.tools[need[self.mechanism]]):
            raise SandboxUnavailable(f"{self.tools[need[self.mechanism]]} not found")
        if self.mechanism in (Mechanism.BWRAP, Mechanism.UNSHARE) and platform.system() != "Linux":
            raise SandboxUnavailable(f"{self.mechanism} needs Linux")
        if self.mechanism == Mechanism.SANDBOX_EXEC and platform.system() != "Darwin":
            raise SandboxUnavailable("sandbox-exec needs macOS")
        if self.drop_uid and self.mechanism in (Mechanism.BWRAP, Mechanism.UNSHARE) \
                and not shutil.which(self.tools["setpriv"]):
            raise SandboxUnavailable("setpriv (util-linux) not found")
        try:
            self._probe_run()
        except SandboxUnavailable as exc:
            if not self.warm:
                raise
            # The warm agent could not start (e.g. its Python is unreachable): cold sandboxes still work.
            log.warning("warm sandboxes unavailable (%s); starting a fresh sandbox per command", exc.message)
            self.close()
            self.warm = False
            self._probe_run()

    def _probe_run(self) -> None:
        true = shutil.which("true") or "/bin/true"
        with self.workspace() as ws:
            res = ws.run([true], limits=SandboxLimits(wall_s=15, cpu_s=5))
            if not res.ok:
                raise SandboxUnavailable(f"probe failed: {res.reason}: {res.err(300).strip()}")
            if self.mechanism in (Mechanism.BWRAP, Mechanism.UNSHARE):
                # /proc/net/dev lists the interfaces of the reader's network namespace: only 'lo' in a new one.
                ls = ws.run(["cat", "/proc/net/dev"], limits=SandboxLimits(wall_s=15, cpu_s=5))
                ifaces = [ln.split(":")[0].strip() for ln in ls.out().splitlines()[2:] if ":" in ln]
                if not ls.ok or any(i != "lo" for i in ifaces):
                    raise SandboxUnavailable(f"probe: network namespace not isolated (interfaces: {ifaces})")

    # ---- workspaces ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def workspace(self) -> Iterator[Workspace]:
        """A fresh private directory (and uid); everything of it is killed and removed on exit."""
        uid = self.uid_pool.acquire() if self.uid_pool else None
        agent = self._agent_for(uid) if uid is not None and self.warm else None
        parent = agent.slot_dir if agent else self.base_dir
        path = parent / f"ws-{uuid.uuid4().hex[:16]}"
        try:
            path.mkdir(mode=0o700)
            if uid is not None:
                os.chown(path, uid, uid)
                kill_uid(uid)  # a previous holder's stragglers (e.g. a crashed service)
            ws = Workspace(self, path, uid, uid, agent=agent)
            yield ws
        finally:
            if agent is not None and agent.alive():
                with contextlib.suppress(SandboxUnavailable):
                    agent.call({"op": "reset", "uid": uid}, timeout=15)
            if uid is not None:
                kill_uid(uid)
            shutil.rmtree(path, ignore_errors=True)
            if path.exists():  # read-only dirs made by the code: make them writable, retry
                for dirpath, dirnames, _ in os.walk(path):
                    for d in dirnames:
                        with contextlib.suppress(OSError):
                            os.chmod(os.path.join(dirpath, d), 0o700)
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o700)
                shutil.rmtree(path, ignore_errors=True)
            if uid is not None and self.uid_pool:
                self.uid_pool.release(uid)

    def _agent_for(self, uid: int) -> _Agent | None:
        """The warm sandbox of ``uid`` (bwrap only), started on first use."""
        if self.mechanism != Mechanism.BWRAP:
            return None
        with self._agents_lock:
            agent = self._agents.get(uid)
            if agent is None:
                agent = _Agent(self, uid)
                self._agents[uid] = agent
            return agent

    def agent_pids(self) -> list[int]:
        """Process ids of the running warm sandboxes (their outer bwrap processes)."""
        with self._agents_lock:
            return [a.proc.pid for a in self._agents.values() if a.proc is not None and a.alive()]

    def close(self) -> None:
        """Stop the warm sandboxes (they also die with this process)."""
        with self._agents_lock:
            agents, self._agents = list(self._agents.values()), {}
        for a in agents:
            a.close()
            shutil.rmtree(a.slot_dir, ignore_errors=True)

    # ---- running ----------------------------------------------------------------------------------
    def environment(self, ws: Workspace, extra: Mapping[str, str] | None) -> dict[str, str]:
        """The reduced environment: PATH, HOME/TMPDIR in the workspace, a UTF-8 locale, and ``extra``."""
        env = {
            "PATH": self.path_env,
            "HOME": str(ws.path),
            "TMPDIR": str(ws.path),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONHASHSEED": "0",
        }
        env.update(extra or {})
        return env

    def _rlimit_argv(self, limits: SandboxLimits, nproc: int) -> list[str]:
        cpu = max(1, math.ceil(limits.cpu_s))
        if self._prlimit:
            return [self._prlimit, f"--as={limits.memory_bytes}", f"--cpu={cpu}:{cpu + 1}", f"--nproc={nproc}",
                    f"--fsize={limits.max_file_bytes}", f"--nofile={limits.max_open_files}", "--core=0", "--"]
        return [sys.executable, "-I", "-S", str(LIMITS_LAUNCHER), "--as", str(limits.memory_bytes), "--cpu",
                str(cpu), "--nproc", str(nproc), "--fsize", str(limits.max_file_bytes), "--nofile",
                str(limits.max_open_files), "--"]

    def _nproc(self, ws: Workspace, limits: SandboxLimits) -> int:
        if ws.uid is not None or _is_root():
            # A private uid starts with no processes. (As root without one, RLIMIT_NPROC is ignored
            # by the kernel anyway: the PID namespace and the kill-on-exit carry the load.)
            return limits.max_processes
        # Same uid as this service: RLIMIT_NPROC counts every thread of that uid, ours included.
        if platform.system() != "Linux":
            return 4096
        tasks = 0
        for pid in processes_of_uid(os.getuid()):
            with contextlib.suppress(OSError):
                tasks += len(os.listdir(f"/proc/{pid}/task"))
        return tasks + limits.max_processes

    def _mkdirs_for(self, targets: Sequence[Path]) -> list[Path]:
        """Ancestors of ``targets`` that lie inside hidden directories (created 0755 in the tmpfs)."""
        out: list[Path] = []
        for t in targets:
            for h in self.hidden:
                if h in t.parents:
                    rel = t.relative_to(h)
                    cur = h
                    for part in rel.parts[:-1]:
                        cur = cur / part
                        if cur not in out:
                            out.append(cur)
        return sorted(out, key=lambda p: len(p.parts))

    def _bwrap_prefix(self, bind: Path, cwd: Path, expose: Sequence[Path]) -> list[str]:
        """bwrap with every namespace, the read-only root, hidden dirs, exposed toolchains and
        ``bind`` as the only writable directory; the command follows."""
        a = [self.tools["bwrap"], "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
             "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
        if not _is_root():
            a += ["--unshare-user", "--cap-drop", "ALL"]
        a += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        for h in self.hidden:
            a += ["--tmpfs", str(h)]
        for d in self._mkdirs_for([*expose, bind]):
            a += ["--perms", "0755", "--dir", str(d)]
        for e in expose:
            a += ["--ro-bind", str(e), str(e)]
        a += ["--bind", str(bind), str(bind)]
        for h in self.hidden:
            a += ["--remount-ro", str(h)]
        return a + ["--remount-ro", "/dev", "--chdir", str(cwd), "--"]

    def _bwrap_argv(self, ws: Workspace, argv: Sequence[str], cwd: Path, expose: list[Path]) -> list[str]:
        a = self._bwrap_prefix(ws.path, cwd, expose)
        if ws.uid is not None:
            a += self._setpriv(ws)
        return a + list(argv)

    def _setpriv(self, ws: Workspace) -> list[str]:
        return [self.tools["setpriv"], f"--reuid={ws.uid}", f"--regid={ws.gid}", "--clear-groups",
                "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]

    def _unshare_argv(self, ws: Workspace, argv: Sequence[str], cwd: Path, expose: list[Path]) -> list[str]:
        a = [self.tools["unshare"]]
        if not _is_root():
            a.append("--map-root-user")
        a += ["--net", "--pid", "--ipc", "--uts", "--mount", "--fork", "--kill-child", "--mount-proc", "--"]
        spec = {
            "hide": [str(h) for h in self.hidden],
            "mkdirs": [str(d) for d in self._mkdirs_for([*expose, ws.path])],
            "expose": [str(e) for e in expose],
            "workdir": str(ws.path),
            "cwd": str(cwd),
            "uid": ws.uid,
            "gid": ws.gid,
            "argv": list(argv),
        }
        return a + [sys.executable, "-I", "-S", str(NSINIT), json.dumps(spec)]

    def _seatbelt_argv(self, ws: Workspace, argv: Sequence[str]) -> list[str]:
        profile = (
            "(version 1)(allow default)(deny network*)(deny file-write*)"
            f'(allow file-write* (subpath "{ws.path}"))'
            '(allow file-write* (literal "/dev/null") (literal "/dev/zero") (literal "/dev/tty"))'
        )
        return [self.tools["sandbox-exec"], "-p", profile, *argv]

    def command(self, ws: Workspace, argv: Sequence[str], limits: SandboxLimits, cwd: Path | None = None,
                expose: Sequence[str | Path] = ()) -> list[str]:
        """The full argv (limits + mechanism + uid drop + ``argv``) that :meth:`run` executes."""
        cwd = cwd or ws.path
        extra = [_real(e) for e in expose]
        exp = _top_level([*self.expose, *(e for e in extra if e.exists() and e not in self.hidden
                                           and any(_under(e, h) for h in self.hidden))])
        prefix = self._rlimit_argv(limits, self._nproc(ws, limits))
        if self.mechanism == Mechanism.BWRAP:
            return prefix + self._bwrap_argv(ws, argv, cwd, exp)
        if self.mechanism == Mechanism.UNSHARE:
            return prefix + self._unshare_argv(ws, argv, cwd, exp)
        if self.mechanism == Mechanism.SANDBOX_EXEC:
            return prefix + self._seatbelt_argv(ws, argv)
        return prefix + list(argv)  # container / host: uid drop happens in Popen

    def run(
        self,
        ws: Workspace,
        argv: Sequence[str],
        *,
        stdin: bytes | str = b"",
        limits: SandboxLimits = RUN_LIMITS,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        expose: Sequence[str | Path] = (),
    ) -> ExecResult:
        """Run ``argv`` inside ``ws`` under ``limits``; never raises for what the code does
        (:class:`SandboxUnavailable` when the sandbox itself breaks)."""
        if ws.agent is not None:
            return ws.agent.run(ws, argv, stdin=stdin, limits=limits, env=self.environment(ws, env),
                                cwd=cwd or ws.path, expose=[_real(e) for e in expose])
        full = self.command(ws, argv, limits, cwd, expose)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        popen_kw: dict[str, object] = {}
        if ws.uid is not None and self.mechanism in (Mechanism.HOST, Mechanism.CONTAINER, Mechanism.SANDBOX_EXEC):
            popen_kw.update(user=ws.uid, group=ws.gid, extra_groups=[])
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                full, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=str(cwd or ws.path) if self.mechanism in (Mechanism.HOST, Mechanism.CONTAINER,
                                                               Mechanism.SANDBOX_EXEC) else str(ws.path),
                env=self.environment(ws, env), start_new_session=True, close_fds=True, **popen_kw,  # type: ignore[arg-type]
            )
        except OSError as exc:
            return ExecResult(list(argv), None, b"", b"", 0.0, self.mechanism.value, spawn_error=str(exc))
        out, err, timed_out, exceeded = _communicate(proc, data, start + limits.wall_s, limits.max_output_bytes, ws.uid)
        wall = time.monotonic() - start
        rc = proc.returncode
        sig = None
        if rc is not None and rc < 0:
            sig = -rc
        elif rc is not None and rc > 128 and self.mechanism in (Mechanism.BWRAP, Mechanism.UNSHARE) and rc - 128 < 65:
            sig = rc - 128  # bwrap/unshare report a signalled child as 128+N
        if ws.uid is not None and (timed_out or exceeded or self.mechanism not in (Mechanism.BWRAP, Mechanism.UNSHARE)):
            kill_uid(ws.uid)  # daemons the code left behind (host/container mode has no PID namespace)
        return ExecResult(list(argv), rc, out, err, wall, self.mechanism.value, timed_out=timed_out,
                          output_exceeded=exceeded, signal=sig)


class _Agent:
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
        self.launcher: Path | None = None
        if sandbox.launcher is not None:
            self.launcher = self.slot_dir / ".halo-exec"
            shutil.copyfile(sandbox.launcher, self.launcher)
            os.chmod(self.launcher, 0o755)
        self.python = os.path.realpath(sys.executable)
        self.expose: set[Path] = set()
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _start(self, expose: set[Path]) -> None:
        self.close()
        py_dirs = {_real(Path(self.python).parent.parent), _real(sys.base_prefix)}
        wanted = {p for p in (*self.sandbox.expose, *self.expose, *expose, *py_dirs)
                  if p.exists() and p not in self.sandbox.hidden and any(_under(p, h) for h in self.sandbox.hidden)}
        final = _top_level(wanted)
        argv = self.sandbox._bwrap_prefix(self.slot_dir, self.slot_dir, final) + [
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
            head = _read_exact(proc.stdout, 4, time.monotonic() + timeout)
            body = _read_exact(proc.stdout, int.from_bytes(head, "big"), time.monotonic() + timeout)
        except (OSError, TimeoutError, EOFError) as exc:
            self.close()
            raise SandboxUnavailable(f"sandbox agent failed: {type(exc).__name__}: {exc}") from None
        return json.loads(body)

    def call(self, req: dict[str, object], timeout: float, expose: set[Path] | None = None) -> dict[str, object]:
        """Send one request; (re)starts the sandbox when needed or when ``expose`` grows."""
        with self.lock:
            need = set(expose or ())
            covered = all(any(_under(n, e) for e in self.expose) for n in need)
            if not self.alive() or not covered:
                if req.get("op") == "reset" and not self.alive():
                    return {"killed": 0}
                self._start(need)
            return self._call(req, timeout)

    def run(self, ws: Workspace, argv: Sequence[str], *, stdin: bytes | str, limits: SandboxLimits,
            env: dict[str, str], cwd: Path, expose: list[Path]) -> ExecResult:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        cpu = max(1, math.ceil(limits.cpu_s))
        req = {
            "op": "run", "argv": list(argv), "cwd": str(cwd), "env": env, "uid": ws.uid, "gid": ws.gid,
            "stdin": base64.b64encode(data).decode(), "wall_s": limits.wall_s, "max_output": limits.max_output_bytes,
            "limits": {"as": limits.memory_bytes, "cpu": cpu, "nproc": limits.max_processes,
                       "fsize": limits.max_file_bytes, "nofile": limits.max_open_files},
        }
        need = {e for e in expose if e.exists() and any(_under(e, h) for h in self.sandbox.hidden)
                and e not in self.sandbox.hidden}
        try:
            reply = self.call(req, timeout=limits.wall_s + 30, expose=need)
        except SandboxUnavailable:
            reply = self.call(req, timeout=limits.wall_s + 30, expose=need)  # one retry on a fresh sandbox
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


def _remove_stale_slots(base_dir: Path) -> None:
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


def _build_launcher(base_dir: Path) -> Path | None:
    """Compile ``halo_exec.c`` once per source version (cached in ``base_dir``); None without a C
    compiler (the agent then forks itself for each command, about a millisecond slower)."""
    import hashlib

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


def _read_exact(f: object, n: int, deadline: float) -> bytes:
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


def _kill_group(proc: subprocess.Popen[bytes], uid: int | None) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    if uid is not None:
        kill_uid(uid)


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """True once ``proc`` exited, WITHOUT reaping it: while it is a zombie its pid (= its process
    group id) cannot be reused, so killing that group later can only hit the sandbox's stragglers."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _communicate(
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
            if exited_at is None and _exited(proc):
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
            _kill_group(proc, uid)
        grace = max(deadline, time.monotonic()) + 0.5
        while not _exited(proc):
            if time.monotonic() > grace:
                timed_out = True
                _kill_group(proc, uid)
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
