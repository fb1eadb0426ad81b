"""Reproducibility: the replay manifest (``HALO_HOME/runs/<run_id>/replay.json``), how the registry serves it,
and the drift report ``halo-forge replay`` prints.

A trainer writes the manifest with ``path.write_text(manifest.model_dump_json(indent=2))``; the registry,
bundles and ``halo-forge replay`` read it back with ``ReplayManifest.model_validate_json``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from halo_schemas.base import Message


class DatasetFingerprint(Message):
    """A dataset a run read, as trainer-torch records it. ``sha256`` is of the file's bytes (for a
    local directory, of the UTF-8 text made of one ``<relative posix path> <file sha256>\\n`` line
    per file, sorted by path)."""

    location: str = Field(description="Path (or hub id) as the trainer read it.")
    sha256: str = Field(description="Content hash (see class doc for directories).")
    size_bytes: int = Field(ge=0, description="Total size in bytes.")
    records: int | None = Field(default=None, description="Records read from it.")
    kind: str = Field(default="file", description="file (a local path, checked for drift) or hub (a hub dataset id).")


class ReplayManifest(Message):
    """``replay.json`` in a run directory: everything needed to launch the run again exactly.

    The fields are those trainer-torch's ``write_replay`` writes (extra fields are kept by the
    trainer and ignored here). The registry bundles and serves it; ``halo-forge replay`` prints
    ``argv`` and a drift report of ``packages``/``backend``/``datasets`` against the machine."""

    schema_id = "halo.run.replay-manifest.v1"

    run_id: str | None = Field(default=None, description="Run id (the run directory names it when absent).")
    method: str = Field(description="Training method / job type (sft, dpo…).")
    service: str | None = Field(default=None, description="Service that ran it.")
    spec: dict[str, Any] = Field(description="The validated job spec.")
    argv: list[str] = Field(min_length=1, description="The exact command that launches the run (argv[0] first).")
    cwd: str | None = Field(default=None, description="Working directory of the launch.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables the launch relies on.")
    seeds: dict[str, int] = Field(default_factory=dict, description="Every seed the run used (seed, data_seed…).")
    datasets: list[DatasetFingerprint] = Field(default_factory=list, description="Datasets read, with hash and size.")
    data_format: str | None = Field(default=None, description="Detected record format (chat, prompt-completion…).")
    records: dict[str, int] = Field(default_factory=dict, description="Records per split (train, eval).")
    packages: dict[str, str] = Field(default_factory=dict,
                                     description="Distribution name -> version ('absent' when not installed).")
    backend: str = Field(description="Backend the run used (cuda, rocm, mps, mlx, cpu).")
    python: str | None = Field(default=None, description="Python version (platform.python_version()).")
    platform: str | None = Field(default=None, description="platform.platform() of the machine.")
    resolved: dict[str, Any] = Field(default_factory=dict, description="The spec's 'auto' values as resolved for the backend.")
    created_at: datetime | None = Field(default=None, description="When the manifest was written (UTC), if recorded.")


class ReplayInfo(Message):
    """A run's replay manifest as served by the registry, with the launch command ready to print."""

    schema_id = "halo.rpc.run-replay.v1"

    run_id: str = Field(description="Run id.")
    manifest: ReplayManifest = Field(description="The replay manifest.")
    command: str = Field(description="Shell-quoted argv (prefixed with `cd <cwd> &&` when a cwd is recorded).")
    run_dir: str = Field(description="Run directory on the registry's machine.")


class DriftItem(Message):
    """One compared field of a replay drift report."""

    field: str = Field(description="What was compared: package:<name>, backend, dataset:<name>, python, platform.")
    recorded: str | None = Field(default=None, description="Value recorded at launch.")
    current: str | None = Field(default=None, description="Value here and now (None = missing).")
    status: Literal["ok", "drift", "info"] = Field(
        description="ok: same; drift: differs in a way that changes results; info: differs, reported only.")


class DriftReport(Message):
    """Field-by-field comparison of a replay manifest with this machine."""

    schema_id = "halo.run.replay-drift.v1"

    run_id: str = Field(description="Run id.")
    items: list[DriftItem] = Field(description="Every compared field.")
    drifted: bool = Field(description="True when any item has status drift.")
