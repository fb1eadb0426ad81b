"""The HALO_HOME tree (DESIGN.md §5). Every path a service writes is derived here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_home() -> Path:
    """``$HALO_HOME`` or ``~/.halo-forge``."""
    return Path(os.environ.get("HALO_HOME") or Path.home() / ".halo-forge").expanduser()


@dataclass(frozen=True)
class HaloPaths:
    """Paths under one HALO_HOME. ``HaloPaths(home).run_dir(run_id)`` etc.; call ``ensure()`` once."""

    home: Path

    @classmethod
    def from_env(cls) -> HaloPaths:
        return cls(default_home())

    @property
    def db_path(self) -> Path:
        return self.home / "forge.db"

    @property
    def nats_dir(self) -> Path:
        return self.home / "nats"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def verifiers_dir(self) -> Path:
        return self.home / "verifiers"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def state_file(self) -> Path:
        """State of the stack started by ``halo-forge up``."""
        return self.home / "stack.json"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def run_dir(self, run_id: str) -> Path:
        if "/" in run_id or run_id.startswith("."):
            raise ValueError(f"invalid run id {run_id!r}")
        return self.runs_dir / run_id

    def ensure(self) -> HaloPaths:
        for d in (self.home, self.nats_dir, self.runs_dir, self.verifiers_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self
