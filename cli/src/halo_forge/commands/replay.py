"""``halo-forge replay RUN``: print the exact launch command of a run and a field-by-field drift
report of this machine against the run's replay manifest; ``--launch`` runs the command again,
refusing while anything drifted unless ``--force``.

Drift is checked here, where the relaunch happens: package versions (installed distributions,
``absent`` when not installed), the backend (``halo_common.backend.detect_backend``), and each local
dataset's sha256 and size (the DatasetFingerprint convention: file bytes; a directory as sorted
``<relpath> <sha256>`` lines). Hub datasets and the platform string are reported, not judged.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import typer
from halo_common.errors import Conflict, Unprocessable
from halo_schemas.registry import DriftItem, DriftReport, ReplayInfo, ReplayManifest
from rich.console import Console
from rich.table import Table

from halo_forge.client import GatewayClient

console = Console()
_CHUNK = 1 << 20


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(path: Path) -> tuple[str, int]:
    """(sha256, size) of a dataset file or directory, per the DatasetFingerprint convention."""
    if path.is_file():
        return _sha256_file(path), path.stat().st_size
    files = sorted(p for p in path.rglob("*") if p.is_file())
    lines = "".join(f"{p.relative_to(path).as_posix()} {_sha256_file(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest(), sum(p.stat().st_size for p in files)


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _backend() -> str:
    from halo_common.backend import detect_backend

    return str(detect_backend())


def drift_report(manifest: ReplayManifest, run_id: str) -> DriftReport:
    """Compare ``manifest`` with this machine, field by field."""
    items: list[DriftItem] = []
    for name, version in sorted(manifest.packages.items()):
        cur = _installed(name) or "absent"
        items.append(DriftItem(field=f"package:{name}", recorded=version, current=cur,
                               status="ok" if cur == version else "drift"))
    cur_backend = _backend()
    items.append(DriftItem(field="backend", recorded=manifest.backend, current=cur_backend,
                           status="ok" if cur_backend == manifest.backend else "drift"))
    base = Path(manifest.cwd) if manifest.cwd else Path.cwd()
    for ds in manifest.datasets:
        recorded = f"sha256 {ds.sha256[:12]}… {ds.size_bytes} B"
        if ds.kind != "file":  # a hub id: its content cannot be checked offline
            items.append(DriftItem(field=f"dataset:{ds.location}", recorded=recorded, current="not checked (hub)",
                                   status="info"))
            continue
        path = Path(ds.location).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.exists():
            items.append(DriftItem(field=f"dataset:{ds.location}", recorded=recorded, current=None, status="drift"))
            continue
        sha, size = fingerprint(path)
        items.append(DriftItem(field=f"dataset:{ds.location}", recorded=recorded,
                               current=f"sha256 {sha[:12]}… {size} B",
                               status="ok" if (sha, size) == (ds.sha256, ds.size_bytes) else "drift"))
    if manifest.python:
        cur = platform.python_version()
        same_minor = cur.split(".")[:2] == manifest.python.split(".")[:2]
        items.append(DriftItem(field="python", recorded=manifest.python, current=cur,
                               status="ok" if cur == manifest.python else "info" if same_minor else "drift"))
    if manifest.platform:
        cur = platform.platform()
        items.append(DriftItem(field="platform", recorded=manifest.platform, current=cur,
                               status="ok" if cur == manifest.platform else "info"))
    return DriftReport(run_id=run_id, items=items, drifted=any(i.status == "drift" for i in items))


def replay(
    run_id: str = typer.Argument(..., help="Run id."),
    launch: bool = typer.Option(False, "--launch", help="Run the launch command now."),
    force: bool = typer.Option(False, "--force", help="With --launch: launch even though something drifted."),
    as_json: bool = typer.Option(False, "--json", help="Print manifest, command and drift report as JSON."),
) -> None:
    """Print how to launch RUN again exactly, and what differs on this machine since it ran."""
    info = ReplayInfo.model_validate(GatewayClient.from_env().get(f"/api/v1/runs/{run_id}/replay"))
    m = info.manifest
    report = drift_report(m, run_id)
    if as_json:
        print(f'{{"replay": {info.model_dump_json()}, "drift": {report.model_dump_json()}}}')
    else:
        console.print("[bold]launch command[/]")
        console.print(info.command, markup=False, highlight=False, soft_wrap=True)
        if m.seeds:
            console.print("[bold]seeds[/]: " + ", ".join(f"{k}={v}" for k, v in sorted(m.seeds.items())))
        table = Table(title=f"drift since {m.created_at:%Y-%m-%d %H:%M} UTC" if m.created_at else "drift report")
        for col in ("field", "recorded", "now", "status"):
            table.add_column(col, overflow="fold")
        style = {"ok": "green", "drift": "bold red", "info": "yellow"}
        for it in report.items:
            table.add_row(it.field, it.recorded or "-", it.current or "[red]missing[/]",
                          f"[{style[it.status]}]{it.status}[/]")
        console.print(table)
        n = sum(i.status == "drift" for i in report.items)
        console.print("[green]no drift[/]" if not n else f"[bold red]{n} field(s) drifted[/]")
    if not launch:
        return
    if report.drifted and not force:
        fields = ", ".join(i.field for i in report.items if i.status == "drift")
        raise Conflict(f"refusing to relaunch {run_id}: drift in {fields}; fix it or pass --force", param="force")
    cwd = m.cwd if m.cwd and Path(m.cwd).is_dir() else None
    if m.cwd and cwd is None:
        raise Unprocessable(f"the recorded working directory {m.cwd} does not exist here", param="cwd")
    console.print(f"[bold]relaunching[/] {run_id}{' despite drift' if report.drifted else ''}")
    try:
        code = subprocess.run(m.argv, cwd=cwd, env={**os.environ, **m.env}).returncode
    except FileNotFoundError:
        raise Unprocessable(f"cannot launch: {m.argv[0]!r} is not installed here", param="argv") from None
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("replay")(replay)
