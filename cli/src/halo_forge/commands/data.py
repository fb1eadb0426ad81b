"""``halo-forge data run|synthesize|dedup|score|filter|decontaminate|inspect|datasets``: the data pipeline.

Every step is a job of the data service on the stack (its output is registered as a dataset; the id is
printed), e.g.::

    halo-forge data dedup --input raw.jsonl --output dedup.jsonl --method fuzzy --threshold 0.85 --key text
    halo-forge data run recipe.yaml
    halo-forge data inspect dedup.jsonl

``--local`` runs a step in this process instead (no stack, nothing registered; needs the ``halo-data`` package;
synthesize and judge scoring need the stack's services).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer
import yaml
from halo_common.errors import BadRequest, HaloError
from halo_schemas.base import describe_validation_error
from halo_schemas.data import (
    DecontaminateSpec,
    DedupSpec,
    FilterSpec,
    InspectRequest,
    RecipeSpec,
    ScoreSpec,
    SynthesizeSpec,
)
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from halo_forge.client import GatewayClient

console = Console()
data_app = typer.Typer(help="Synthesize, dedup, score, filter, decontaminate and inspect datasets.", no_args_is_help=True)
OPS = {DedupSpec: "dedup", DecontaminateSpec: "decontaminate", ScoreSpec: "score", FilterSpec: "filter",
       SynthesizeSpec: "synthesize", RecipeSpec: "recipe"}
LOCAL = typer.Option(False, "--local", help="Run in this process (no stack; the output is not registered).")


def _abs(p: str | None) -> str | None:
    return None if p is None or p.startswith("dataset:") else os.path.abspath(os.path.expanduser(p))


def _spec(cls: type, **kw: Any) -> Any:
    try:
        return cls.model_validate({k: v for k, v in kw.items() if v is not None})
    except ValidationError as e:
        raise BadRequest(describe_validation_error(e, what="options")) from None


def _run_local(request: dict[str, Any]) -> dict[str, Any]:
    """Run ``python -m halo_data.local`` with ``request`` (the CLI never imports a service package)."""
    if importlib.util.find_spec("halo_data") is None:
        raise HaloError("--local needs the halo-data package installed (pip install halo-data)")
    proc = subprocess.run([sys.executable, "-m", "halo_data.local"], input=json.dumps(request), capture_output=True,
                          text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise BadRequest(lines[-1] if lines else f"halo_data.local exited {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _local(spec: Any) -> dict[str, Any]:
    if spec.input.startswith("dataset:"):
        raise BadRequest("--local reads files; a dataset:<id> input needs the stack", param="input")
    return _run_local({"schema": spec.schema_id, "op": OPS[type(spec)], "spec": spec.model_dump(mode="json")})


def _remote(spec: Any) -> dict[str, Any]:
    client = GatewayClient.from_env()
    submitted = client.post(f"/api/v1/data/{OPS[type(spec)]}", spec.model_dump(mode="json", exclude_defaults=True))
    console.print(f"[dim]queued {submitted['job_id']} (run {submitted['run_id']})[/]")
    for line in client.stream_lines(f"/api/v1/runs/{submitted['run_id']}/events"):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        kind, msg = event.get("type"), event.get("message") or {}
        if kind == "progressed":
            m = msg.get("metrics") or {}
            console.print(f"[dim]{int(m.get('rows_in', 0))} rows read, {int(m.get('rows_out', 0))} kept[/]")
        elif kind == "finished":
            if msg.get("state") != "succeeded":
                raise HaloError(f"data job {submitted['job_id']} {msg.get('state')}: {msg.get('error')}")
            return msg.get("summary") or {}
    raise HaloError(f"the event stream of run {submitted['run_id']} ended before the job finished")


def _run(spec: Any, local: bool, as_json: bool) -> None:
    summary = _local(spec) if local else _remote(spec)
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    steps = summary.get("steps") or [summary]
    t = Table(title=f"data {OPS[type(spec)]}")
    for col in ("step", "rows in", "rows out", "dropped", "dataset", "output"):
        t.add_column(col, overflow="fold")
    for s in steps:
        dropped = ", ".join(f"{k}={v}" for k, v in (s.get("dropped") or {}).items()) or "-"
        t.add_row(s.get("op", ""), str(s.get("rows_in", "")), str(s.get("rows_out", "")), dropped,
                  s.get("dataset_id") or "-", s.get("output", ""))
    console.print(t)


JSON = typer.Option(False, "--json", help="Print the summary as JSON.")


@data_app.command("run")
def run_cmd(recipe: Path = typer.Argument(..., exists=True, dir_okay=False, help="Recipe YAML (input, output, steps)."),
            local: bool = LOCAL, as_json: bool = JSON) -> None:
    """Run a recipe: steps chained, each reading the previous output."""
    try:
        body = yaml.safe_load(recipe.read_text())
    except yaml.YAMLError as exc:
        raise BadRequest(f"{recipe}: not valid YAML: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"{recipe}: a recipe is a mapping with input, output and steps")
    base = recipe.resolve().parent
    for k in ("input", "output"):  # relative paths are relative to the recipe file
        if isinstance(body.get(k), str) and not body[k].startswith("dataset:") and not os.path.isabs(body[k]):
            body[k] = str(base / body[k])
    _run(_spec(RecipeSpec, **body), local, as_json)


@data_app.command("dedup")
def dedup_cmd(input: str = typer.Option(..., "--input"), output: str = typer.Option(None, "--output"),
              method: str = typer.Option("fuzzy", "--method", help="exact | fuzzy"),
              threshold: float = typer.Option(None, "--threshold"), key: str = typer.Option(None, "--key"),
              num_perm: int = typer.Option(None, "--num-perm"), shingle_size: int = typer.Option(None, "--shingle-size"),
              local: bool = LOCAL, as_json: bool = JSON) -> None:
    """Drop exact and near-duplicate rows (first occurrence wins); clusters go next to the output."""
    _run(_spec(DedupSpec, input=_abs(input) or input, output=_abs(output), method=method, threshold=threshold,
               text_key=key, num_perm=num_perm, shingle_size=shingle_size), local, as_json)


@data_app.command("decontaminate")
def decontaminate_cmd(input: str = typer.Option(..., "--input"), output: str = typer.Option(None, "--output"),
                      benchmark: list[str] = typer.Option(..., "--benchmark", help="humaneval | offline | lm-eval:<task> | file"),
                      ngram: int = typer.Option(None, "--ngram"), mode: str = typer.Option(None, "--mode"),
                      key: str = typer.Option(None, "--key"), local: bool = LOCAL, as_json: bool = JSON) -> None:
    """Remove (or flag) rows that overlap an evaluation set, naming the matched items."""
    benches = [_abs(b) if b.endswith((".jsonl", ".json", ".parquet")) else b for b in benchmark]
    _run(_spec(DecontaminateSpec, input=_abs(input) or input, output=_abs(output), benchmarks=benches, ngram=ngram,
               mode=mode, text_key=key), local, as_json)


@data_app.command("score")
def score_cmd(input: str = typer.Option(..., "--input"), output: str = typer.Option(None, "--output"),
              minimum: list[str] = typer.Option([], "--min", help="signal=value, e.g. --min composite=0.8"),
              keep_rejected: bool = typer.Option(False, "--keep-rejected"), key: str = typer.Option(None, "--key"),
              local: bool = LOCAL, as_json: bool = JSON) -> None:
    """Score rows (length, repetition, symbols, format, encoding, composite); drop those below a minimum."""
    mins: dict[str, float] = {}
    for item in minimum:
        name, _, value = item.partition("=")
        try:
            mins[name] = float(value)
        except ValueError:
            raise BadRequest(f"--min {item!r}: expected signal=number", param="min") from None
    _run(_spec(ScoreSpec, input=_abs(input) or input, output=_abs(output), minimums=mins or None,
               keep_rejected=keep_rejected or None, text_key=key), local, as_json)


@data_app.command("filter")
def filter_cmd(input: str = typer.Option(..., "--input"), output: str = typer.Option(None, "--output"),
               column: str = typer.Option(None, "--column"), min: float = typer.Option(None, "--min"),
               max: float = typer.Option(None, "--max"), top_percent: float = typer.Option(None, "--top-percent"),
               local: bool = LOCAL, as_json: bool = JSON) -> None:
    """Keep rows by a score column: thresholds or the top K percent."""
    _run(_spec(FilterSpec, input=_abs(input) or input, output=_abs(output), column=column, min=min, max=max,
               top_percent=top_percent), local, as_json)


@data_app.command("synthesize")
def synthesize_cmd(config: Path = typer.Argument(..., exists=True, dir_okay=False,
                                                 help="YAML: input, output, kind, teacher, verifier, n, ..."),
                   as_json: bool = JSON) -> None:
    """Seeds -> teacher -> verifier -> kept rows (sft) or chosen/rejected pairs (preference), on the stack."""
    body = yaml.safe_load(config.read_text()) or {}
    for k in ("input", "output"):
        if isinstance(body.get(k), str) and not body[k].startswith("dataset:"):
            body[k] = str((config.resolve().parent / body[k]).resolve())
    _run(_spec(SynthesizeSpec, **body), False, as_json)


@data_app.command("inspect")
def inspect_cmd(path: str = typer.Argument(..., help="File or dataset:<id>."), key: str = typer.Option(None, "--key"),
                samples: int = typer.Option(3, "--samples"), local: bool = LOCAL, as_json: bool = JSON) -> None:
    """Counts, formats, length histogram and samples of a data file."""
    req = _spec(InspectRequest, path=_abs(path) or path, text_key=key, samples=samples)
    if local:
        rep = _run_local({"inspect": {"path": req.path, "text_key": key, "samples": samples}})
    else:
        rep = GatewayClient.from_env().post("/api/v1/data/inspect", req.model_dump(mode="json", exclude_defaults=True))
    if as_json:
        print(json.dumps(rep, indent=2))
        return
    console.print(f"[bold]{rep['path']}[/]: {rep['rows']} rows ({rep['bad_rows']} unreadable), "
                  f"{rep['size_bytes']:,} bytes, sha256 {rep['sha256'][:12]}")
    console.print("formats: " + ", ".join(f"{k}={v}" for k, v in rep["formats"].items()))
    console.print("words: " + ", ".join(f"{k} {v:g}" for k, v in rep["words"].items()))
    peak = max((b["count"] for b in rep["histogram"]), default=1)
    for b in rep["histogram"]:
        console.print(f"  {b['lo']:>7}-{b['hi']:<7} {'#' * max(1, 40 * b['count'] // peak)} {b['count']}")
    for p in rep["problems"][:5]:
        console.print(f"[red]{p}[/]")
    for s in rep["samples"]:
        console.print(json.dumps(s, ensure_ascii=False)[:300])


@data_app.command("datasets")
def datasets_cmd(name: str = typer.Option(None, "--name"), limit: int = typer.Option(20, "--limit"),
                 as_json: bool = JSON) -> None:
    """Registered datasets, newest first."""
    data = GatewayClient.from_env().get("/api/v1/data/datasets", name=name, limit=limit)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    t = Table(title=f"{len(data['datasets'])} dataset(s)")
    for col in ("dataset", "name", "rows", "step", "parents", "sha256", "path"):
        t.add_column(col, overflow="fold")
    for d in data["datasets"]:
        t.add_row(d["dataset_id"], d.get("name") or "-", str(d["rows"]), (d.get("recipe") or {}).get("op", "-"),
                  ", ".join(d.get("parents") or []) or "-", d["sha256"][:12], d["path"])
    console.print(t)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
