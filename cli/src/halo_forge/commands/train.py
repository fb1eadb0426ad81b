"""``halo-forge train sft|dpo|orpo|rm``: submit a training job to the local stack and follow it live.

The spec is built from ``--config FILE`` (YAML or JSON), then the flags, then ``--set key.path=value``
(any spec field, e.g. ``--set lora.rank=32``). The flags are derived from the method's spec model
(:mod:`halo_forge.specflags`): every scalar field is ``--<field>`` and every field of a nested model
``--<model>-<field>`` (``--lora-rank``), with the field's own description as help. The gateway validates it (an unknown key or a bad value is
named) and queues it; the command then streams the run's events as a progress bar with loss, learning
rate and throughput until the job ends (``--detach`` returns at once). ``--dry-run`` validates the data on
a trainer and shows a rendered sample with trained tokens highlighted and masked ones dimmed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from halo_common.errors import BadRequest, HaloError
from halo_common.specpolicy import is_local_path
from halo_schemas.methods import TRAINING_JOB_SPECS
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from halo_forge.client import GatewayClient
from halo_forge.specflags import spec_command

console = Console()
train_app = typer.Typer(help="Train a model as a durable job: sft | dpo | orpo | rm | grpo | raft.", no_args_is_help=True)

#: Metrics shown next to the progress bar, in order, with their short labels.
BAR_METRICS = (("loss", "loss"), ("learning_rate", "lr"), ("grad_norm", "gnorm"), ("tokens_per_second", "tok/s"),
               ("reward_accuracy", "acc"), ("reward_margin", "margin"), ("accuracy", "acc"), ("eval_loss", "eval"),
               ("reward_mean", "reward"), ("pass_rate", "pass"), ("cycle", "cycle"))


def load_config(path: Path | None) -> dict[str, Any]:
    """A spec from a YAML or JSON file (empty when no file)."""
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadRequest(f"cannot read config {path}: {exc.strerror}", param="config") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:  # the file's line and column, e.g. spec.json:4:17
            raise BadRequest(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}", param="config") from None
    else:
        try:
            import yaml
        except ImportError:
            raise BadRequest(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use a .json config",
                             param="config") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            what = getattr(exc, "problem", None) or str(exc)
            raise BadRequest(f"{where}: not valid YAML: {what}", param="config") from None
    if not isinstance(data, dict):
        raise BadRequest(f"{path}: the config must be a mapping of spec fields", param="config")
    return data


def parse_value(raw: str) -> Any:
    """``--set`` values: JSON when it parses (numbers, true/false/null, lists, objects), else a string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def apply_set(spec: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` to a nested dict."""
    if "=" not in assignment:
        raise BadRequest(f"--set expects key=value, got {assignment!r}", param="set")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise BadRequest(f"--set has an empty key: {assignment!r}", param="set")
    node = spec
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise BadRequest(f"--set {key}: {p} is not a mapping", param="set")
        node = nxt
    node[parts[-1]] = parse_value(raw)


#: Shorthand flag names for paths inside ``data``.
DATA_SHORTHANDS = {"data": ("data", "train"), "eval_data": ("data", "eval"), "eval_fraction": ("data", "eval_fraction")}


def build_spec(config: Path | None, flags: dict[str, Any], sets: list[str] | None) -> dict[str, Any]:
    """config file < flags < --set. ``flags`` keys are field names or dotted paths (``lora.rank``); the
    shorthands ``data`` / ``eval_data`` / ``eval_fraction`` fill ``data.*``. A config may give ``data`` as a
    plain path."""
    spec = load_config(config)
    if isinstance(spec.get("data"), str):
        spec["data"] = {"train": spec["data"]}
    for key, value in flags.items():
        if value is None:
            continue
        path = DATA_SHORTHANDS.get(key) or tuple(key.split("."))
        node = spec
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    for s in sets or []:
        apply_set(spec, s)
    return absolute_paths(spec)


#: Spec fields that hold a local path (or a Hub id / tiny:// / demo://), as key paths.
PATH_FIELDS = (("model",), ("ref_model",), ("data", "train"), ("data", "eval"), ("curriculum", "historical_stats"))


def absolute_path(value: str) -> str:
    """A path made absolute against the caller's working directory (``~`` expanded); a Hub id
    (``org/name``) or a ``tiny://`` / ``demo://`` location unchanged. A Hub-id-shaped name that exists here
    (``my-model``, ``models/qwen``) is taken as the local directory it names."""
    if "://" in value:
        return value
    expanded = os.path.expanduser(value)
    if os.path.exists(expanded) or is_local_path(value):
        return os.path.abspath(expanded)
    return value


def absolute_paths(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with every path field absolute: the gateway (maybe on another machine, always in another
    directory) refuses relative paths rather than resolving them against its own working directory."""
    for keys in PATH_FIELDS:
        node: Any = spec
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str):
            node[keys[-1]] = absolute_path(node[keys[-1]])
    return spec


def _submit(method: str, config: Path | None, flags: dict[str, Any], sets: list[str] | None, detach: bool,
            dry_run: bool, samples: int) -> None:
    spec = build_spec(config, flags, sets)
    client = GatewayClient.from_env()
    if dry_run:
        result = client.request("POST", f"/api/v1/jobs/{method}/preview", json=spec, params={"samples": samples})
        render_preview(result)
        if not result.get("ok"):
            raise typer.Exit(1)
        return
    submitted = client.post(f"/api/v1/jobs/{method}", spec)
    job_id, run_id = submitted["job_id"], submitted["run_id"]
    console.print(f"[green]queued[/] {method} job [bold]{job_id}[/] (run {run_id})")
    if detach:
        console.print(f"follow it with [bold]halo-forge jobs follow {job_id}[/]")
        return
    final = follow_run(client, run_id, job_id=job_id, total=spec.get("max_steps"))
    if final.get("state") != "succeeded":
        raise HaloError(f"job {job_id} {final.get('state')}: {final.get('error') or 'no reason given'}")


def render_preview(result: dict[str, Any]) -> None:
    """Print a dry-run result: format, counts, problems, and samples with trained tokens highlighted."""
    head = f"format [bold]{result.get('format') or '?'}[/], {result.get('records', 0)} training records"
    if result.get("eval_records"):
        head += f", {result['eval_records']} eval records"
    console.print(head + f" · backend {result.get('backend') or '?'}")
    resolved = result.get("resolved") or {}
    if resolved:
        console.print("resolved: " + ", ".join(f"{k}={resolved[k]}" for k in
                                               ("dtype", "attn_implementation", "gradient_checkpointing", "learning_rate")
                                               if k in resolved))
    for p in result.get("problems") or []:
        console.print(f"[red]✗[/] {p}", highlight=False)
    for s in result.get("samples") or []:
        title = f"{s['source']}" + (f" ({s['part']})" if s.get("part") not in (None, "input") else "")
        console.rule(f"{title} · {s['num_trained_tokens']}/{s['num_tokens']} tokens trained"
                     + (" · truncated" if s.get("truncated") else ""))
        text = Text()
        for seg in s["segments"]:
            text.append(seg["text"], style="bold green" if seg["trained"] else "dim")
        console.print(text)
    if result.get("samples"):
        console.print(Text("trained", style="bold green") + Text(" · ") + Text("masked (no loss)", style="dim"))
    if result.get("ok"):
        console.print("[green]ok[/]: spec and data are valid for training here")


def _fmt(key: str, value: float) -> str:
    if key == "learning_rate":
        return f"{value:.2e}"
    if key == "tokens_per_second":
        return f"{value:,.0f}"
    return f"{value:.4g}"


def follow_run(client: GatewayClient, run_id: str, *, job_id: str | None = None, total: int | None = None,
               quiet: bool = False) -> dict[str, Any]:
    """Stream a run's events with a live progress bar until it finishes. Returns the RunFinished message
    (``state``, ``summary``, ``error``). Ctrl-C stops following; the job keeps running."""
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False, disable=quiet,
    )
    finished: dict[str, Any] = {}
    try:
        with progress:
            task = progress.add_task(run_id, total=total, metrics="waiting for a trainer…")
            for line in client.stream_lines(f"/api/v1/runs/{run_id}/events"):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                kind, msg = event.get("type"), event.get("message") or {}
                if kind == "started":
                    resumed = msg.get("resumed_from_step")
                    progress.update(task, total=msg.get("total_steps"), completed=resumed or 0,
                                    metrics=f"resumed at step {resumed}" if resumed else "training")
                elif kind == "progressed":
                    m = msg.get("metrics") or {}
                    shown, seen = [], set()
                    for key, label in BAR_METRICS:
                        if key in m and label not in seen:
                            shown.append(f"{label} {_fmt(key, m[key])}")
                            seen.add(label)
                    progress.update(task, completed=msg.get("step", 0), total=msg.get("total_steps"),
                                    metrics=" · ".join(shown))
                elif kind == "checkpointed" and not quiet:
                    progress.console.print(f"[dim]checkpoint at step {msg.get('step')}: {msg.get('path')}[/]")
                elif kind == "artifact-added" and not quiet:
                    progress.console.print(f"[dim]{msg.get('kind')} written: {msg.get('path')}[/]")
                elif kind == "finished":
                    finished = msg
                    summary = msg.get("summary") or {}
                    steps = summary.get("steps")
                    if steps is not None:
                        progress.update(task, completed=steps)
                    break
    except KeyboardInterrupt:
        console.print("\nstopped following; the job keeps running"
                      + (f" (cancel it with [bold]halo-forge jobs cancel {job_id}[/])" if job_id else ""))
        raise typer.Exit(130) from None
    if not quiet:
        print_summary(finished)
    return finished


def print_summary(finished: dict[str, Any]) -> None:
    summary = finished.get("summary") or {}
    state = finished.get("state", "?")
    colour = {"succeeded": "green", "cancelled": "yellow"}.get(state, "red")
    table = Table(title=f"run {summary.get('run_id') or finished.get('run_id', '')}: [{colour}]{state}[/]", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows: list[tuple[str, Any]] = [
        ("steps", f"{summary.get('steps', 0)}/{summary.get('total_steps') or '?'}"),
        ("loss first → last (best)", _loss_line(summary)),
        ("eval loss (best)", summary.get("eval_loss_best")),
        ("tokens", summary.get("tokens")),
        ("tokens/s", round(summary["tokens_per_second"]) if summary.get("tokens_per_second") else None),
        ("model FLOPs/s (MFU)", _flops_line(summary)),
        ("duration", f"{summary.get('duration_s', 0):.1f}s"),
        ("weights updated", summary.get("weights_updated")),
    ]
    rows += [(k, v) for k, v in (summary.get("outputs") or {}).items()]
    for key in ("reward_accuracy", "reward_margin", "eval_reward_accuracy", "heldout_pairwise_accuracy",
                "eval_accuracy", "early_stopped_at_step"):
        if key in (summary.get("extras") or {}):
            rows.append((key, summary["extras"][key]))
    if finished.get("error"):
        rows.append(("error", f"[red]{finished['error']}[/]"))
    for k, v in rows:
        if v is not None:
            table.add_row(k, str(v) if not isinstance(v, float) else f"{v:.4g}")
    console.print(table)


def _flops_line(summary: dict[str, Any]) -> str | None:
    """``12.3 GFLOP/s (41.0% of 30.0 GFLOP/s, measured:float32 matmul)``; None when the run has no figure."""
    achieved = summary.get("model_flops_per_second")
    if not achieved:
        return None
    line = f"{achieved / 1e9:.3g} GFLOP/s"
    if summary.get("mfu") is not None and summary.get("peak_flops_per_second"):
        line += (f" ({summary['mfu']:.1%} of {summary['peak_flops_per_second'] / 1e9:.4g} GFLOP/s, "
                 f"{summary.get('peak_flops_source') or 'peak'})")
    return line


def _loss_line(summary: dict[str, Any]) -> str | None:
    first, last, best = summary.get("loss_first"), summary.get("loss_last"), summary.get("loss_best")
    if first is None:
        return None
    return f"{first:.4g} → {last:.4g} ({best:.4g})"


# ---- commands ------------------------------------------------------------------------------------
#: How the spec-derived flags of every training command are named beyond ``--<field>`` / ``--<model>-<field>``.
FLAG_ROUTES = {"data": ("data", "train"), "eval_data": ("data", "eval"), "eval_fraction": ("data", "eval_fraction")}
FLAG_ALIASES: dict[tuple[str, ...], list[str]] = {
    ("learning_rate",): ["--lr"],
    ("completion_only_loss",): ["--completion-only/--full-sequence-loss"],
    ("center_rewards_coefficient",): ["--center-rewards"],
    ("curriculum", "strategy"): ["--curriculum"],
    ("shaping", "strategy"): ["--shaping"],
    ("allow_compile_only",): ["--allow-compile-only/--no-compile-only"],
}
SHORT_FLAGS = {("model",): "-m", ("data", "train"): "-d", ("num_generations",): "-n"}
#: Fields set only through --config / --set (lists and free-form fields).
NO_FLAG = ("tags",)


def training_command(method: str, submit: Callable[[str, dict[str, Any], dict[str, Any]], None],
                     extra: dict[str, tuple[Any, Any]] | None = None) -> Callable[..., None]:
    """``halo-forge train <method>``: one flag per field of the method's spec, with the field's own help."""
    spec_cls = TRAINING_JOB_SPECS[method]
    doc = (spec_cls.__doc__ or method).strip().split("\n\n")[0]

    def run(values: dict[tuple[str, ...], Any], options: dict[str, Any]) -> None:
        submit(method, {".".join(path): value for path, value in values.items()}, options)

    return spec_command(spec_cls, run, doc=doc, skip=NO_FLAG, routes=FLAG_ROUTES, aliases=FLAG_ALIASES,
                        short=SHORT_FLAGS, extra=extra)


def _submit_training(method: str, flags: dict[str, Any], options: dict[str, Any]) -> None:
    _submit(method, options["config"], flags, options["sets"], options["detach"], options["dry_run"],
            options["samples"])


for _method in ("sft", "dpo", "orpo", "rm"):
    train_app.command(_method)(training_command(_method, _submit_training))


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
