"""The ``sandbox-exec`` mechanism (macOS Seatbelt): a profile denying network, writes outside the
workspace and reads of the hidden directories (home directories, HALO_HOME, temp dirs) except the
exposed toolchains and the workspace."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from halo_verifiers.sandbox.base import Mechanism
from halo_verifiers.sandbox.launcher import Launcher

if TYPE_CHECKING:
    from halo_verifiers.sandbox.runner import Workspace


class SeatbeltLauncher(Launcher):
    mechanism = Mechanism.SANDBOX_EXEC
    tool = "sandbox-exec"
    system = "Darwin"

    def isolation(self) -> list[str]:
        return ["network", "filesystem-readonly", "private-workdir"]

    def profile(self, ws: Workspace) -> str:
        """The Seatbelt profile for ``ws`` (later rules win in SBPL)."""
        fs = self.sandbox.fs
        return (
            "(version 1)(allow default)(deny network*)(deny file-write*)"
            + "".join(f'(deny file-read* (subpath "{h}"))' for h in fs.hidden_all)
            + '(deny file-read* (literal "/private/etc/master.passwd"))'
            + "".join(f'(allow file-read* (subpath "{e}"))' for e in fs.expose)
            + f'(allow file-read* (subpath "{ws.path}"))'
            + f'(allow file-write* (subpath "{ws.path}"))'
            '(allow file-write* (literal "/dev/null") (literal "/dev/zero") (literal "/dev/tty"))'
        )

    def wrap(self, ws: Workspace, argv: Sequence[str], cwd: Path, expose: list[Path]) -> list[str]:
        return [self.sandbox.tools["sandbox-exec"], "-p", self.profile(ws), *argv]
