"""``halo-forge convert`` (HF / GGUF / MLX exports with a round-trip verify) and ``halo-forge merge
bake|combine`` (adapters). Each submits a job to the serve service through the gateway, follows the
run's events (progress lines, the artifact written) and prints a summary table with the verify figures;
the output is recorded in the registry (``halo-forge artifacts list``). A failed verify exits 1.

    halo-forge convert --list                                   # asks serve what its host supports
    halo-forge convert run:run-01J… --format gguf --quant q8
    halo-forge merge bake ./adapter --out ./baked
    halo-forge merge combine ./a ./b --method ties --density 0.5 --bake
    halo-forge convert ./model --format mlx --quant q4 --detach  # queue it; follow with `halo-forge jobs follow`
"""

from __future__ import annotations

import json
import os
from typing import Any

import typer
from halo_common.errors import BadRequest, HaloError
from halo_schemas.base import UserInput, describe_validation_error
from halo_schemas.convert import ConvertSpec, MergeBakeSpec, MergeCombineSpec
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from halo_forge.client import GatewayClient

console = Console()
merge_app = typer.Typer(help="Bake adapters into their base or combine several (PEFT), as jobs on serve.",
                        no_args_is_help=True)
QUANTS = ("fp32", "fp16", "bf16", "q8", "q4")


def _abs(value: str | None) -> str | None:
    """A local path made absolute against this shell's directory (the service runs elsewhere); ``run:<id>``
    and Hub ids (``org/name`` that is not a local directory) unchanged."""
    if value is None or value.startswith("run:"):
        return value
    expanded = os.path.expanduser(value)
    if os.path.exists(expanded) or value.startswith((".", "/", "~")) or value.endswith(".gguf"):
        return os.path.abspath(expanded)
    return value


def _spec(cls: type[UserInput], **kw: Any) -> dict[str, Any]:
    """Validated here first, so a bad option is one clear line before anything is queued."""
    try:
        return cls(**{k: v for k, v in kw.items() if v is not None}).model_dump(mode="json", exclude_defaults=True)
    except ValidationError as e:
        raise BadRequest(describe_validation_error(e, what="options")) from None


def follow(client: GatewayClient, run_id: str, job_id: str) -> dict[str, Any]:
    """Print the run's progress until it finishes; returns the ``finished`` event's message."""
    try:
        for line in client.stream_lines(f"/api/v1/runs/{run_id}/events"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind, msg = event.get("type"), event.get("message") or {}
            if kind == "started":
                console.print(f"[dim]started on serve ({msg.get('backend')}): {msg.get('base_model')}[/]")
            elif kind == "progressed":
                console.print(f"[dim]step {msg.get('step')}/{msg.get('total_steps')} "
                              f"({(msg.get('metrics') or {}).get('elapsed_s', 0):.1f}s)[/]")
            elif kind == "artifact-added":
                console.print(f"[dim]{msg.get('kind')} written: {msg.get('path')} ({msg.get('status')})[/]")
            elif kind == "finished":
                return msg
    except KeyboardInterrupt:
        console.print(f"\nstopped following; the job keeps running (cancel it with "
                      f"[bold]halo-forge jobs cancel {job_id}[/])")
        raise typer.Exit(130) from None
    raise HaloError(f"the event stream of run {run_id} ended before the run finished")


def summary(m: dict[str, Any], title: str) -> None:
    """The output table and, when verified, the figures next to their limits."""
    t = Table(title=title)
    for col in ("kind", "format", "quant", "size", "sha256", "export s", "path"):
        t.add_column(col, overflow="fold")
    t.add_row(m.get("kind", ""), m.get("format", ""), m.get("quant") or "-", f"{m.get('size_bytes', 0):,}",
              (m.get("sha256") or "")[:12], f"{m.get('seconds', 0):.1f}", m.get("path", ""))
    console.print(t)
    r = m.get("verify")
    if r:
        th = r["thresholds"]
        v = Table(title=f"round-trip verify ({r['runtime']}, {r['prompts']} prompts, {r['positions']} positions, "
                        f"{r['seconds']:.1f}s): {'passed' if r['passed'] else '[red]FAILED[/]'}")
        for col in ("figure", "measured", "limit"):
            v.add_column(col)
        v.add_row("tokenizer agreement", f"{r['tokenizer_agreement']:.3f}", f">= {th['min_tokenizer']}")
        v.add_row("top-1 agreement", f"{r['top1_agreement']:.4f}", f">= {th['min_top1']}")
        v.add_row("KL mean (max)", f"{r['kl_mean']:.2e} ({r['kl_max']:.2e})", f"<= {th['max_kl']}")
        v.add_row("greedy agreement", f"{r['greedy_agreement']:.3f}", f">= {th['min_greedy']}")
        console.print(v)
        for f in r.get("failures") or []:
            console.print(f"[red]verify: {f}[/]")


def _run(path: str, spec: dict[str, Any], detach: bool) -> None:
    client = GatewayClient.from_env()
    submitted = client.post(path, spec)
    job_id, run_id = submitted["job_id"], submitted["run_id"]
    console.print(f"[green]queued[/] job [bold]{job_id}[/] (run {run_id}) on serve")
    if detach:
        console.print(f"follow it with [bold]halo-forge jobs follow {job_id}[/]")
        return
    final = follow(client, run_id, job_id)
    state = final.get("state")
    if final.get("summary", {}).get("path"):
        summary(final["summary"], f"{final['summary'].get('job', '')}: {final['summary'].get('status')}")
    if state != "succeeded":
        raise HaloError(f"job {job_id} {state}: {final.get('error') or 'no reason given'}")


def show_formats(formats: dict[str, dict[str, str | None]], host: str) -> None:
    t = Table(title=f"convert: formats x quantizations on {host or 'the serve host'}")
    t.add_column("format")
    for q in QUANTS:
        t.add_column(q)
    t.add_column("note")
    for f, row in formats.items():
        why = next((w for w in row.values() if w), "")
        cells = [("[red]no[/]" if row[q] else "[green]yes[/]") if q in row else "-" for q in QUANTS]
        t.add_row(f, *cells, why)
    console.print(t)


def convert_cmd(
    source: str = typer.Argument(None, help="HF dir, adapter dir, run:<run_id> or Hub id."),
    fmt: str = typer.Option("hf", "--format", "-f", help="hf | gguf | mlx"),
    quant: str = typer.Option("fp16", "--quant", "-q", help="fp32 | fp16 | bf16 | q8 | q4 (q8/q4: gguf, mlx)"),
    out: str = typer.Option(None, "--out", "-o", help="Output file/dir (default HALO_HOME/models/...)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Round-trip check against the source."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Queue the job and return."),
    list_: bool = typer.Option(False, "--list", help="Show the formats and quantizations the serve host supports."),
) -> None:
    """Export a model to HF / GGUF / MLX and verify that it computes what the source computes."""
    if list_:
        found = GatewayClient.from_env().get("/api/v1/convert/formats")
        show_formats(found["formats"], found.get("host", ""))
        return
    if not source:
        raise BadRequest("give a SOURCE (HF dir, adapter dir, run:<id> or Hub id), or --list", param="source")
    spec = _spec(ConvertSpec, source=_abs(source), format=fmt, quant=quant, out=_abs(out), verify=verify,
                 overwrite=overwrite)
    _run("/api/v1/convert", spec, detach)


@merge_app.command("bake")
def bake_cmd(
    adapter: str = typer.Argument(..., help="PEFT adapter dir or run:<run_id>."),
    base: str = typer.Option(None, "--base", help="Base model (default: the adapter's base)."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 | fp16 | bf16"),
    out: str = typer.Option(None, "--out", "-o"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    detach: bool = typer.Option(False, "--detach", "-d", help="Queue the job and return."),
) -> None:
    """Merge one LoRA/DoRA adapter into its base: a standard HF checkpoint."""
    spec = _spec(MergeBakeSpec, adapter=_abs(adapter), base=_abs(base), dtype=dtype, out=_abs(out),
                 overwrite=overwrite)
    _run("/api/v1/merge/bake", spec, detach)


@merge_app.command("combine")
def combine_cmd(
    adapters: list[str] = typer.Argument(..., help="Adapter dirs or run:<id> (same base)."),
    method: str = typer.Option("linear", "--method", help="linear | ties | dare_linear | dare_ties | magnitude_prune"),
    weights: str = typer.Option(None, "--weights", help="Comma-separated, one per adapter (default uniform)."),
    density: float = typer.Option(None, "--density", help="Kept fraction for ties/dare/magnitude_prune."),
    svd_rank: int = typer.Option(None, "--svd-rank", help="Result rank via SVD (mixed ranks)."),
    bake: bool = typer.Option(False, "--bake", help="Write one merged HF checkpoint instead of an adapter."),
    base: str = typer.Option(None, "--base"),
    out: str = typer.Option(None, "--out", "-o"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    detach: bool = typer.Option(False, "--detach", "-d", help="Queue the job and return."),
) -> None:
    """Combine N adapters with PEFT add_weighted_adapter."""
    try:
        w = [float(x) for x in weights.split(",")] if weights else None
    except ValueError:
        raise BadRequest(f"--weights must be comma-separated numbers, got {weights!r}", param="weights") from None
    spec = _spec(MergeCombineSpec, adapters=[_abs(a) for a in adapters], method=method, weights=w, density=density,
                 svd_rank=svd_rank, bake=bake, base=_abs(base), out=_abs(out), overwrite=overwrite)
    _run("/api/v1/merge/combine", spec, detach)


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_cmd)
    app.add_typer(merge_app, name="merge")
