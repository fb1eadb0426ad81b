"""The ``unshare`` mechanism (util-linux, Linux): the namespaces of bwrap made by ``unshare``; the
same filesystem view is built inside the new mount namespace by ``_launch/nsinit.py`` (a tmpfs
root it ``pivot_root``s into), which also drops to the private uid."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from halo_verifiers.sandbox.base import NSINIT, Mechanism, SandboxUnavailable, is_root
from halo_verifiers.sandbox.launcher import Launcher

if TYPE_CHECKING:
    from halo_verifiers.sandbox.runner import Workspace


class UnshareLauncher(Launcher):
    mechanism = Mechanism.UNSHARE
    tool = "unshare"
    system = "Linux"
    namespaced = True

    def check(self) -> None:
        super().check()
        if self.sandbox.drop_uid and not shutil.which(self.sandbox.tools["setpriv"]):
            raise SandboxUnavailable("setpriv (util-linux) not found")

    def isolation(self) -> list[str]:
        return ["network", "pid", "ipc", "uts", "filesystem-readonly", "private-workdir"]

    def wrap(self, ws: Workspace, argv: Sequence[str], cwd: Path, expose: list[Path]) -> list[str]:
        a = [self.sandbox.tools["unshare"]]
        if not is_root():
            a.append("--map-root-user")
        a += ["--net", "--pid", "--ipc", "--uts", "--mount", "--fork", "--kill-child", "--mount-proc", "--"]
        # Inside, uid 0 is this user (--map-root-user) unless the command drops to ws.uid.
        view_uid = ws.uid if ws.uid is not None else (None if is_root() else 0)
        view_gid = ws.gid if ws.gid is not None else (None if is_root() else 0)
        spec = {
            "ops": self.sandbox.fs.ops(ws.path, expose, view_uid, view_gid),
            "workdir": str(ws.path),
            "cwd": str(cwd),
            "uid": ws.uid,
            "gid": ws.gid,
            "argv": list(argv),
        }
        return a + [sys.executable, "-I", "-S", str(NSINIT), json.dumps(spec)]
