"""The base class of the mechanisms: how one mechanism wraps a command (see bwrap.py, unshare.py,
seatbelt.py, host.py). A :class:`~halo_verifiers.sandbox.runner.Sandbox` holds one,
as ``sandbox.impl``; limits, uid handling and process I/O are the Sandbox's, the same for all."""

from __future__ import annotations

import platform
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from halo_verifiers.sandbox.base import Mechanism, SandboxUnavailable

if TYPE_CHECKING:
    from halo_verifiers.sandbox.runner import Sandbox, Workspace

_SYSTEM_NAMES = {"Linux": "Linux", "Darwin": "macOS"}


class Launcher:
    """One mechanism. Subclasses set the class attributes and override :meth:`wrap`."""

    mechanism: ClassVar[Mechanism]
    #: Key of ``Sandbox.tools`` that must be on PATH (None: nothing to find).
    tool: ClassVar[str | None] = None
    #: ``platform.system()`` it needs (None: any).
    system: ClassVar[str | None] = None
    #: Own mount/PID namespaces: the mechanism switches uid and directory itself, the kernel kills
    #: whatever is left when the command ends, and a signalled command exits with 128 + N.
    namespaced: ClassVar[bool] = False

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def check(self) -> None:
        """Raise :class:`SandboxUnavailable` when this mechanism cannot work here."""
        if self.tool is not None and not shutil.which(self.sandbox.tools[self.tool]):
            raise SandboxUnavailable(f"{self.sandbox.tools[self.tool]} not found")
        if self.system is not None and platform.system() != self.system:
            raise SandboxUnavailable(f"{self.mechanism} needs {_SYSTEM_NAMES.get(self.system, self.system)}")

    def isolation(self) -> list[str]:
        """What the mechanism itself isolates (the Sandbox adds limits, env, uid)."""
        return ["private-workdir"]

    def wrap(self, ws: Workspace, argv: Sequence[str], cwd: Path, expose: list[Path]) -> list[str]:
        """``argv`` wrapped to run under this mechanism in ``ws`` (after the limits prefix)."""
        return list(argv)
