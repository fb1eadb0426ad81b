"""``GET /api/v1/runs/{run_id}/logs?lines=200``: the tail of the run's own log, ``runs/<id>/logs/train.log``
under the gateway's HALO_HOME (written by the trainers, :mod:`halo_training.runlog`). A 400 for a bad id or
``lines`` outside 1..5000, a 404 when the run directory or its log does not exist (yet)."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from halo_gateway.core.runlogs import MAX_LINES, run_log_tail

router = APIRouter(prefix="/api/v1/runs", tags=["runs"])


class RunLogTail(BaseModel):
    run_id: str = Field(description="The run.")
    path: str = Field(description="The log file on the gateway's host (HALO_HOME/runs/<id>/logs/train.log).")
    lines: list[str] = Field(description="The log's last lines, oldest first, without line ends.")
    size_bytes: int = Field(description="The log file's size in bytes.")


@router.get("/{run_id}/logs", response_model=RunLogTail)
async def run_logs(run_id: str, request: Request,
                   lines: int = Query(200, ge=1, le=MAX_LINES, description="How many lines from the end.")) -> RunLogTail:
    """The last ``lines`` lines of the run's ``logs/train.log`` (timestamped; INFO and up from the trainer)."""
    tail = await anyio.to_thread.run_sync(run_log_tail, request.app.state.settings.paths, run_id, lines)
    return RunLogTail(run_id=run_id, path=str(tail.path), lines=tail.lines, size_bytes=tail.size_bytes)
