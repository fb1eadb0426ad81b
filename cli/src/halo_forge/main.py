"""Root of the ``halo-forge`` command.

Each module in :mod:`halo_forge.commands` exposes ``register(app)`` and adds its commands or
sub-apps; all are registered automatically. Commands talk to the gateway over HTTP through
:class:`halo_forge.client.GatewayClient`. Any :class:`HaloError` ends the command with one red
line and exit code 1; bad usage exits 2 (Typer's convention).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer
from halo_common.errors import HaloError
from rich.console import Console

from halo_forge import __version__, commands

app = typer.Typer(
    name="halo-forge",
    help="Halo Forge: finetune, evaluate, serve and export models on your own machine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        print(f"halo-forge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Halo Forge command line."""


for _mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
    _module = importlib.import_module(f"{commands.__name__}.{_mod.name}")
    if hasattr(_module, "register"):
        _module.register(app)


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except HaloError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)
if __name__ == "__main__":
    main()
