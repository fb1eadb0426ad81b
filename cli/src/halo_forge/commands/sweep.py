"""``halo-forge sweep create|list|show|cancel|resume|best|fork-best``: Optuna sweeps over a training spec.

::

    halo-forge sweep create sweep.yaml          # validates (errors name the field), starts, prints the sweep id
    halo-forge sweep show sweep-…               # trials table, objective by trial (plot), parameter importances
    halo-forge sweep fork-best sweep-… --set max_steps=2000
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from halo_forge.client import GatewayClient
from halo_forge.commands.train import absolute_paths, load_config, parse_value

console = Console()
sweep_app = typer.Typer(help="Hyperparameter sweeps (Optuna): each trial is a training job.", no_args_is_help=True)

_COLOURS = {"complete": "green", "pruned": "yellow", "failed": "red", "running": "blue", "waiting": "cyan",
            "queued": "cyan", "succeeded": "green", "cancelled": "yellow"}


def _c(state: str | None) -> str:
    return f"[{_COLOURS.get(state or '', 'white')}]{state or '-'}[/]"


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _json(data: Any) -> None:
    print(json.dumps(data, indent=2))


@sweep_app.command("create")
def create(config: Path = typer.Argument(..., help="Sweep spec (YAML or JSON): method, base, search_space, ..."),
           as_json: bool = typer.Option(False, "--json", help="Print the reply as JSON.")) -> None:
    """Validate and start a sweep. Nothing starts when the spec has a problem (the field is named)."""
    spec = load_config(config)
    if isinstance(spec.get("base"), dict):
        spec["base"] = absolute_paths(spec["base"])
    started = GatewayClient.from_env().post("/api/v1/sweeps", spec)
    if as_json:
        return _json(started)
    console.print(f"started sweep [bold]{started['sweep_id']}[/] ({started['n_trials']} trials; coordinator job "
                  f"{started['job_id']}): halo-forge sweep show {started['sweep_id']}")


@sweep_app.command("list")
def list_sweeps(limit: int = typer.Option(50, "--limit", help="At most this many."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Sweeps, newest first."""
    sweeps = GatewayClient.from_env().get("/api/v1/sweeps", limit=limit)["sweeps"]
    if as_json:
        return _json(sweeps)
    t = Table(title=f"{len(sweeps)} sweep(s)")
    for col in ("sweep", "name", "method", "state", "trials", "best"):
        t.add_column(col, overflow="fold")
    for s in sweeps:
        counts = s.get("counts") or {}
        done = sum(counts.get(k, 0) for k in ("complete", "pruned", "failed"))
        best = s.get("best") or {}
        t.add_row(s["sweep_id"], s.get("name") or "", s["method"], _c(s.get("state")), f"{done}/{s['n_trials']}",
                  _num(best.get("value")))
    console.print(t)


def objective_plot(info: dict[str, Any], width: int = 80, height: int = 15, colorless: bool = False) -> str:
    """Objective by trial number (plotext): complete trials as points, pruned ones at their last reported value,
    and the best-so-far line."""
    import plotext as plt

    fig = plt.figure
    fig.clear()
    try:
        spec = info.get("spec") or {}
        direction = (spec.get("objective") or {}).get("direction", "minimize")
        metric = (spec.get("objective") or {}).get("metric", "objective")
        done = [(t["number"], t["value"]) for t in info["trials"] if t["state"] == "complete"
                and isinstance(t.get("value"), int | float) and math.isfinite(t["value"])]
        pruned = [(t["number"], t["intermediate"][str(t["last_step"])] if str(t["last_step"]) in t["intermediate"]
                   else t["intermediate"].get(t["last_step"])) for t in info["trials"]
                  if t["state"] == "pruned" and t.get("last_step") is not None]
        pruned = [(n, v) for n, v in pruned if isinstance(v, int | float) and math.isfinite(v)]
        if done:
            fig.draw(fig.signal([n for n, _ in done], [v for _, v in done]).label("complete"))
            best, line = None, []
            for n, v in sorted(done):
                best = v if best is None else (min(best, v) if direction == "minimize" else max(best, v))
                line.append((n, best))
            fig.draw(fig.signal([n for n, _ in line], [v for _, v in line]).lines().label("best so far"))
        if pruned:
            fig.draw(fig.signal([n for n, _ in pruned], [v for _, v in pruned]).label("pruned (last value)"))
        fig.title(f"{metric} by trial ({direction})")
        fig.plot_size(width, height)
        return fig.build().string(colorless=colorless) if (done or pruned) else ""
    finally:
        fig.clear()


@sweep_app.command("show")
def show(sweep_id: str = typer.Argument(..., help="Sweep id (sweep-…)."),
         plot: bool = typer.Option(True, "--plot/--no-plot", help="Draw the objective by trial."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """A sweep: its trials, the objective by trial and the parameter importances."""
    info = GatewayClient.from_env().get(f"/api/v1/sweeps/{sweep_id}")
    if as_json:
        return _json(info)
    spec = info.get("spec") or {}
    objective = spec.get("objective") or {}
    best = info.get("best") or {}
    metric = str(objective.get("metric", "loss"))
    # An eval objective (eval:<task>[:<metric>]) has one value per trial: no final/best mode.
    scored = metric if metric.startswith("eval:") else f"{objective.get('mode', 'final')} {metric}"
    console.print(f"sweep [bold]{info['sweep_id']}[/] {info.get('name') or ''} · {info['method']} · "
                  f"{spec.get('sampler')} · pruning {(spec.get('pruning') or {}).get('kind', 'none')} · "
                  f"{scored} ({objective.get('direction')}) · "
                  f"coordinator {_c(info.get('state'))}" + (f" [red]{info['error']}[/]" if info.get("error") else ""))
    params = list(spec.get("search_space") or {})
    t = Table(title=f"trials ({sum(info.get('counts', {}).values())} of {info['n_trials']})")
    for col in ("#", "state", *params, objective.get("metric", "value"), "step", "run", "note"):
        t.add_column(col, overflow="fold")
    for tr in info["trials"]:
        mark = " [bold green]*best*[/]" if best and tr["number"] == best.get("number") else ""
        value = tr.get("value")
        if value is None and tr.get("last_step") is not None:
            value = (tr.get("intermediate") or {}).get(str(tr["last_step"]))
        t.add_row(str(tr["number"]), _c(tr["state"]) + mark, *[_num(tr["params"].get(p)) for p in params],
                  _num(value), _num(tr.get("last_step")), tr.get("run_id") or "", tr.get("error") or "")
    console.print(t)
    if plot:
        drawn = objective_plot(info)
        if drawn:
            print(drawn)
    importances = info.get("importances") or {}
    if importances:
        it = Table(title="parameter importances (Optuna)")
        it.add_column("parameter")
        it.add_column("importance")
        it.add_column("")
        for name, value in sorted(importances.items(), key=lambda kv: -kv[1]):
            it.add_row(name, f"{value:.3f}", "█" * max(1, round(30 * value)))
        console.print(it)
    else:
        console.print("parameter importances: need at least two complete trials with different values")


@sweep_app.command("cancel")
def cancel(sweep_id: str = typer.Argument(..., help="Sweep id.")) -> None:
    """Stop a sweep: its coordinator cancels the running trials (resume re-runs them)."""
    info = GatewayClient.from_env().post(f"/api/v1/sweeps/{sweep_id}/cancel")
    console.print(f"sweep {sweep_id}: cancel requested (coordinator {_c(info.get('state'))})")


@sweep_app.command("resume")
def resume(sweep_id: str = typer.Argument(..., help="Sweep id.")) -> None:
    """Start a new coordinator for a cancelled or failed sweep; finished trials are kept."""
    started = GatewayClient.from_env().post(f"/api/v1/sweeps/{sweep_id}/resume")
    console.print(f"resumed sweep {sweep_id} (coordinator job {started['job_id']})")


@sweep_app.command("best")
def best(sweep_id: str = typer.Argument(..., help="Sweep id."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON (the full spec included).")) -> None:
    """The best complete trial: its values, objective, run and full training spec."""
    found = GatewayClient.from_env().get(f"/api/v1/sweeps/{sweep_id}/best")
    if as_json:
        return _json(found)
    tr = found["trial"]
    console.print(f"best trial #{tr['number']}: value {_num(tr['value'])} · run {tr.get('run_id')} · "
                  + ", ".join(f"{k}={_num(v)}" for k, v in tr["params"].items()))
    print(json.dumps(found["spec"], indent=2))


@sweep_app.command("fork-best")
def fork_best(sweep_id: str = typer.Argument(..., help="Sweep id."),
              set_: list[str] = typer.Option(None, "--set", help="Override a spec field: path=value (repeat)."),
              name: str = typer.Option(None, "--name", help="Name of the new run.")) -> None:
    """Train a full run from the best trial's spec (e.g. --set max_steps=2000)."""
    overrides: dict[str, Any] = {}
    for item in set_ or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--set {item!r}: expected path=value")
        overrides[key] = parse_value(raw)
    forked = GatewayClient.from_env().post(f"/api/v1/sweeps/{sweep_id}/fork-best",
                                           {"overrides": overrides, "name": name})
    console.print(f"queued {forked['spec'].get('name')} from trial #{forked['trial']}: job {forked['job_id']}, "
                  f"run {forked['run_id']}")


def register(app: typer.Typer) -> None:
    app.add_typer(sweep_app, name="sweep")
