"""``halo-forge runs``: list, show, compare, tag, note, rm, bundle, import (and the eval grid).

Every command is one or two gateway calls (``/api/v1/runs…``); the registry validates input, so a
bad filter or page comes back as one red line naming the field.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import typer
from halo_common.errors import BadRequest, HaloError, NotFound, Unavailable
from rich.console import Console
from rich.table import Table
from rich.text import Text

from halo_forge.client import GatewayClient

console = Console()
runs_app = typer.Typer(help="The run database: search, inspect, compare, tag, bundle and import runs.",
                       no_args_is_help=True)

STATUS_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan", "queued": "dim"}
TRANSFER_TIMEOUT_S = 600.0


def _client(timeout: float = 30.0) -> GatewayClient:
    return GatewayClient.from_env(timeout=timeout)


def _json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _status(s: str) -> str:
    return f"[{STATUS_STYLE.get(s, 'white')}]{s}[/]"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


def _when(value: str | None) -> str:
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M") if value else "-"


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}"


def _steps(r: dict[str, Any]) -> str:
    last, total = r.get("last_step"), r.get("total_steps")
    if last is None:
        return "-"
    # Steps are counted as optimizer steps done (1-based, as trainers report them).
    return f"{last}/{total}" if total else str(last)


def _headline(r: dict[str, Any]) -> str:
    m = r.get("last_metrics") or {}
    for key in ("loss", "train_loss", "reward", "reward_mean", "eval_loss"):
        if key in m:
            return f"{key} {_num(m[key])}"
    return "-"


# ---- list / show -----------------------------------------------------------------------------
@runs_app.command("list")
def list_runs(
    status: list[str] = typer.Option(None, "--status", "-s", help="queued|running|succeeded|failed|cancelled (repeat)."),
    method: list[str] = typer.Option(None, "--method", "-m", help="sft, dpo, grpo… (repeat)."),
    model: str = typer.Option(None, "--model", help="Substring of the base model."),
    backend: list[str] = typer.Option(None, "--backend", help="cuda, rocm, mps, mlx, cpu (repeat)."),
    tag: list[str] = typer.Option(None, "--tag", "-t", help="Tag the run must carry (repeat: all of them)."),
    text: str = typer.Option(None, "--text", help="Substring of the run id or name."),
    since: str = typer.Option(None, "--since", help="Created at or after (ISO date/time, UTC)."),
    until: str = typer.Option(None, "--until", help="Created before (ISO date/time, UTC)."),
    has_eval: bool = typer.Option(None, "--has-eval/--no-eval", help="Only runs with / without evaluation results."),
    sort: str = typer.Option("-created_at", "--sort", help="Field (created_at, duration_s, method…, metric.loss); '-' = desc."),
    limit: int = typer.Option(20, "--limit", "-n", help="Page size."),
    offset: int = typer.Option(0, "--offset", help="Rows to skip."),
    facets: bool = typer.Option(False, "--facets", help="Also show counts per status, method, backend, model, tag."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw page as JSON."),
) -> None:
    """Search runs, newest first."""
    params: dict[str, Any] = {
        "status": ",".join(status) if status else None, "method": ",".join(method) if method else None,
        "model": model, "backend": ",".join(backend) if backend else None, "text": text, "since": since,
        "until": until, "has_eval": None if has_eval is None else str(has_eval).lower(), "sort": sort,
        "limit": limit, "offset": offset, "facets": "true" if facets else None,
    }
    query = [(k, v) for k, v in params.items() if v is not None] + [("tag", t) for t in tag or []]
    page = _client().request("GET", "/api/v1/runs", params=query)
    if as_json:
        _json(page)
        return
    if not page["items"]:
        console.print(f"no runs on this page ({page['total']} match)" if page["total"] else "no runs match")
        return
    table = Table(title=f"runs {page['offset'] + 1}-{page['offset'] + len(page['items'])} of {page['total']}")
    for col in ("run", "name", "method", "model", "backend", "status", "steps", "last", "duration", "tags", "created"):
        table.add_column(col, overflow="fold")
    for r in page["items"]:
        table.add_row(r["run_id"], r.get("name") or "", r["method"], r.get("base_model") or "-", r.get("backend") or "-",
                      _status(r["status"]), _steps(r), _headline(r), _duration(r.get("duration_s")),
                      " ".join([",".join(r["tags"])] + (["[magenta]eval[/]"] if r.get("has_eval") else [])).strip(),
                      _when(r["created_at"]))
    console.print(table)
    for name, counts in (page.get("facets") or {}).items():
        if counts:
            console.print(f"[bold]{name}[/]: " + ", ".join(f"{c['value']} ({c['count']})" for c in counts))


@runs_app.command("show")
def show(
    run_id: str = typer.Argument(..., help="Run id."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw detail as JSON."),
) -> None:
    """Everything about one run: spec, metrics, evaluations, artifacts, lineage, cost."""
    d = _client().get(f"/api/v1/runs/{run_id}")
    if as_json:
        _json(d)
        return
    r = d["run"]
    console.print(f"[bold]{r['run_id']}[/] {r.get('name') or ''}  {_status(r['status'])}"
                  f"{'  [dim](imported)[/]' if r.get('origin') == 'imported' else ''}")
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    for k, v in (("method", r["method"]), ("models", ", ".join(f"{k}={v}" for k, v in r["models"].items()) or "-"),
                 ("backend", r.get("backend") or "-"), ("steps", _steps(r)), ("started", _when(r.get("started_at"))),
                 ("finished", _when(r.get("finished_at"))), ("duration", _duration(r.get("duration_s"))),
                 ("tags", ", ".join(r["tags"]) or "-"), ("job", r.get("job_id") or "-"), ("run dir", d["run_dir"]),
                 ("replay", "yes (halo-forge replay)" if d["has_replay"] else "no")):
        facts.add_row(k, str(v))
    c = d["cost"]
    if c["kwh"] is not None:
        facts.add_row("energy", f"{c['kwh']:.4f} kWh ({c['source']}, avg {c['avg_watts']:.0f} W) = "
                                f"{c['cost']:.4f} {c['currency']} at {c['price_per_kwh']}/kWh")
    else:
        facts.add_row("energy", f"unknown ({c['source']})")
    if r.get("error"):
        facts.add_row("error", f"[red]{r['error']}[/]")
    console.print(facts)
    if d["notes"]:
        console.print(f"[bold]notes[/]\n{d['notes']}")
    if d["metrics"]:
        t = Table(title="metrics")
        for col in ("name", "points", "steps", "last", "min", "max"):
            t.add_column(col)
        for m in d["metrics"]:
            t.add_row(m["name"], str(m["points"]), f"{m['first_step']}..{m['last_step']}", _num(m["last_value"]),
                      _num(m["min_value"]), _num(m["max_value"]))
        console.print(t)
    if d["evals"]:
        t = Table(title="evaluations")
        for col in ("task", "metric", "value", "± stderr", "n"):
            t.add_column(col)
        for e in d["evals"]:
            t.add_row(e["task"], e["metric"], _num(e["value"]), _num(e.get("stderr")), str(e.get("num_samples") or "-"))
        console.print(t)
    if d["artifacts"]:
        t = Table(title="artifacts")
        for col in ("kind", "format", "step", "size", "path"):
            t.add_column(col, overflow="fold")
        for a in d["artifacts"]:
            size = a.get("size_bytes")
            t.add_row(a["kind"], a["format"], str(a.get("step") if a.get("step") is not None else "-"),
                      f"{size / 2**20:.1f} MiB" if size else "-", a["path"])
        console.print(t)
    for label, links, key in (("parents", d["parents"], "parent_run_id"), ("children", d["children"], "child_run_id")):
        for lk in links:
            at = ", ".join(f"{k} {lk[k]}" for k in ("step", "cycle") if lk.get(k) is not None)
            console.print(f"[bold]{label[:-1] if label == 'parents' else 'child'}[/]: {lk[key]} ({lk['relation']}"
                          f"{', at ' + at if at else ''})")
    if d["spec"]:
        console.print("[bold]spec[/]")
        console.print_json(json.dumps(d["spec"]))


# ---- compare ---------------------------------------------------------------------------------
def _short(run: dict[str, Any]) -> str:
    return run.get("name") or run["run_id"]


def render_plot(cmp: dict[str, Any], width: int, height: int, colorless: bool) -> str:
    """Overlaid curves, one panel per metric, one line per run (plotext), as a string: ANSI colours
    unless ``colorless``. Points without a finite value are left out (plotext's C core aborts on
    them); a run without a metric simply has no line in that panel."""
    import plotext as plt

    fig = plt.figure
    fig.clear()
    metrics = cmp["metrics"]
    labels = {r["run_id"]: _short(r) for r in cmp["runs"]}
    try:
        # plotext treats a 1x1 grid as "no grid" (subplot(1, 1) then fails with a TypeError): a
        # single metric is drawn on the figure itself.
        if len(metrics) > 1:
            fig.subplots(len(metrics), 1)
        for i, metric in enumerate(metrics, 1):
            panel = fig.subplot(i, 1) if len(metrics) > 1 else fig
            panel.title(metric)
            for run_id, series in cmp["series"].items():
                s = next((x for x in series if x["name"] == metric), None)
                points = [(x, y) for x, y in zip(s["steps"], s["values"], strict=False)
                          if isinstance(y, int | float) and math.isfinite(y)] if s else []
                if points:
                    xs, ys = zip(*points, strict=True)
                    panel.draw(panel.signal(list(xs), list(ys)).lines().label(labels.get(run_id, run_id)))
        fig.plot_size(width, height * len(metrics))
        return fig.build().string(colorless=colorless)
    finally:
        fig.clear()


@runs_app.command("compare")
def compare(
    run_ids: list[str] = typer.Argument(..., help="2-8 run ids."),
    metric: list[str] = typer.Option(None, "--metric", "-m", help="Metric to overlay (repeat; default: loss/reward)."),
    max_points: int = typer.Option(300, "--max-points", help="Points per curve (downsampled on the server)."),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Draw the overlaid curves."),
    width: int = typer.Option(100, "--width", help="Plot width in characters."),
    height: int = typer.Option(18, "--height", help="Height of each metric's panel."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw comparison as JSON."),
) -> None:
    """Runs side by side: summary, config diff and overlaid loss/reward curves."""
    query = [("ids", ",".join(run_ids)), ("max_points", max_points)] + [("metrics", m) for m in metric or []]
    cmp = _client().request("GET", "/api/v1/runs/compare", params=query)
    if as_json:
        _json(cmp)
        return
    runs = cmp["runs"]
    t = Table(title=f"{len(runs)} run{'s' if len(runs) != 1 else ''}")
    t.add_column("")
    for r in runs:
        t.add_column(_short(r), overflow="fold")
    rows: list[tuple[str, Sequence[str]]] = [
        ("run", [r["run_id"] for r in runs]),
        ("origin", [r.get("origin", "local") for r in runs]),
        ("status", [_status(r["status"]) for r in runs]),
        ("method", [r["method"] for r in runs]),
        ("model", [r.get("base_model") or "-" for r in runs]),
        ("steps", [_steps(r) for r in runs]),
        ("duration", [_duration(r.get("duration_s")) for r in runs]),
    ]
    names = sorted({k for r in runs for k in r["last_metrics"]})
    rows += [(f"last {n}", [_num(r["last_metrics"].get(n)) for r in runs]) for n in names]
    for label, cells in rows:
        t.add_row(label, *cells)
    console.print(t)
    if cmp["config_diff"]:
        d = Table(title=f"config diff ({len(cmp['config_diff'])} differ, {cmp['identical_keys']} identical)")
        d.add_column("key", style="bold")
        for r in runs:
            d.add_column(_short(r), overflow="fold")
        for row in cmp["config_diff"]:
            d.add_row(row["key"], *(json.dumps(row["values"][r["run_id"]]) if r["run_id"] in row["values"]
                                    else "[dim]absent[/]" for r in runs))
        console.print(d)
    else:
        console.print(f"configs identical ({cmp['identical_keys']} keys)")
    if plot and cmp["metrics"]:
        console.print(Text.from_ansi(render_plot(cmp, width, height, colorless=not console.is_terminal)))
    elif plot:
        console.print("[dim]no shared metric to plot[/]")


# ---- grid ------------------------------------------------------------------------------------
@runs_app.command("grid")
def grid(
    run_ids: list[str] = typer.Argument(None, help="Runs of the cohort (default: recent runs with evaluations)."),
    task: list[str] = typer.Option(None, "--task", help="Tasks to show (repeat)."),
    metric: str = typer.Option(None, "--metric", help="Metric to show for every task."),
    limit: int = typer.Option(50, "--limit", "-n", help="Most runs."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw grid as JSON."),
) -> None:
    """Cohort evaluation grid: runs × tasks, the best run per task in bold."""
    query: list[tuple[str, Any]] = [("limit", limit)] + [("tasks", x) for x in task or []]
    if run_ids:
        query.append(("ids", ",".join(run_ids)))
    if metric:
        query.append(("metric", metric))
    g = _client().request("GET", "/api/v1/runs/grid", params=query)
    if as_json:
        _json(g)
        return
    cells = {(c["run_id"], c["task"]): c for c in g["cells"]}
    t = Table(title="evaluation grid")
    t.add_column("run")
    for task_col in g["tasks"]:
        arrow = "↑" if task_col["higher_is_better"] else "↓"
        t.add_column(f"{task_col['task']}\n{task_col['metric']} {arrow}", justify="right")
    for r in g["runs"]:
        row = [_short(r)]
        for task_col in g["tasks"]:
            c = cells.get((r["run_id"], task_col["task"]))
            row.append("-" if c is None else f"[bold green]{_num(c['value'])}[/]" if c["best"] else _num(c["value"]))
        t.add_row(*row)
    console.print(t)


# ---- mutations -------------------------------------------------------------------------------
@runs_app.command("tag")
def tag(
    run_id: str = typer.Argument(..., help="Run id."),
    tags: list[str] = typer.Argument(None, help="Tags to add."),
    remove: list[str] = typer.Option(None, "--remove", "-r", help="Tag to remove (repeat)."),
) -> None:
    """Add (and/or remove) tags."""
    if not tags and not remove:
        raise BadRequest("give tags to add and/or --remove TAG", param="tags")
    r = _client().post(f"/api/v1/runs/{run_id}/tags", {"add": tags or [], "remove": remove or []})
    console.print(f"{r['run_id']}: tags {', '.join(r['tags']) or '(none)'}")


@runs_app.command("note")
def note(
    run_id: str = typer.Argument(..., help="Run id."),
    text: str = typer.Argument(..., help="Note text."),
    append: bool = typer.Option(False, "--append", "-a", help="Add a paragraph instead of replacing the notes."),
) -> None:
    """Set or append the run's notes."""
    _client().post(f"/api/v1/runs/{run_id}/notes", {"notes": text, "append": append})
    console.print(f"{run_id}: notes {'appended' if append else 'set'}")


@runs_app.command("rm")
def rm(
    run_id: str = typer.Argument(..., help="Run id."),
    delete_artifacts: bool = typer.Option(False, "--delete-artifacts",
                                          help="Also remove the run directory and artifact files under HALO_HOME."),
    force: bool = typer.Option(False, "--force", help="Delete even while the run is running."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a run from the registry (artifacts are kept unless --delete-artifacts)."""
    if not yes:
        what = "and its artifacts " if delete_artifacts else ""
        typer.confirm(f"delete run {run_id} {what}from the registry?", abort=True)
    params = {"keep_artifacts": str(not delete_artifacts).lower(), "force": str(force).lower()}
    out = _client().delete(f"/api/v1/runs/{run_id}", **params)
    console.print(f"deleted {out['run_id']}")
    for p in out["removed_paths"]:
        console.print(f"  removed {p}")
    for p in out["kept_paths"]:
        console.print(f"  [dim]kept {p}[/]")


# ---- bundles ---------------------------------------------------------------------------------
@runs_app.command("bundle")
def bundle(
    run_id: str = typer.Argument(..., help="Run id."),
    out: Path = typer.Option(..., "--output", "-o", help="Archive to write (.tar.gz)."),
    adapter: bool = typer.Option(True, "--adapter/--no-adapter", help="Include the adapter files."),
    artifacts: bool = typer.Option(False, "--artifacts/--no-artifacts",
                                   help="Include the run's convert / merge outputs (GGUF, MLX, merged models)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
) -> None:
    """Pack spec, replay manifest, metrics, summary, evals and adapter (and, with --artifacts, the run's
    exports and merged models) into one checksummed archive."""
    if out.exists() and not overwrite:
        raise BadRequest(f"{out} exists; pass --overwrite to replace it", param="output")
    client = _client(TRANSFER_TIMEOUT_S)
    tmp = out.with_name(f".{out.name}.part")
    out.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    try:
        with client.http.stream("GET", f"/api/v1/runs/{run_id}/bundle",
                                params={"include_adapter": str(adapter).lower(),
                                        "include_artifacts": str(artifacts).lower()}) as resp:
            if resp.status_code >= 400:
                resp.read()
                client._check(resp)
            expected = resp.headers.get("x-halo-bundle-sha256")
            files = resp.headers.get("x-halo-bundle-files", "?")
            with open(tmp, "wb") as f:
                for chunk in resp.iter_bytes():
                    f.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
        if expected and h.hexdigest() != expected:
            raise Unavailable(f"download of the bundle was corrupted (sha256 {h.hexdigest()[:12]}… != {expected[:12]}…); "
                              "try again")
        tmp.replace(out)
    except httpx.TransportError as exc:
        raise Unavailable(f"cannot reach the gateway at {client.base_url}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    console.print(f"wrote [bold]{out}[/] ({size / 2**20:.2f} MiB, {files} files, sha256 {h.hexdigest()})")


@runs_app.command("import")
def import_(
    path: Path = typer.Argument(..., help="Bundle made by `halo-forge runs bundle`."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite a run with the same id."),
) -> None:
    """Import a bundle: the run becomes searchable and comparable here. A tampered bundle is refused."""
    if not path.is_file():
        raise NotFound(f"no bundle file at {path}", param="path")
    with open(path, "rb") as f:
        try:
            r = _client(TRANSFER_TIMEOUT_S).request("POST", "/api/v1/runs/import", content=f,
                                                    params={"replace": str(replace).lower()},
                                                    headers={"Content-Type": "application/gzip"})
        except HaloError as exc:
            if exc.code == 400:  # the registry judged the file: say which one
                raise type(exc)(f"{path}: {exc.message}", param=exc.param) from None
            raise
    console.print(f"imported [bold]{r['run_id']}[/] ({r['files']} files verified) — {r['run']['method']} on "
                  f"{r['run'].get('base_model') or '?'}, {_status(r['run']['status'])}")


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")
