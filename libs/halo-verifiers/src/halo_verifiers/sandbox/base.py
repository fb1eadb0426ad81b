"""Shared pieces of the sandbox package: the mechanism names, the fail-closed error, the launch
scripts in ``core/_launch`` and small path helpers."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from halo_common.errors import Unavailable

_LAUNCH_DIR = Path(__file__).resolve().parent.parent / "_launch"
NSINIT = _LAUNCH_DIR / "nsinit.py"
AGENT = _LAUNCH_DIR / "agent.py"
PYZYGOTE = _LAUNCH_DIR / "pyzygote.py"
HALO_EXEC_C = _LAUNCH_DIR / "halo_exec.c"
LIMITS_LAUNCHER = _LAUNCH_DIR / "limits.py"


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


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def real(p: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(p))))


def under(p: Path, root: Path) -> bool:
    return p == root or root in p.parents


def top_level(paths: object) -> list[Path]:
    """The paths that are not inside another one of them (a nested bind would be redundant)."""
    out: list[Path] = []
    for p in sorted(set(paths), key=lambda p: len(p.parts)):  # type: ignore[call-overload]
        if not any(under(p, q) for q in out):
            out.append(p)
    return out
