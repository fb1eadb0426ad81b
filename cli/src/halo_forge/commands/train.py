"""``halo-forge train sft|dpo|orpo|rm``: submit a training job to the local stack and follow it live.

The spec is built from ``--config FILE`` (YAML or JSON), then the flags, then ``--set key.path=value``
(any spec field, e.g. ``--set lora.rank=32``). The gateway validates it (an unknown key or a bad value is
named) and queues it; the command then streams the run's events as a progress bar with loss, learning
rate and throughput until the job ends (``--detach`` returns at once). ``--dry-run`` validates the data on
a trainer and shows a rendered sample with trained tokens highlighted and masked ones dimmed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from halo_common.errors import BadRequest, HaloError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from halo_forge.client import GatewayClient

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
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            try:
                import yaml
            except ImportError:
                raise BadRequest(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use a .json config",
                                 param="config") from None
            data = yaml.safe_load(text)
    except Exception as exc:
        raise BadRequest(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}", param="config") from None
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


def build_spec(config: Path | None, flags: dict[str, Any], sets: list[str] | None) -> dict[str, Any]:
    """config file < flags < --set. The ``data`` / ``eval_data`` / ``eval_fraction`` flags fill ``data.*``;
    a config may give ``data`` as a plain path."""
    spec = load_config(config)
    raw = spec.get("data")
    data: dict[str, Any] = {"train": raw} if isinstance(raw, str) else dict(raw or {})
    for key, value in flags.items():
        if value is None:
            continue
        if key == "data":
            data["train"] = value
        elif key == "eval_data":
            data["eval"] = value
        elif key == "eval_fraction":
            data["eval_fraction"] = value
        else:
            spec[key] = value
    if data:
        spec["data"] = data
    for s in sets or []:
        apply_set(spec, s)
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


def _loss_line(summary: dict[str, Any]) -> str | None:
    first, last, best = summary.get("loss_first"), summary.get("loss_last"), summary.get("loss_best")
    if first is None:
        return None
    return f"{first:.4g} → {last:.4g} ({best:.4g})"


# ---- commands ------------------------------------------------------------------------------------
_MODEL = typer.Option(None, "--model", "-m", help="Base model: Hub id, local HF directory, or tiny://llama.")
_DATA = typer.Option(None, "--data", "-d", help="Training data: .jsonl/.json/.parquet file or a Hub dataset id.")
_CONFIG = typer.Option(None, "--config", "-c", help="Spec file (YAML or JSON); flags override it.")
_EVAL = typer.Option(None, "--eval-data", help="Held-out data in the same format.")
_EVAL_FRACTION = typer.Option(None, "--eval-fraction", help="Hold out this fraction of the training data instead.")
_FINETUNE = typer.Option(None, "--finetune", help="full | lora | qlora | dora | rslora | pissa.")
_EPOCHS = typer.Option(None, "--epochs", help="Passes over the data.")
_STEPS = typer.Option(None, "--max-steps", help="Optimizer steps (overrides --epochs).")
_BS = typer.Option(None, "--batch-size", help="Per-device batch size.")
_GA = typer.Option(None, "--grad-accum", help="Gradient accumulation steps.")
_LR = typer.Option(None, "--lr", help="Peak learning rate.")
_MAXLEN = typer.Option(None, "--max-length", help="Maximum sequence length in tokens.")
_NPROC = typer.Option(None, "--num-processes", help="Data-parallel processes (launched through accelerate).")
_NAME = typer.Option(None, "--name", help="A name for the run.")
_SEED = typer.Option(None, "--seed", help="Random seed.")
_SET = typer.Option(None, "--set", help="Any spec field: --set lora.rank=32 (repeatable).")
_DETACH = typer.Option(False, "--detach", help="Return once the job is queued.")
_DRY = typer.Option(False, "--dry-run", help="Validate the data and show a rendered sample; do not train.")
_SAMPLES = typer.Option(1, "--samples", help="Records to render with --dry-run.")


def _common(model: str | None, data: str | None, eval_data: str | None, eval_fraction: float | None, finetune: str | None,
            epochs: float | None, max_steps: int | None, batch_size: int | None, grad_accum: int | None, lr: float | None,
            max_length: int | None, num_processes: int | None, name: str | None, seed: int | None) -> dict[str, Any]:
    return {"model": model, "data": data, "eval_data": eval_data, "eval_fraction": eval_fraction, "finetune": finetune,
            "epochs": epochs, "max_steps": max_steps, "batch_size": batch_size, "grad_accum": grad_accum,
            "learning_rate": lr, "max_length": max_length, "num_processes": num_processes, "name": name, "seed": seed}


@train_app.command("sft")
def train_sft(
    model: str = _MODEL, data: str = _DATA, config: Path = _CONFIG, eval_data: str = _EVAL,
    eval_fraction: float = _EVAL_FRACTION, finetune: str = _FINETUNE, epochs: float = _EPOCHS, max_steps: int = _STEPS,
    batch_size: int = _BS, grad_accum: int = _GA, lr: float = _LR, max_length: int = _MAXLEN,
    num_processes: int = _NPROC, name: str = _NAME, seed: int = _SEED,
    packing: bool = typer.Option(None, "--packing/--no-packing", help="Pack records into full rows (default on)."),
    completion_only: bool = typer.Option(None, "--completion-only/--full-sequence-loss",
                                         help="Loss on assistant/completion tokens only (default) or on everything."),
    sets: list[str] = _SET, detach: bool = _DETACH, dry_run: bool = _DRY, samples: int = _SAMPLES,
) -> None:
    """Supervised finetuning on text, prompt/completion or chat (messages) records."""
    flags = _common(model, data, eval_data, eval_fraction, finetune, epochs, max_steps, batch_size, grad_accum, lr,
                    max_length, num_processes, name, seed)
    flags.update({"packing": packing, "completion_only_loss": completion_only})
    _submit("sft", config, flags, sets, detach, dry_run, samples)


@train_app.command("dpo")
def train_dpo(
    model: str = _MODEL, data: str = _DATA, config: Path = _CONFIG, eval_data: str = _EVAL,
    eval_fraction: float = _EVAL_FRACTION, finetune: str = _FINETUNE, epochs: float = _EPOCHS, max_steps: int = _STEPS,
    batch_size: int = _BS, grad_accum: int = _GA, lr: float = _LR, max_length: int = _MAXLEN,
    num_processes: int = _NPROC, name: str = _NAME, seed: int = _SEED,
    loss_type: str = typer.Option(None, "--loss-type", help="sigmoid | ipo | hinge | kto_pair | rpo | cdpo."),
    beta: float = typer.Option(None, "--beta", help="DPO beta (IPO tau)."),
    label_smoothing: float = typer.Option(None, "--label-smoothing", help="cDPO label-flip probability."),
    reference_free: bool = typer.Option(None, "--reference-free/--with-reference", help="Use no reference model."),
    ref_model: str = typer.Option(None, "--ref-model", help="Reference model (default: the base model)."),
    sets: list[str] = _SET, detach: bool = _DETACH, dry_run: bool = _DRY, samples: int = _SAMPLES,
) -> None:
    """Direct preference optimisation on chosen/rejected pairs."""
    flags = _common(model, data, eval_data, eval_fraction, finetune, epochs, max_steps, batch_size, grad_accum, lr,
                    max_length, num_processes, name, seed)
    flags.update({"loss_type": loss_type, "beta": beta, "label_smoothing": label_smoothing,
                  "reference_free": reference_free, "ref_model": ref_model})
    _submit("dpo", config, flags, sets, detach, dry_run, samples)


@train_app.command("orpo")
def train_orpo(
    model: str = _MODEL, data: str = _DATA, config: Path = _CONFIG, eval_data: str = _EVAL,
    eval_fraction: float = _EVAL_FRACTION, finetune: str = _FINETUNE, epochs: float = _EPOCHS, max_steps: int = _STEPS,
    batch_size: int = _BS, grad_accum: int = _GA, lr: float = _LR, max_length: int = _MAXLEN,
    num_processes: int = _NPROC, name: str = _NAME, seed: int = _SEED,
    beta: float = typer.Option(None, "--beta", help="Weight of the odds-ratio term (lambda)."),
    sets: list[str] = _SET, detach: bool = _DETACH, dry_run: bool = _DRY, samples: int = _SAMPLES,
) -> None:
    """ORPO: SFT plus an odds-ratio preference term, no reference model."""
    flags = _common(model, data, eval_data, eval_fraction, finetune, epochs, max_steps, batch_size, grad_accum, lr,
                    max_length, num_processes, name, seed)
    flags["beta"] = beta
    _submit("orpo", config, flags, sets, detach, dry_run, samples)


@train_app.command("rm")
def train_rm(
    model: str = _MODEL, data: str = _DATA, config: Path = _CONFIG, eval_data: str = _EVAL,
    eval_fraction: float = _EVAL_FRACTION, finetune: str = _FINETUNE, epochs: float = _EPOCHS, max_steps: int = _STEPS,
    batch_size: int = _BS, grad_accum: int = _GA, lr: float = _LR, max_length: int = _MAXLEN,
    num_processes: int = _NPROC, name: str = _NAME, seed: int = _SEED,
    center_rewards: float = typer.Option(None, "--center-rewards", help="Reward-centering coefficient (0 disables)."),
    sets: list[str] = _SET, detach: bool = _DETACH, dry_run: bool = _DRY, samples: int = _SAMPLES,
) -> None:
    """Reward model (Bradley-Terry on a sequence-classification head) from chosen/rejected pairs."""
    flags = _common(model, data, eval_data, eval_fraction, finetune, epochs, max_steps, batch_size, grad_accum, lr,
                    max_length, num_processes, name, seed)
    flags["center_rewards_coefficient"] = center_rewards
    _submit("rm", config, flags, sets, detach, dry_run, samples)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
