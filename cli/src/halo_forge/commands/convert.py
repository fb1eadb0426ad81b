"""``halo-forge convert`` (HF / GGUF / MLX exports with a round-trip verify) and ``halo-forge merge
bake|combine`` (adapters). They run in this process (the work is local file I/O and CPU/GPU math),
print a summary table, write ``halo_artifact.json`` beside each output and exit 1 when a verify fails.

    halo-forge convert --list
    halo-forge convert run:run-01J… --format gguf --quant q8
    halo-forge merge bake ./adapter --out ./baked
    halo-forge merge combine ./a ./b --method ties --density 0.5 --bake
"""

from __future__ import annotations

from typing import Any

import typer
from halo_common.errors import BadRequest
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

console = Console()
merge_app = typer.Typer(help="Bake adapters into their base or combine several (PEFT).", no_args_is_help=True)


def _spec(cls: Any, **kw: Any) -> Any:
    from halo_schemas.base import describe_validation_error

    try:
        return cls(**kw)
    except ValidationError as e:
        raise BadRequest(describe_validation_error(e, what="options")) from None


def _summary(m: Any) -> None:
    t = Table(title=f"{m.job}: {m.status}")
    for col in ("kind", "format", "quant", "size", "sha256", "export s", "path"):
        t.add_column(col)
    t.add_row(m.kind, m.format, m.quant or "-", f"{m.size_bytes:,}", m.sha256[:12], f"{m.seconds:.1f}", m.path)
    console.print(t)
    if m.verify is not None:
        r, th = m.verify, m.verify.thresholds
        v = Table(title=f"round-trip verify ({r.runtime}, {r.prompts} prompts, {r.positions} positions, {r.seconds:.1f}s)")
        for col in ("figure", "measured", "limit"):
            v.add_column(col)
        v.add_row("tokenizer agreement", f"{r.tokenizer_agreement:.3f}", f">= {th.min_tokenizer}")
        v.add_row("top-1 agreement", f"{r.top1_agreement:.4f}", f">= {th.min_top1}")
        v.add_row("KL mean (max)", f"{r.kl_mean:.2e} ({r.kl_max:.2e})", f"<= {th.max_kl}")
        v.add_row("greedy agreement", f"{r.greedy_agreement:.3f}", f">= {th.min_greedy}")
        console.print(v)
        for f in r.failures:
            console.print(f"[red]verify: {f}[/]")


def convert_cmd(
    source: str = typer.Argument(None, help="HF dir, adapter dir, run:<run_id> or Hub id."),
    fmt: str = typer.Option("hf", "--format", "-f", help="hf | gguf | mlx"),
    quant: str = typer.Option("fp16", "--quant", "-q", help="fp32 | fp16 | bf16 | q8 | q4 (q8/q4: gguf, mlx)"),
    out: str = typer.Option(None, "--out", "-o", help="Output file/dir (default HALO_HOME/models/...)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Round-trip check against the source."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    list_: bool = typer.Option(False, "--list", help="Show the formats and quantizations this host supports."),
) -> None:
    """Export a model to HF / GGUF / MLX and verify that it computes what the source computes."""
    from halo_serve.core.convert import convert, supported_matrix

    if list_:
        t = Table(title="convert: formats x quantizations on this host")
        t.add_column("format")
        for q in ("fp32", "fp16", "bf16", "q8", "q4"):
            t.add_column(q)
        t.add_column("note")
        for f, row in supported_matrix().items():
            why = next((w for w in row.values() if w), "")
            cells = [("[red]no[/]" if row[q] else "[green]yes[/]") if q in row else "-"
                     for q in ("fp32", "fp16", "bf16", "q8", "q4")]
            t.add_row(f, *cells, why)
        console.print(t)
        return
    if not source:
        raise BadRequest("give a SOURCE (HF dir, adapter dir, run:<id> or Hub id), or --list", param="source")
    from halo_schemas.convert import ConvertSpec

    spec = _spec(ConvertSpec, source=source, format=fmt, quant=quant, out=out, verify=verify, overwrite=overwrite)
    m = convert(spec, progress=lambda msg: console.print(f"[dim]{msg}[/]"))
    _summary(m)
    if m.status == "failed":
        raise typer.Exit(1)


@merge_app.command("bake")
def bake_cmd(
    adapter: str = typer.Argument(..., help="PEFT adapter dir or run:<run_id>."),
    base: str = typer.Option(None, "--base", help="Base model (default: the adapter's base)."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 | fp16 | bf16"),
    out: str = typer.Option(None, "--out", "-o"),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Merge one LoRA/DoRA adapter into its base: a standard HF checkpoint."""
    from halo_schemas.convert import MergeBakeSpec
    from halo_serve.core.convert import bake

    _summary(bake(_spec(MergeBakeSpec, adapter=adapter, base=base, dtype=dtype, out=out, overwrite=overwrite)))


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
) -> None:
    """Combine N adapters with PEFT add_weighted_adapter."""
    from halo_schemas.convert import MergeCombineSpec
    from halo_serve.core.convert import combine

    try:
        w = [float(x) for x in weights.split(",")] if weights else None
    except ValueError:
        raise BadRequest(f"--weights must be comma-separated numbers, got {weights!r}", param="weights") from None
    _summary(combine(_spec(MergeCombineSpec, adapters=adapters, method=method, weights=w, density=density,
                           svd_rank=svd_rank, bake=bake, base=base, out=out, overwrite=overwrite)))


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_cmd)
    app.add_typer(merge_app, name="merge")
