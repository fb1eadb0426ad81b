"""The sandbox itself: :class:`Sandbox` (detection, workspaces, running a command under limits with
the chosen mechanism) and :class:`Workspace` (one verification's private directory and uid).
Usage: see the package docstring (``halo_verifiers.sandbox``)."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from halo_verifiers.sandbox.agent_client import WarmAgent, build_launcher, remove_stale_slots
from halo_verifiers.sandbox.base import (
    INSTALL_HINT,
    Mechanism,
    SandboxUnavailable,
    is_root,
    real,
    top_level,
)
from halo_verifiers.sandbox.bwrap import BwrapLauncher
from halo_verifiers.sandbox.host import ContainerLauncher, HostLauncher
from halo_verifiers.sandbox.launcher import Launcher
from halo_verifiers.sandbox.limits import RUN_LIMITS, SandboxLimits, nproc_limit, rlimit_argv
from halo_verifiers.sandbox.procio import ExecResult, communicate
from halo_verifiers.sandbox.seatbelt import SeatbeltLauncher
from halo_verifiers.sandbox.uids import UidPool, kill_uid
from halo_verifiers.sandbox.unshare import UnshareLauncher
from halo_verifiers.sandbox.view import DEFAULT_HIDE, DEFAULT_PATH, FilesystemView

log = logging.getLogger("halo_verifiers.sandbox")

MECHANISMS: dict[Mechanism, type[Launcher]] = {
    Mechanism.BWRAP: BwrapLauncher,
    Mechanism.UNSHARE: UnshareLauncher,
    Mechanism.SANDBOX_EXEC: SeatbeltLauncher,
    Mechanism.CONTAINER: ContainerLauncher,
    Mechanism.HOST: HostLauncher,
}


@dataclass
class Workspace:
    """A private directory (and uid, as root) for one verification; commands run with ``run``."""

    sandbox: Sandbox
    path: Path
    uid: int | None
    gid: int | None
    agent: WarmAgent | None = None
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

    def run_python(
        self,
        python: str,
        script: str,
        args: Sequence[str] = (),
        *,
        limits: SandboxLimits = RUN_LIMITS,
        env: Mapping[str, str] | None = None,
        expose: Sequence[str | Path] = (),
    ) -> ExecResult:
        """``python -I script args…`` in the workspace (no stdin). In a warm sandbox the child is forked
        from a warm interpreter of ``python`` kept in that sandbox (root there, it never sees item data;
        the child drops to the workspace's uid, session and limits before reading ``script``), which
        skips the interpreter start and the imports it already has; elsewhere the interpreter is started."""
        argv = [python, "-I", script, *args]
        if self.agent is None or not self.sandbox.fork_python:
            return self.run(argv, limits=limits, env=env, expose=expose)
        res = self.agent.run(self, argv, stdin=b"", limits=limits, env=self.sandbox.environment(self, env),
                             cwd=self.path, expose=[real(e) for e in expose], python=(python, script, list(args)))
        self.runs.append(res)
        return res


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
        fork_python: bool = True,
    ) -> None:
        self.mechanism = Mechanism(mechanism)
        default_base = Path(tempfile.gettempdir()) / ("halo-verifier-sandbox" if is_root()
                                                      else f"halo-verifier-sandbox-{os.getuid()}")
        self.base_dir = real(base_dir or default_base)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o711)  # others may traverse to their own workspace, not list it
        self.tools = {"bwrap": "bwrap", "unshare": "unshare", "prlimit": "prlimit", "setpriv": "setpriv",
                      "sandbox-exec": "sandbox-exec", **(tools or {})}
        self.path_env = path_env
        root = is_root()
        # Host mode keeps the service's uid by default: a private uid could not even reach
        # toolchains installed under /root (the namespaced mechanisms bind those back instead).
        default_drop = root and self.mechanism != Mechanism.HOST
        self.drop_uid = default_drop if drop_uid is None else (drop_uid and root)
        # The uid locks are host-wide, not per base_dir: two sandboxes with different workspaces
        # (two services, a service and a test) must never hand out the same uid, or one's cleanup
        # (kill every process of the uid) would kill the other's programs.
        uid_locks = Path(tempfile.gettempdir()) / "halo-verifier-sandbox-uids"
        self.uid_pool = UidPool(uid_base, uid_count, uid_locks) if self.drop_uid else None
        self.fs = FilesystemView(self.base_dir, hide, expose)
        self.impl: Launcher = MECHANISMS[self.mechanism](self)
        self._prlimit = shutil.which(self.tools["prlimit"]) if platform.system() == "Linux" else None
        # Warm sandboxes: one long-lived bwrap + agent per private uid (root only), so a command
        # costs a fork+exec instead of fresh namespaces and mounts. Isolation is the same; between
        # verifications the agent kills the uid's processes and removes its SysV IPC objects.
        self.warm = warm and self.mechanism == Mechanism.BWRAP and self.drop_uid
        # Python harnesses forked from a warm interpreter inside the warm sandbox (Workspace.run_python).
        self.fork_python = fork_python
        self._agents: dict[int, WarmAgent] = {}
        self._agents_lock = threading.Lock()
        self.instance = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.launcher = build_launcher(self.base_dir) if self.warm else None
        if self.warm:
            remove_stale_slots(self.base_dir)

    # ---- configuration (the filesystem view: view.py) ------------------------------------------
    @property
    def hidden(self) -> list[Path]:
        """Top-most hidden directories (empty read-only tmpfs in the sandbox)."""
        return self.fs.hidden

    @property
    def expose(self) -> list[Path]:
        """Toolchain directories bound read-only into the sandbox."""
        return self.fs.expose

    def add_expose(self, path: str | Path) -> None:
        """Make ``path`` (a toolchain directory outside the system view) visible read-only."""
        self.fs.add_expose(path)

    def needs_bind(self, p: Path) -> bool:
        """Whether ``p`` must be bound to be seen in the sandbox (see :class:`FilesystemView`)."""
        return self.fs.needs_bind(p)

    @property
    def isolation(self) -> list[str]:
        """What this mechanism isolates (for the inventory and result metadata)."""
        base = ["rlimits", "reduced-env", "process-group-kill"] + (["private-uid"] if self.drop_uid else [])
        return [*self.impl.isolation(), *base]

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
        self.impl.check()
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
            if self.impl.namespaced:
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

    def _agent_for(self, uid: int) -> WarmAgent | None:
        """The warm sandbox of ``uid`` (bwrap only), started on first use."""
        if self.mechanism != Mechanism.BWRAP:
            return None
        with self._agents_lock:
            agent = self._agents.get(uid)
            if agent is None:
                agent = WarmAgent(self, uid)
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

    def command(self, ws: Workspace, argv: Sequence[str], limits: SandboxLimits, cwd: Path | None = None,
                expose: Sequence[str | Path] = ()) -> list[str]:
        """The full argv (limits + mechanism + uid drop + ``argv``) that :meth:`run` executes."""
        cwd = cwd or ws.path
        extra = [real(e) for e in expose]
        exp = top_level([*self.expose, *(e for e in extra if self.needs_bind(e))])
        prefix = rlimit_argv(limits, nproc_limit(limits, ws.uid is not None), self._prlimit)
        return prefix + self.impl.wrap(ws, argv, cwd, exp)

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
                                cwd=cwd or ws.path, expose=[real(e) for e in expose])
        full = self.command(ws, argv, limits, cwd, expose)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        namespaced = self.impl.namespaced
        popen_kw: dict[str, object] = {}
        if ws.uid is not None and not namespaced:  # namespaced mechanisms drop the uid themselves
            popen_kw.update(user=ws.uid, group=ws.gid, extra_groups=[])
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                full, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=str(ws.path) if namespaced else str(cwd or ws.path),
                env=self.environment(ws, env), start_new_session=True, close_fds=True, **popen_kw,  # type: ignore[arg-type]
            )
        except OSError as exc:
            return ExecResult(list(argv), None, b"", b"", 0.0, self.mechanism.value, spawn_error=str(exc))
        out, err, timed_out, exceeded = communicate(proc, data, start + limits.wall_s, limits.max_output_bytes, ws.uid)
        wall = time.monotonic() - start
        rc = proc.returncode
        sig = None
        if rc is not None and rc < 0:
            sig = -rc
        elif rc is not None and rc > 128 and namespaced and rc - 128 < 65:
            sig = rc - 128  # bwrap/unshare report a signalled child as 128+N
        if ws.uid is not None and (timed_out or exceeded or not namespaced):
            kill_uid(ws.uid)  # daemons the code left behind (host/container mode has no PID namespace)
        return ExecResult(list(argv), rc, out, err, wall, self.mechanism.value, timed_out=timed_out,
                          output_exceeded=exceeded, signal=sig)
