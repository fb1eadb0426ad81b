"""``halo-forge serve``: serve models over the OpenAI API (through the gateway at ``/v1``).

::

    halo-forge serve --model ./out/merged --adapter sql=run:run-abc    # register + load (starts the stack)
    halo-forge serve list
    halo-forge serve load ./model.gguf --id small-gguf
    halo-forge serve unload small-gguf
"""

from __future__ import annotations

from typing import Any

import typer
from halo_common.errors import BadRequest
from rich.console import Console
from rich.table import Table

from halo_forge.client import GatewayClient

console = Console()
serve_app = typer.Typer(help="Serve models and adapters over the OpenAI-compatible API (/v1 on the gateway).",
                        invoke_without_command=True)


def _client(start: bool) -> GatewayClient:
    if start:
        from halo_forge.stack import ensure_up

        ensure_up()
    return GatewayClient.from_env(timeout=900.0)


def _load(client: GatewayClient, body: dict[str, Any]) -> dict[str, Any]:
    return client.post("/api/v1/serve/models", {k: v for k, v in body.items() if v is not None})


def _split(assignment: str) -> tuple[str | None, str]:
    if "=" in assignment:
        name, _, value = assignment.partition("=")
        if not name or not value:
            raise BadRequest(f"--adapter wants NAME=PATH or NAME=run:<id>, got {assignment!r}", param="adapter")
        return name, value
    return None, assignment


def _show(models: list[dict[str, Any]]) -> None:
    table = Table(title="served models")
    for col in ("id", "base", "format", "backend", "loaded", "memory"):
        table.add_column(col, overflow="fold")
    for m in models:
        mem = m.get("memory_bytes")
        table.add_row(m["id"], m.get("base") or "", m["format"], m["backend"], "yes" if m["loaded"] else "no",
                      f"{mem / 1e6:.1f} MB" if mem else "")
    console.print(table)


@serve_app.callback()
def serve(
    ctx: typer.Context,
    model: str = typer.Option(None, "--model", "-m", help="Model: directory, .gguf file, Hub id or run:<run_id>."),
    model_id: str = typer.Option(None, "--id", help="Id clients use for --model (default: the --model string)."),
    adapter: list[str] = typer.Option(None, "--adapter", "-a", help="NAME=PATH or NAME=run:<id> (repeatable)."),
    backend: str = typer.Option(None, "--backend", help="Force a backend: transformers, llamacpp, mlx."),
    fmt: str = typer.Option("auto", "--format", help="auto | hf | gguf | mlx"),
) -> None:
    """Register and load a model (and adapters over it); starts the local stack when it is not up."""
    if ctx.invoked_subcommand is not None:
        return
    if not model and not adapter:
        raise BadRequest("give --model (and optionally --adapter NAME=PATH), or a subcommand: list, load, unload",
                         param="model")
    client = _client(start=True)
    loaded = []
    if model:
        loaded.append(_load(client, {"id": model_id, "model": model, "format": fmt, "backend": backend}))
    for a in adapter or []:
        name, path = _split(a)
        loaded.append(_load(client, {"id": name, "adapter": path, "model": loaded[0]["id"] if loaded else None}))
    _show(loaded)
    console.print(f"OpenAI API: [bold]{client.base_url}/v1[/]  (e.g. `halo-forge chat {loaded[0]['id']}`)")


@serve_app.command("list")
def list_models() -> None:
    """Every model id serve knows, loaded or not."""
    _show(_client(start=False).get("/api/v1/serve/models")["models"])


@serve_app.command("load")
def load(
    model: str = typer.Argument(..., help="Directory, .gguf file, Hub id or run:<run_id>."),
    model_id: str = typer.Option(None, "--id", help="Id clients use (default: MODEL)."),
    adapter: str = typer.Option(None, "--adapter", help="Serve this adapter (path or run:<id>) over MODEL."),
    backend: str = typer.Option(None, "--backend", help="Force a backend."),
    fmt: str = typer.Option("auto", "--format", help="auto | hf | gguf | mlx"),
) -> None:
    """Register a model (or an adapter over MODEL) and load it now."""
    body = {"id": model_id, "model": model, "adapter": adapter, "format": fmt, "backend": backend}
    _show([_load(_client(start=False), body)])


@serve_app.command("unload")
def unload(model_id: str = typer.Argument(...), forget: bool = typer.Option(False, help="Also forget the id.")) -> None:
    """Free a model's memory (a base model unloads with its adapters)."""
    _show(_client(start=False).delete(f"/api/v1/serve/models/{model_id}", forget=str(forget).lower())["models"])


def register(app: typer.Typer) -> None:
    app.add_typer(serve_app, name="serve")
