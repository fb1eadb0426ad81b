"""``halo-forge jobs list|show|cancel|follow``: the training jobs known to the stack."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from halo_forge.client import GatewayClient

console = Console()
jobs_app = typer.Typer(help="List, inspect, follow and cancel jobs.", no_args_is_help=True)

_STATE_COLOURS = {"queued": "cyan", "running": "blue", "succeeded": "green", "failed": "red", "cancelled": "yellow"}


def _state(s: str, cancel_requested: bool = False) -> str:
    text = f"[{_STATE_COLOURS.get(s, 'white')}]{s}[/]"
    return text + (" [yellow](cancel requested)[/]" if cancel_requested and s in ("queued", "running") else "")


@jobs_app.command("list")
def list_jobs(
    state: str = typer.Option(None, "--state", help="Only queued | running | succeeded | failed | cancelled."),
    job_type: str = typer.Option(None, "--type", help="Only this job type (sft, dpo, orpo, rm)."),
    limit: int = typer.Option(50, "--limit", help="At most this many."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Jobs, newest first."""
    data = GatewayClient.from_env().get("/api/v1/jobs", state=state, job_type=job_type, limit=limit)
    jobs: list[dict[str, Any]] = data["jobs"]
    if as_json:
        print(json.dumps(jobs, indent=2))
        return
    table = Table(title=f"{len(jobs)} job(s)")
    for col in ("job", "type", "state", "step", "attempt", "run", "created", "error"):
        table.add_column(col, overflow="fold")
    for j in jobs:
        step = f"{j.get('step') or 0}/{j.get('total_steps') or '?'}" if j.get("step") is not None or j.get("total_steps") else ""
        table.add_row(j["job_id"], j["job_type"], _state(j["state"], j.get("cancel_requested", False)), step,
                      str(j.get("attempt", 0)), j["run_id"], (j.get("created_at") or "")[:19].replace("T", " "),
                      j.get("error") or "")
    console.print(table)


def _finished_event(client: GatewayClient, run_id: str) -> dict[str, Any] | None:
    last = None
    for line in client.stream_lines(f"/api/v1/runs/{run_id}/events", follow="false"):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("type") == "finished":
            last = event.get("message")
    return last


@jobs_app.command("show")
def show_job(job_id: str = typer.Argument(..., help="Job id (job-…)."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """A job's status and, once it ended, its training summary."""
    client = GatewayClient.from_env()
    status = client.get(f"/api/v1/jobs/{job_id}")
    finished = _finished_event(client, status["run_id"]) if status["state"] in ("succeeded", "failed", "cancelled") else None
    if as_json:
        print(json.dumps({"status": status, "finished": finished}, indent=2))
        return
    table = Table(title=f"job {job_id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key in ("run_id", "job_type", "state", "step", "total_steps", "attempt", "worker", "error", "created_at",
                "updated_at", "heartbeat_at"):
        value = status.get(key)
        if value is not None:
            table.add_row(key, _state(value, status.get("cancel_requested", False)) if key == "state" else str(value))
    console.print(table)
    if finished:
        from halo_forge.commands.train import print_summary

        print_summary(finished)


@jobs_app.command("cancel")
def cancel_job(job_id: str = typer.Argument(..., help="Job id (job-…).")) -> None:
    """Stop a job: a running one stops after its current step (its checkpoints stay); a queued one never starts."""
    status = GatewayClient.from_env().post(f"/api/v1/jobs/{job_id}/cancel")
    if status["state"] in ("succeeded", "failed", "cancelled"):
        console.print(f"job {job_id} already {_state(status['state'])}")
    else:
        console.print(f"[yellow]cancel requested[/] for {job_id} ({status['state']})")


@jobs_app.command("follow")
def follow_job(job_id: str = typer.Argument(..., help="Job id (job-…).")) -> None:
    """Attach to a job's live progress (history first) until it ends."""
    from halo_common.errors import HaloError

    from halo_forge.commands.train import follow_run

    client = GatewayClient.from_env()
    status = client.get(f"/api/v1/jobs/{job_id}")
    final = follow_run(client, status["run_id"], job_id=job_id, total=status.get("total_steps"))
    if final.get("state") != "succeeded":
        raise HaloError(f"job {job_id} {final.get('state')}: {final.get('error') or 'no reason given'}")


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
