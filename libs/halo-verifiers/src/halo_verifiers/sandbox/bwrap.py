"""The ``bwrap`` mechanism (bubblewrap, Linux): new network, PID, IPC, UTS (and user, when not root)
namespaces, the filesystem of :meth:`FilesystemView.ops <halo_verifiers.sandbox.view.FilesystemView.ops>`,
a fresh read-only ``/dev`` and ``/proc``; as root the command then drops to the workspace's private
uid with ``setpriv``. The warm agents (agent_client.py) start their sandbox with :meth:`BwrapLauncher.prefix`."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from halo_verifiers.sandbox.base import Mechanism, SandboxUnavailable, is_root
from halo_verifiers.sandbox.launcher import Launcher

if TYPE_CHECKING:
    from halo_verifiers.sandbox.runner import Workspace


def setpriv_argv(setpriv: str, uid: int | None, gid: int | None) -> list[str]:
    """Drop to ``uid``/``gid`` with no groups, capabilities or new privileges, then exec the rest."""
    return [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--no-new-privs", "--inh-caps=-all",
            "--bounding-set=-all", "--"]


class BwrapLauncher(Launcher):
    mechanism = Mechanism.BWRAP
    tool = "bwrap"
    system = "Linux"
    namespaced = True

    def check(self) -> None:
        super().check()
        if self.sandbox.drop_uid and not shutil.which(self.sandbox.tools["setpriv"]):
            raise SandboxUnavailable("setpriv (util-linux) not found")

    def isolation(self) -> list[str]:
        return ["network", "pid", "ipc", "uts", "filesystem-readonly", "private-workdir"]

    def prefix(self, bind: Path, cwd: Path, expose: Sequence[Path], uid: int | None = None,
               gid: int | None = None) -> list[str]:
        """bwrap with every namespace and the sandbox's filesystem view (``bind`` the only writable
        directory) for a command running as ``uid``/``gid``; the command follows."""
        a = [self.sandbox.tools["bwrap"], "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
             "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
        if not is_root():
            a += ["--unshare-user", "--cap-drop", "ALL"]
        a += ["--dev", "/dev", "--proc", "/proc"]
        ops = self.sandbox.fs.ops(bind, expose, uid, gid)
        for op in ops:
            kind = op[0]
            if kind == "dir":
                a += ["--perms", "0755", "--dir", op[1]]
            elif kind == "symlink":
                a += ["--symlink", op[1], op[2]]
            elif kind == "tmpfs":
                a += ["--tmpfs", op[1]]
            elif kind == "ro":
                a += ["--ro-bind", op[1], op[2]]
            else:
                a += ["--bind", op[1], op[2]]
        for op in ops:
            if op[0] == "tmpfs":
                a += ["--remount-ro", op[1]]
        # The root is bwrap's own tmpfs: read-only too, or the code could create files in it.
        return a + ["--remount-ro", "/", "--remount-ro", "/dev", "--chdir", str(cwd), "--"]

    def wrap(self, ws: Workspace, argv: Sequence[str], cwd: Path, expose: list[Path]) -> list[str]:
        a = self.prefix(ws.path, cwd, expose, ws.uid, ws.gid)
        if ws.uid is not None:
            a += setpriv_argv(self.sandbox.tools["setpriv"], ws.uid, ws.gid)
        return a + list(argv)
