"""Resource limits of one sandboxed command and how they are applied (``prlimit``, or the tiny
``_launch/limits.py`` launcher where prlimit is missing)::

    SandboxLimits(wall_s=2, memory_bytes=512 * MiB)     # RUN_LIMITS / COMPILE_LIMITS are the defaults
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
from dataclasses import dataclass, replace

from halo_verifiers.sandbox.base import LIMITS_LAUNCHER, is_root
from halo_verifiers.sandbox.uids import processes_of_uid

MiB = 1024 * 1024
GiB = 1024 * MiB


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



def rlimit_argv(limits: SandboxLimits, nproc: int, prlimit: str | None) -> list[str]:
    """The argv prefix that applies ``limits`` (RLIMIT_NPROC = ``nproc``) to the command after it."""
    cpu = max(1, math.ceil(limits.cpu_s))
    if prlimit:
        return [prlimit, f"--as={limits.memory_bytes}", f"--cpu={cpu}:{cpu + 1}", f"--nproc={nproc}",
                f"--fsize={limits.max_file_bytes}", f"--nofile={limits.max_open_files}", "--core=0", "--"]
    return [sys.executable, "-I", "-S", str(LIMITS_LAUNCHER), "--as", str(limits.memory_bytes), "--cpu",
            str(cpu), "--nproc", str(nproc), "--fsize", str(limits.max_file_bytes), "--nofile",
            str(limits.max_open_files), "--"]


def nproc_limit(limits: SandboxLimits, private_uid: bool) -> int:
    """RLIMIT_NPROC for a command: ``max_processes``, plus what this uid already runs when the
    command shares the service's uid (the kernel counts every thread of the uid)."""
    if private_uid or is_root():
        # A private uid starts with no processes. (As root without one, RLIMIT_NPROC is ignored
        # by the kernel anyway: the PID namespace and the kill-on-exit carry the load.)
        return limits.max_processes
    if platform.system() != "Linux":
        return 4096
    tasks = 0
    for pid in processes_of_uid(os.getuid()):
        with contextlib.suppress(OSError):
            tasks += len(os.listdir(f"/proc/{pid}/task"))
    return tasks + limits.max_processes
