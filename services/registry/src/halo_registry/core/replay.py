"""Reading a run's replay manifest (``HALO_HOME/runs/<run_id>/replay.json``) and rendering its
launch command. The drift check runs where the relaunch would: in ``halo-forge replay``."""

from __future__ import annotations

import shlex
from pathlib import Path

from halo_common.errors import NotFound, Unprocessable
from halo_schemas.base import describe_validation_error
from halo_schemas.replay import ReplayInfo, ReplayManifest
from pydantic import ValidationError

REPLAY_FILE = "replay.json"


def launch_command(manifest: ReplayManifest) -> str:
    """The shell command that relaunches the run: ``cd <cwd> && <argv…>`` (quoted)."""
    cmd = shlex.join(manifest.argv)
    return f"cd {shlex.quote(manifest.cwd)} && {cmd}" if manifest.cwd else cmd


def load_replay(run_id: str, run_dir: Path) -> ReplayInfo:
    """The replay manifest of ``run_id``; NotFound when the run has none, Unprocessable (naming the
    file and field) when it does not parse."""
    path = run_dir / REPLAY_FILE
    if not path.is_file():
        raise NotFound(f"run {run_id!r} has no replay manifest: {path} does not exist (trainers write it when a run "
                       "starts)", param="run_id")
    try:
        manifest = ReplayManifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise Unprocessable(describe_validation_error(exc, what=str(path)), param="run_id") from None
    if manifest.run_id is not None and manifest.run_id != run_id:
        raise Unprocessable(f"{path} is the manifest of {manifest.run_id!r}, not {run_id!r}", param="run_id")
    return ReplayInfo(run_id=run_id, manifest=manifest, command=launch_command(manifest), run_dir=str(run_dir))
