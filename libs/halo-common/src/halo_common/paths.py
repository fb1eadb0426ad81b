"""The HALO_HOME tree (docs/architecture.md, "A run on disk"). Every path a service writes is derived here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from halo_common.ids import validate_id

#: Written by the registry into ``runs/<run_id>/`` of every run imported from a bundle
#: (source machine, bundle sha256, imported_at): the run's files are data from elsewhere.
IMPORTED_MARKER = "imported.json"


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

    @property
    def auth_dir(self) -> Path:
        """API tokens (mode 0700): ``tokens.json`` (hashes only) and the local CLI's own token."""
        return self.home / "auth"

    @property
    def tokens_file(self) -> Path:
        """The gateway's token store: SHA-256 hashes, names, hints; never a plaintext token."""
        return self.auth_dir / "tokens.json"

    @property
    def cli_token_file(self) -> Path:
        """Plaintext of the ``cli`` token (mode 0600) that the local CLI sends to the local stack."""
        return self.auth_dir / "cli-token"

    @property
    def nats_auth_file(self) -> Path:
        """User and password of the embedded nats-server (JSON, mode 0600), made by ``halo-forge up``."""
        return self.auth_dir / "nats.json"

    @property
    def nats_config_file(self) -> Path:
        """The embedded nats-server's config (mode 0600): its ``authorization`` block."""
        return self.auth_dir / "nats-server.conf"

    @property
    def incoming_dir(self) -> Path:
        """Uploads and bundle staging (``HALO_HOME/incoming``): foreign data, never trusted code."""
        return self.home / "incoming"

    def run_dir(self, run_id: str) -> Path:
        """``runs/<run_id>``; raises :class:`~halo_common.ids.InvalidId` (a ``BadRequest`` and a
        ``ValueError``) unless ``run_id`` matches :data:`~halo_common.ids.ID_PATTERN`."""
        return self.runs_dir / validate_id(run_id, "run_id")

    def ensure(self) -> HaloPaths:
        for d in (self.home, self.nats_dir, self.runs_dir, self.verifiers_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self


def is_imported(path: Path, paths: HaloPaths) -> bool:
    """True when ``path`` lies under ``HALO_HOME/incoming/`` or inside a run directory that holds
    the :data:`IMPORTED_MARKER` (a run imported from a bundle): files there came from another
    machine, so e.g. ``trust_remote_code`` must be refused for a model or adapter there.

    Both the path as given and its fully resolved form are judged (a symlink elsewhere that points
    into an imported run counts; so does an imported run reached through a symlinked HALO_HOME)."""
    given = Path(os.path.abspath(Path(path).expanduser()))
    candidates = {given, given.resolve()}
    homes = {Path(os.path.abspath(paths.home)), paths.home.resolve()}
    for p in candidates:
        for home in homes:
            if p.is_relative_to(home / "incoming"):
                return True
            runs = home / "runs"
            if p != runs and p.is_relative_to(runs) and (runs / p.relative_to(runs).parts[0] / IMPORTED_MARKER).is_file():
                return True
    return False
