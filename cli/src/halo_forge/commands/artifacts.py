"""``halo-forge artifacts list|show|rm``: what runs wrote (exports, merged models, adapters…), from the registry.

    halo-forge artifacts list --format gguf --status verified
    halo-forge artifacts show 12          # quant, sha256, parents, the round-trip verify figures
    halo-forge artifacts rm 12            # forget the row (files stay)
    halo-forge artifacts rm 12 --delete-files   # also delete them (only inside HALO_HOME)
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from halo_forge.client import GatewayClient

console = Console()
artifacts_app = typer.Typer(help="Artifacts recorded in the registry: exports, merged models, adapters.",
                            no_args_is_help=True)
_STATUS_COLOUR = {"verified": "green", "failed": "red", "unverified": "yellow"}


def _status(value: str | None) -> str:
    return f"[{_STATUS_COLOUR.get(value or '', 'white')}]{value}[/]" if value else "-"


def _size(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n:,} B"


@artifacts_app.command("list")
def list_cmd(
    kind: str = typer.Option(None, "--kind", help="export | model | adapter | checkpoint | samples"),
    fmt: str = typer.Option(None, "--format", help="hf | gguf | mlx | peft"),
    status: str = typer.Option(None, "--status", help="verified | failed | unverified"),
    run_id: str = typer.Option(None, "--run", help="Only this run's artifacts."),
    limit: int = typer.Option(50, "--limit"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Artifacts, newest first."""
    found = GatewayClient.from_env().get("/api/v1/artifacts", kind=kind, format=fmt, status=status, run_id=run_id,
                                         limit=limit)["artifacts"]
    if as_json:
        console.print_json(json.dumps(found))
        return
    t = Table(title=f"artifacts ({len(found)})")
    for col in ("id", "kind", "format", "quant", "status", "size", "run", "path"):
        t.add_column(col, overflow="fold")
    for a in found:
        t.add_row(str(a.get("id")), a["kind"], a["format"], a.get("quant") or "-", _status(a.get("status")),
                  _size(a.get("size_bytes")), a.get("run_id") or "", a["path"])
    console.print(t)


def show_artifact(a: dict[str, Any]) -> None:
    t = Table(title=f"artifact {a.get('id')}", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    details = a.get("details") or {}
    for name, value in (("kind", a["kind"]), ("format", a["format"]), ("quant", a.get("quant") or "-"),
                        ("status", _status(a.get("status"))), ("path", a["path"]), ("size", _size(a.get("size_bytes"))),
                        ("sha256", a.get("sha256") or ""), ("run", a.get("run_id") or ""),
                        ("parents", ", ".join(details.get("parents") or []) or "-"),
                        ("created", str(a.get("created_at")))):
        t.add_row(name, value)
    v = details.get("verify")
    if v:
        th = v.get("thresholds") or {}
        t.add_row("verify", f"{'passed' if v.get('passed') else '[red]FAILED[/]'} ({v.get('runtime')}, "
                            f"{v.get('prompts')} prompts, {v.get('positions')} positions)")
        t.add_row("  top-1 agreement", f"{v.get('top1_agreement', 0):.4f} (>= {th.get('min_top1')})")
        t.add_row("  KL mean (max)", f"{v.get('kl_mean', 0):.2e} ({v.get('kl_max', 0):.2e}) (<= {th.get('max_kl')})")
        t.add_row("  greedy agreement", f"{v.get('greedy_agreement', 0):.3f} (>= {th.get('min_greedy')})")
        t.add_row("  tokenizer agreement", f"{v.get('tokenizer_agreement', 0):.3f} (>= {th.get('min_tokenizer')})")
        for f in v.get("failures") or []:
            t.add_row("  failure", f"[red]{f}[/]")
    console.print(t)


@artifacts_app.command("show")
def show_cmd(artifact_id: int = typer.Argument(..., help="Artifact id (from `artifacts list`)."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """One artifact: format, quant, hash, parents and the round-trip verify figures."""
    a = GatewayClient.from_env().get(f"/api/v1/artifacts/{artifact_id}")
    if as_json:
        console.print_json(json.dumps(a))
    else:
        show_artifact(a)


@artifacts_app.command("rm")
def rm_cmd(artifact_id: int = typer.Argument(..., help="Artifact id."),
           delete_files: bool = typer.Option(False, "--delete-files", help="Also delete the files (inside HALO_HOME).")) -> None:
    """Forget an artifact (and with --delete-files, delete what it names)."""
    r = GatewayClient.from_env().delete(f"/api/v1/artifacts/{artifact_id}", keep_files=str(not delete_files).lower())
    for p in r.get("removed_paths") or []:
        console.print(f"removed {p}")
    for p in r.get("kept_paths") or []:
        console.print(f"[dim]kept {p}[/]")
    console.print(f"[green]artifact {artifact_id} forgotten[/]")


def register(app: typer.Typer) -> None:
    app.add_typer(artifacts_app, name="artifacts")
