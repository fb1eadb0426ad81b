"""Run untrusted code: no network, a private writable directory only, read-only system, limits.

Usage::

    sandbox = Sandbox.detect()                        # strongest mechanism here, or SandboxUnavailable
    with sandbox.workspace() as ws:                   # private dir (+ a private uid when root)
        ws.write("main.c", source)
        built = ws.run(["gcc", "main.c", "-o", "prog"], limits=COMPILE_LIMITS)
        ran = ws.run(["./prog"], stdin=b"1 2\\n", limits=SandboxLimits(wall_s=2))
        ran.ok, ran.stdout, ran.reason                # "timeout", "output limit", "exit code 1"…

Mechanisms, strongest first (``detect`` probes each by really running ``true`` through it):

* ``bwrap`` (bubblewrap, Linux): new network, PID, IPC and UTS namespaces; a read-only root that
  holds only the system's programs and libraries (``/usr``, ``/bin``, ``/sbin``, ``/lib*``), the few
  ``/etc`` entries the loader and compilers read (:data:`ETC_VIEW`), a synthetic ``/etc/passwd``
  and ``/etc/group`` (root, nobody and the sandbox uid), the toolchain directories (exposed
  read-only) and the workspace (the only writable directory); ``/tmp``, ``/root``, ``/home``,
  ``/run``, HALO_HOME… appear as empty read-only tmpfs; a fresh ``/dev`` (read-only) and ``/proc``.
  Nothing else of the host — the rest of ``/etc``, ``/var``, ``/opt``, other users' files — exists. As root, the command then drops to a
  private uid from a pool (``setpriv``), so RLIMIT_NPROC really applies (root ignores it) and every
  leftover process of that uid can be found and killed. ``--die-with-parent`` plus the PID
  namespace mean killing the sandbox kills everything in it.
* ``unshare`` (util-linux, Linux): the same namespaces via ``unshare``, and the same filesystem
  view built by a small init (``_launch/nsinit.py``) inside the new mount namespace (a tmpfs root
  it ``pivot_root``s into).
* ``sandbox-exec`` (macOS): a Seatbelt profile denying network, writes outside the workspace and
  reads of the hidden directories (home directories, HALO_HOME, temp dirs) except the toolchains.
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

Modules: ``runner`` (:class:`Sandbox`, :class:`Workspace`), ``view`` (the filesystem view),
``limits`` (:class:`SandboxLimits`, prlimit), ``uids`` (:class:`UidPool`, kill a uid), ``procio``
(:class:`ExecResult`, stdin/stdout/deadline handling), ``agent_client`` (warm sandboxes), and one
class per mechanism: ``bwrap``, ``unshare``, ``seatbelt`` (sandbox-exec), ``host`` (host, container),
all on ``launcher.Launcher``. Everything public is importable from here.
"""

from halo_verifiers.sandbox.base import (
    AGENT,
    HALO_EXEC_C,
    INSTALL_HINT,
    LIMITS_LAUNCHER,
    NSINIT,
    Mechanism,
    SandboxUnavailable,
)
from halo_verifiers.sandbox.launcher import Launcher
from halo_verifiers.sandbox.limits import COMPILE_LIMITS, RUN_LIMITS, GiB, MiB, SandboxLimits
from halo_verifiers.sandbox.procio import ExecResult
from halo_verifiers.sandbox.runner import MECHANISMS, Sandbox, Workspace
from halo_verifiers.sandbox.uids import UidPool, kill_uid, processes_of_uid
from halo_verifiers.sandbox.view import (
    DEFAULT_HIDE,
    DEFAULT_PATH,
    ETC_VIEW,
    SYSTEM_VIEW,
    FilesystemView,
    identity_files,
)

__all__ = [
    "AGENT", "COMPILE_LIMITS", "DEFAULT_HIDE", "DEFAULT_PATH", "ETC_VIEW", "HALO_EXEC_C", "INSTALL_HINT",
    "LIMITS_LAUNCHER", "MECHANISMS", "NSINIT", "RUN_LIMITS", "SYSTEM_VIEW", "ExecResult", "FilesystemView", "GiB",
    "Launcher", "Mechanism", "MiB", "Sandbox", "SandboxLimits", "SandboxUnavailable", "UidPool", "Workspace",
    "identity_files", "kill_uid", "processes_of_uid",
]
