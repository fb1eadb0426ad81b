"""``halo-forge models``: the tiny-model kit and the catalog of real base models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import typer
import yaml
from halo_common.backend import detect_backend
from halo_common.errors import BadRequest, NotFound, Unprocessable
from rich.console import Console
from rich.table import Table

console = Console()
models_app = typer.Typer(help="Tiny test models and the catalog of real base models.", no_args_is_help=True)


@models_app.command("make-tiny")
def make_tiny(
    out: Path = typer.Argument(..., help="Output directory (must be empty or absent)."),
    arch: str = typer.Option("llama", "--arch", help="llama | qwen2"),
    seq_cls: bool = typer.Option(False, "--seq-cls", help="Sequence-classification head (reward models)."),
    size: str = typer.Option("tiny", "--size", help="tiny (~140K params) | small (~25M params, for benchmarks)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output directory."),
) -> None:
    """Build a tokenizer (trained on text shipped with Halo Forge) and a random-weight model, offline."""
    from halo_models.tiny import make_tiny as build

    if arch not in ("llama", "qwen2"):
        raise BadRequest(f"--arch must be llama or qwen2, got {arch!r}", param="arch")
    if size not in ("tiny", "small"):
        raise BadRequest(f"--size must be tiny or small, got {size!r}", param="size")
    try:
        path = build(out, arch=arch, seq_cls=seq_cls, size=size, overwrite=overwrite)  # type: ignore[arg-type]
    except (FileExistsError, ValueError) as exc:
        raise BadRequest(str(exc), param="out") from None
    console.print(f"[green]built[/] {arch}{' seq-cls' if seq_cls else ''} ({size}) at [bold]{path}[/]")


@models_app.command("list")
def list_models(
    family: str = typer.Option(None, help="Only this family (substring, e.g. qwen)."),
    backend: str = typer.Option(None, help="Show notes for this backend (default: the detected one)."),
) -> None:
    """The catalog: ids, sizes, families and per-backend notes."""
    from halo_models.catalog import load_catalog

    be = backend or str(detect_backend())
    table = Table(title=f"base models (notes for {be})")
    for col in ("id", "family", "params", "context", "license", "gated", f"{be}"):
        table.add_column(col, overflow="fold")
    for m in load_catalog().models:
        if family and family.lower() not in m.family.lower():
            continue
        note = getattr(m.backends, be, None)
        if note is None:
            raise BadRequest(f"unknown backend {be!r}", param="backend")
        table.add_row(m.id, m.family, f"{m.params_b:g}B", str(m.context_length), m.license,
                      "yes" if m.gated else "no", ("" if note.supported else "[red]unsupported[/] ") + note.note)
    console.print(table)


@models_app.command("recommend")
def recommend(
    model_id: str = typer.Argument(..., help="Catalog model id, e.g. Qwen/Qwen2.5-1.5B-Instruct."),
    backend: str = typer.Option(None, help="Backend (default: detected)."),
    memory_gb: float = typer.Option(None, help="Accelerator memory in GB (default: this machine's RAM)."),
) -> None:
    """Training-spec keys for a model on a backend with this much memory: paste them into a
    `halo-forge train sft` spec. Each value is what the trainer then uses; the ones equal to the
    trainer's own default (what it resolves when the key is left out) are marked."""
    from halo_models.catalog import CatalogError, UnknownModelError, auto_dtype, trainer_defaults
    from halo_models.catalog import recommend as rec

    be = backend or str(detect_backend())
    mem = memory_gb or psutil.virtual_memory().total / 2**30
    try:
        r = rec(model_id, be, mem)  # type: ignore[arg-type]
    except UnknownModelError as exc:
        raise NotFound(str(exc), param="model_id") from None
    except CatalogError as exc:
        raise Unprocessable(str(exc), param="backend") from None
    spec = r.spec()
    defaults = trainer_defaults(r.backend, finetune=r.method, lora_rank=r.lora_rank)
    table = Table(title=f"{r.model_id} on {be} with {mem:.0f} GB: spec keys (estimated peak {r.estimated_memory_gb:g} GiB)")
    table.add_column("spec key")
    table.add_column("value")
    table.add_column("trainer default")
    for key, value, default in _flat(spec, defaults):
        table.add_row(key, _show(value), "[green]same[/]" if value == default else _show(default))
    table.add_row("dtype", "auto", auto_dtype(r.backend))
    console.print(table)
    console.print("paste into the spec (YAML):")
    console.print(yaml.safe_dump({"model": r.model_id, **spec}, sort_keys=False).rstrip(), highlight=False, markup=False)
    for note in r.notes:
        console.print(f"  • {note}", highlight=False)


def _flat(spec: dict[str, Any], defaults: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value, trainer default) rows; nested keys (lora.rank) as the spec writes them."""
    rows: list[tuple[str, Any, Any]] = []
    for k, v in spec.items():
        if isinstance(v, dict):
            rows += _flat(v, defaults.get(k) or {}, f"{prefix}{k}.")
        else:
            rows.append((prefix + k, v, defaults.get(k)))
    return rows


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
