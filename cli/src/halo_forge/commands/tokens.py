"""``halo-forge tokens create|list|revoke``: API tokens of this machine's gateway.

Works on the token store under HALO_HOME (``auth/tokens.json``) directly — no gateway needed, and a
running gateway sees a change at once. A new token is printed once; the store keeps only its SHA-256,
its name, creation time and last 4 characters. Once any token exists, the gateway requires one on every
route but ``/health``.
"""

from __future__ import annotations

import sys

import typer
from halo_common.paths import HaloPaths
from halo_common.tokens import CLI_TOKEN_NAME, TokenStore
from rich.console import Console
from rich.table import Table

console = Console()
tokens_app = typer.Typer(help="API tokens of the local gateway (HALO_HOME/auth/tokens.json).", no_args_is_help=True)


def _store() -> TokenStore:
    return TokenStore.for_paths(HaloPaths.from_env())


@tokens_app.command("create")
def create(name: str = typer.Argument(..., help="A unique name, e.g. the machine or person using it.")) -> None:
    """Create a token and print it once (stdout: the token alone, so `$(halo-forge tokens create x)` works)."""
    token, rec = _store().create(name)
    print(f"created token {rec.name!r} (ends …{rec.hint}); it is shown only now:", file=sys.stderr)
    print(token)


@tokens_app.command("list")
def list_tokens() -> None:
    """Names, creation times and last 4 characters of every token (never the tokens themselves)."""
    records = _store().list()
    if not records:
        console.print("no tokens (the gateway needs none while it is bound to loopback without HALO_GATEWAY_TOKEN)")
        return
    table = Table(title="API tokens")
    for col in ("name", "created", "ends with"):
        table.add_column(col)
    for rec in records:
        note = "  [dim](this machine's CLI)[/]" if rec.name == CLI_TOKEN_NAME else ""
        table.add_row(rec.name + note, rec.created_at, "…" + rec.hint)
    console.print(table)


@tokens_app.command("revoke")
def revoke(name: str = typer.Argument(..., help="Name of the token to revoke.")) -> None:
    """Revoke a token: it stops working at once."""
    rec = _store().revoke(name)
    console.print(f"revoked token {rec.name!r} (ended …{rec.hint})")


def register(app: typer.Typer) -> None:
    app.add_typer(tokens_app, name="tokens")
