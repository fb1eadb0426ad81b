"""``halo-forge replay RUN``: print the exact launch command of a run and a field-by-field drift
report of this machine against the run's replay manifest; ``--launch`` runs the command again,
refusing while anything drifted unless ``--force``.

The launch runs with this interpreter: a recorded ``halo-forge`` becomes ``<python> -m
halo_forge.main`` (the venv need not be on PATH), another bare program name is looked up on PATH and
then in this interpreter's scripts directory. ``--set key=value`` is passed on to a ``halo-forge
train`` launch (any spec field).

A run imported from a bundle (``imported.json`` in its run directory) recorded the *source
machine's* paths. Every path in its spec and argv is listed with where it comes from: a file that
came in the bundle (e.g. ``--config <source>/runs/<id>/spec.json``, the adapter) is remapped to its
copy in the local run directory; a path given with ``--set`` is used as given; any other is a
source-machine path, and ``--launch`` refuses naming it and the ``--set key=PATH`` that supplies it.

Drift is checked here, where the relaunch happens: package versions (installed distributions,
``absent`` when not installed), the backend (``halo_common.backend.detect_backend``), and each local
dataset's sha256 and size (the DatasetFingerprint convention: file bytes; a directory as sorted
``<relpath> <sha256>`` lines). Hub datasets and the platform string are reported, not judged.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from halo_common.errors import BadRequest, Conflict, Unprocessable
from halo_common.files import dataset_fingerprint
from halo_common.paths import IMPORTED_MARKER
from halo_schemas.replay import DriftItem, DriftReport, ReplayInfo, ReplayManifest
from rich.console import Console
from rich.table import Table

from halo_forge.client import GatewayClient

console = Console()
_CHUNK = 1 << 20


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _backend() -> str:
    from halo_common.backend import detect_backend

    return str(detect_backend())


def drift_report(manifest: ReplayManifest, run_id: str, local: dict[str, str] | None = None) -> DriftReport:
    """Compare ``manifest`` with this machine, field by field. ``local`` maps a recorded dataset
    location to the path that stands for it here (a ``--set`` for an imported run's data)."""
    local = local or {}
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
        path = Path(local.get(ds.location, ds.location)).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.exists():
            items.append(DriftItem(field=f"dataset:{ds.location}", recorded=recorded, current=None, status="drift"))
            continue
        sha, size = dataset_fingerprint(path)
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


# ---- launching -------------------------------------------------------------------------------
def resolve_argv(argv: list[str]) -> list[str]:
    """``argv`` as this machine can run it. ``halo-forge`` is this very CLI, so it runs as
    ``<this python> -m halo_forge.main`` (no PATH needed); another bare name is looked up on PATH,
    then in this interpreter's scripts directory (a venv's ``bin/`` when it is not on PATH)."""
    prog = argv[0]
    if Path(prog).name == "halo-forge" and (os.sep not in prog or not Path(prog).exists()):
        return [sys.executable, "-m", "halo_forge.main", *argv[1:]]
    if os.sep in prog or shutil.which(prog):
        return list(argv)
    for scripts in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(scripts) / prog
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate), *argv[1:]]
    return list(argv)


@dataclass(frozen=True)
class SourcePath:
    """A path the imported run recorded on its source machine, and what stands for it here."""

    key: str  # spec key (data.train), or argv[i] / cwd
    recorded: str
    local: str | None  # None: nothing here stands for it
    how: str  # bundled (remapped into the run dir), supplied (--set), present (same path here), missing


def read_marker(run_dir: str) -> dict[str, Any] | None:
    """The run directory's imported.json (halo_common.paths.IMPORTED_MARKER), or None: a local run,
    or a run directory this machine cannot read."""
    try:
        data = json.loads((Path(run_dir) / IMPORTED_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else {}


def _flatten(spec: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(spec, dict):
        out: dict[str, Any] = {}
        for k, v in spec.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: spec} if prefix else {}


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "~", "./", "../")) or (len(value) > 2 and value[1] == ":" and value[2] in "\\/")


def _under(value: str, root: str) -> str | None:
    """``value`` relative to ``root`` (a POSIX path of the source machine), or None."""
    root = root.rstrip("/")
    if root and value.startswith(root + "/"):
        rel = value[len(root) + 1:]
        if rel and ".." not in rel.split("/"):
            return rel
    return None


def parse_sets(sets: list[str]) -> dict[str, str]:
    """``--set key=value`` pairs (the value as typed; the train command parses it)."""
    out: dict[str, str] = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise BadRequest(f"--set expects key=value, got {item!r}", param="set")
        out[key.strip()] = value
    return out


def source_paths(manifest: ReplayManifest, run_dir: str, marker: dict[str, Any], sets: dict[str, str]) -> list[SourcePath]:
    """Every path of an imported run's spec, argv and cwd that was recorded on the source machine:
    a file of the source run directory that came in the bundle is remapped to its local copy, a
    key given with ``--set`` is supplied, anything else is missing here."""
    source_dir = str(marker.get("source_run_dir") or "")
    datasets = {d.location for d in manifest.datasets if d.kind == "file"}

    base = Path(manifest.cwd) if manifest.cwd and Path(manifest.cwd).is_dir() else Path.cwd()

    def judge(key: str, value: str) -> SourcePath:
        if key in sets:
            return SourcePath(key, value, sets[key], "supplied")
        rel = _under(value, source_dir)
        if rel is not None and (Path(run_dir) / rel).exists():
            return SourcePath(key, value, str(Path(run_dir) / rel), "bundled")
        if rel is None and (base / Path(value).expanduser()).exists():
            # The same path exists here; a dataset's content is still judged by the drift report.
            return SourcePath(key, value, str(base / Path(value).expanduser()), "present")
        return SourcePath(key, value, None, "missing")

    out = [judge(k, v) for k, v in sorted(_flatten(manifest.spec).items())
           if isinstance(v, str) and (v in datasets or _looks_like_path(v) or _under(v, source_dir) is not None)]
    out += [judge(f"argv[{i}]", a) for i, a in enumerate(manifest.argv)
            if i > 0 and (_looks_like_path(a) or _under(a, source_dir) is not None)]
    if manifest.cwd:
        out.append(SourcePath("cwd", manifest.cwd, manifest.cwd if Path(manifest.cwd).is_dir() else None,
                              "present" if Path(manifest.cwd).is_dir() else "missing"))
    return out


def launch_argv(manifest: ReplayManifest, paths: list[SourcePath], sets: dict[str, str]) -> list[str]:
    """The argv to run here: remapped argv entries, then ``--set`` for every remapped spec key and
    every key the user supplied (only a ``halo-forge train`` launch takes ``--set``)."""
    argv = list(manifest.argv)
    extra: dict[str, str] = {}
    for sp in paths:
        if sp.key.startswith("argv[") and sp.local is not None:
            argv[int(sp.key[5:-1])] = sp.local
        elif sp.how == "bundled" and sp.key != "cwd":
            extra[sp.key] = sp.local or ""
    extra.update(sets)
    if extra:
        if not (Path(argv[0]).name == "halo-forge" and len(argv) > 1 and argv[1] == "train"):
            raise BadRequest(f"--set applies to a `halo-forge train` launch; this run was launched with {argv[0]!r}",
                             param="set")
        for key, value in extra.items():
            argv += ["--set", f"{key}={value}"]
    return resolve_argv(argv)


def replay(
    run_id: str = typer.Argument(..., help="Run id."),
    launch: bool = typer.Option(False, "--launch", help="Run the launch command now."),
    force: bool = typer.Option(False, "--force", help="With --launch: launch even though something drifted."),
    sets: list[str] = typer.Option(None, "--set", help="With a `halo-forge train` launch: override a spec field, e.g. "
                                   "--set data.train=PATH for an imported run's data (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print manifest, command and drift report as JSON."),
) -> None:
    """Print how to launch RUN again exactly, and what differs on this machine since it ran."""
    info = ReplayInfo.model_validate(GatewayClient.from_env().get(f"/api/v1/runs/{run_id}/replay"))
    m = info.manifest
    overrides = parse_sets(sets or [])
    marker = read_marker(info.run_dir)
    paths = source_paths(m, info.run_dir, marker, overrides) if marker is not None else []
    datasets_here = {sp.recorded: sp.local for sp in paths if sp.local is not None and sp.key != "cwd"}
    report = drift_report(m, run_id, datasets_here)
    if as_json:
        sources = [sp.__dict__ for sp in paths]
        print(f'{{"replay": {info.model_dump_json()}, "drift": {report.model_dump_json()}, '
              f'"imported": {json.dumps(marker)}, "source_paths": {json.dumps(sources)}}}')
    else:
        console.print("[bold]launch command[/]")
        console.print(info.command, markup=False, highlight=False, soft_wrap=True)
        if m.seeds:
            console.print("[bold]seeds[/]: " + ", ".join(f"{k}={v}" for k, v in sorted(m.seeds.items())))
        if marker is not None:
            console.print(f"[bold yellow]imported run[/]: recorded on {marker.get('source') or 'another machine'} "
                          f"(run directory there: {marker.get('source_run_dir') or 'unknown'}); its paths are that "
                          "machine's")
            t = Table(title="paths from the source machine")
            for col in ("field", "recorded there", "here", "how"):
                t.add_column(col, overflow="fold")
            style = {"bundled": "green", "supplied": "green", "present": "yellow", "missing": "bold red"}
            for sp in paths:
                t.add_row(sp.key, sp.recorded, sp.local or "-", f"[{style[sp.how]}]{sp.how}[/]")
            console.print(t)
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
    missing = [sp for sp in paths if sp.how == "missing"]
    if missing:
        hints = "; ".join(f"{sp.key} = {sp.recorded!r}" + (f" (supply it with --set {sp.key}=PATH)"
                                                           if not sp.key.startswith(("argv[", "cwd")) else "")
                          for sp in missing)
        raise Unprocessable(f"cannot relaunch imported run {run_id}: these paths are on the source machine "
                            f"({(marker or {}).get('source') or 'unknown'}) and not here: {hints}", param="set")
    if report.drifted and not force:
        fields = ", ".join(i.field for i in report.items if i.status == "drift")
        raise Conflict(f"refusing to relaunch {run_id}: drift in {fields}; fix it or pass --force", param="force")
    cwd = m.cwd if m.cwd and Path(m.cwd).is_dir() else None
    if m.cwd and cwd is None:
        raise Unprocessable(f"the recorded working directory {m.cwd} does not exist here", param="cwd")
    argv = launch_argv(m, paths, overrides)
    console.print(f"[bold]relaunching[/] {run_id}{' despite drift' if report.drifted else ''}:")
    console.print(shlex.join(argv), markup=False, highlight=False, soft_wrap=True)
    try:
        code = subprocess.run(argv, cwd=cwd, env={**os.environ, **m.env}).returncode
    except FileNotFoundError:
        raise Unprocessable(f"cannot launch: {argv[0]!r} is not installed here (not on PATH nor in "
                            f"{sysconfig.get_path('scripts')})", param="argv") from None
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("replay")(replay)
