"""``halo-forge verify`` (score completions with a verifier) and ``halo-forge verifiers list``.

Input is JSONL, one completion per line::

    {"id": "q1", "completion": "```c\\n...\\n```", "context": {"expected_output": "3"}}
    {"completion": "def f(x):\\n    return x", "prompt": "...", "tests": "...", "entry_point": "f"}

(context fields may also sit at the top level). ``--spec FILE`` is a JSON (or YAML) file
``{"name": "gcc", "params": {"flags": ["-O2"]}}``; ``--verifier`` names the verifier (and wins
over the file's name).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import typer
from halo_common.errors import BadRequest
from halo_schemas.base import describe_validation_error
from halo_schemas.verifiers import VerifierSpec, VerifyContext, VerifyItem
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from halo_forge.client import GatewayClient

console = Console()
verifiers_app = typer.Typer(help="Verifiers: the reward functions of training and evaluation.", no_args_is_help=True)

_CONTEXT_FIELDS = set(VerifyContext.model_fields)


def load_spec(verifier: str | None, spec_file: Path | None) -> VerifierSpec:
    """The spec from ``--spec FILE`` (JSON/YAML ``{name, params}``) and/or ``--verifier NAME``."""
    raw: dict[str, Any] = {}
    if spec_file is not None:
        try:
            text = spec_file.read_text()
        except OSError as exc:
            raise BadRequest(f"cannot read --spec {spec_file}: {exc.strerror}", param="spec") from None
        try:
            raw = json.loads(text)
        except ValueError as json_exc:
            try:
                import yaml

                raw = yaml.safe_load(text)
            except Exception:
                raise BadRequest(f"{spec_file}: not valid JSON ({json_exc})", param="spec") from None
        if not isinstance(raw, dict):
            raise BadRequest(f"{spec_file}: a spec is an object {{name, params}}", param="spec")
    if verifier:
        raw = {**raw, "name": verifier}
    if "name" not in raw:
        raise BadRequest("name the verifier with --verifier NAME (or a 'name' in --spec FILE)", param="verifier")
    try:
        return VerifierSpec.model_validate(raw)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc, what=f"spec{f' in {spec_file}' if spec_file else ''}"),
                         param="spec") from None


def load_items(path: Path) -> list[VerifyItem]:
    """Items from a JSONL file; a bad line is an error naming ``file:line``."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise BadRequest(f"cannot read --input {path}: {exc.strerror}", param="input") from None
    items: list[VerifyItem] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise BadRequest(f"{path}:{n}: not valid JSON ({exc.msg})", param="input") from None
        if not isinstance(obj, dict):
            raise BadRequest(f"{path}:{n}: each line must be a JSON object", param="input")
        ctx = dict(obj.pop("context", None) or {})
        for k in list(obj):
            if k in _CONTEXT_FIELDS:
                ctx[k] = obj.pop(k)
        if obj.get("id") is not None:
            obj["id"] = str(obj["id"])
        try:
            items.append(VerifyItem.model_validate({**obj, "context": ctx}))
        except ValidationError as exc:
            raise BadRequest(f"{path}:{n}: " + describe_validation_error(exc, what="item"), param="input") from None
    if not items:
        raise BadRequest(f"{path}: no completions in the file", param="input")
    return items


def summary_table(name: str, results: list[dict[str, Any]], elapsed: float) -> Table:
    n = len(results)
    rewards = [r["reward"] for r in results]
    ok = sum(1 for r in results if r["success"])
    errors = Counter(r["error_type"] for r in results if r.get("error_type"))
    stages = Counter(r["stage"] for r in results)
    table = Table(title=f"verify: {name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("completions", str(n))
    table.add_row("success", f"{ok} ({ok / n:.1%})" if n else "0")
    table.add_row("mean reward", f"{sum(rewards) / n:.4f}" if n else "-")
    table.add_row("min / max reward", f"{min(rewards):.3f} / {max(rewards):.3f}" if n else "-")
    for stage, count in sorted(stages.items(), key=lambda kv: -kv[1]):
        table.add_row(f"stage {stage}", str(count))
    for etype, count in sorted(errors.items(), key=lambda kv: -kv[1]):
        table.add_row(f"error {etype}", str(count))
    table.add_row("cache hits", str(sum(1 for r in results if r.get("cached"))))
    table.add_row("elapsed", f"{elapsed:.2f}s ({n / elapsed:.1f}/s)" if elapsed > 0 else "-")
    return table


verify_app = typer.Typer(
    help="Score completions with a verifier (`verify --verifier NAME --input FILE`), or check a reward "
    "signal before training (`verify dry-run`).",
    invoke_without_command=True,
)


@verify_app.callback()
def verify(
    ctx: typer.Context,
    input: Path = typer.Option(None, "--input", "-i", help="JSONL of completions (+ context)."),
    verifier: str = typer.Option(None, "--verifier", "-v", help="Verifier name (see `halo-forge verifiers list`)."),
    spec: Path = typer.Option(None, "--spec", help="JSON/YAML file {name, params} configuring the verifier."),
    output: Path = typer.Option(None, "--output", "-o", help="Write one result per line (JSONL)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, max=1000, help="Completions per request."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Re-run even identical verifications."),
) -> None:
    """Score completions with a verifier, with a progress bar and a summary table."""
    if ctx.invoked_subcommand is not None:
        return  # e.g. `verify dry-run`: its own options apply
    if input is None:
        raise typer.BadParameter("--input is required (a JSONL of completions)", param_hint="--input")
    vspec = load_spec(verifier, spec)
    items = load_items(input)
    client = GatewayClient.from_env(timeout=600)
    results: list[dict[str, Any]] = []
    start = time.monotonic()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task(f"verifying with {vspec.name}", total=len(items))
        for i in range(0, len(items), batch_size):
            part = items[i:i + batch_size]
            body = {"spec": vspec.model_dump(mode="json"),
                    "items": [it.model_dump(mode="json", exclude_defaults=True) for it in part],
                    "use_cache": not no_cache}
            reply = client.post("/api/v1/verify/batch", body)
            results.extend(reply["results"])
            progress.advance(task, len(part))
    elapsed = time.monotonic() - start
    if output is not None:
        with output.open("w") as f:
            for it, r in zip(items, results, strict=True):
                f.write(json.dumps({**r, "id": r.get("id") or it.id}) + "\n")
    console.print(summary_table(vspec.name, results, elapsed))
    if output is not None:
        console.print(f"results written to [bold]{output}[/]")


@verifiers_app.command("list")
def list_verifiers(
    reload: bool = typer.Option(False, "--reload", help="Re-scan plugins (HALO_HOME/verifiers, entry points) first."),
    params: bool = typer.Option(False, "--params", help="Show every parameter with its type and default."),
) -> None:
    """Registered verifiers: origin, availability (with install hints), parameters."""
    inv = GatewayClient.from_env(timeout=30).get("/api/v1/verifiers", reload_plugins=reload or None)
    table = Table(title="verifiers")
    for col in ("name", "kind", "origin", "available", "parameters", "description"):
        table.add_column(col, overflow="fold")
    for v in inv["verifiers"]:
        avail = "[green]yes[/]" if v["available"] else f"[red]no[/]: {v['unavailable_reason']} — {v['install_hint']}"
        if params:
            ps = "\n".join(f"{p['name']}: {p['type']}" + ("" if p["required"] else f" = {json.dumps(p['default'])}")
                           for p in v["parameters"])
        else:
            ps = ", ".join(p["name"] + ("*" if p["required"] else "") for p in v["parameters"])
        name = v["name"] + (f" ({', '.join(v['aliases'])})" if v["aliases"] else "")
        table.add_row(name, v["kind"], v["origin"], avail, ps, v["doc"])
    console.print(table)
    sb = inv["sandbox"]
    if sb["mechanism"]:
        console.print(f"sandbox: [bold]{sb['mechanism']}[/] ({', '.join(sb['isolation'])}); workers: {inv['workers']}")
    else:
        console.print(f"[red]sandbox: none[/] — {sb['problem']}")
    for p in inv["broken_plugins"]:
        console.print(f"[yellow]broken plugin[/] {p['source']}: {p['error']}")


def register(app: typer.Typer) -> None:
    app.add_typer(verify_app, name="verify")
    app.add_typer(verifiers_app, name="verifiers")
