"""``halo-forge chat MODEL``: a terminal chat that streams replies from a served model."""

from __future__ import annotations

import json

import httpx
import typer
from halo_common.errors import HaloError, Unavailable
from rich.console import Console

from halo_forge.client import GatewayClient

console = Console()


def stream_reply(client: GatewayClient, body: dict) -> str:
    """POST a streaming chat completion and print the tokens as they arrive; returns the reply."""
    reply = []
    try:
        with client.http.stream("POST", "/v1/chat/completions", json=body, timeout=None) as resp:
            if resp.status_code >= 400:
                resp.read()
                client._check(resp)
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise HaloError(chunk["error"].get("message", "generation failed"))
                for choice in chunk.get("choices", []):
                    piece = (choice.get("delta") or {}).get("content") or ""
                    reply.append(piece)
                    console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
    except httpx.TransportError as exc:
        raise Unavailable(f"cannot reach the gateway at {client.describe()} ({exc.__class__.__name__})") from None
    console.print()
    return "".join(reply)


def chat(
    model: str = typer.Argument(..., help="A served model id (see `halo-forge serve list`)."),
    system: str = typer.Option(None, "--system", help="System prompt."),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Longest reply in tokens."),
    temperature: float = typer.Option(0.7, "--temperature"),
    prompt: str = typer.Option(None, "--prompt", "-p", help="Ask one question and exit (no interactive loop)."),
) -> None:
    """Chat with MODEL in the terminal; replies stream token by token. Empty line or Ctrl-D quits."""
    client = GatewayClient.from_env(timeout=900.0)
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    while True:
        if prompt is not None:
            user = prompt
        else:
            try:
                user = console.input("[bold cyan]you>[/] ")
            except (EOFError, KeyboardInterrupt):
                console.print()
                return
            if not user.strip():
                return
        messages.append({"role": "user", "content": user})
        console.print("[bold green]model>[/] ", end="")
        reply = stream_reply(client, {"model": model, "messages": messages, "stream": True,
                                      "max_tokens": max_tokens, "temperature": temperature})
        messages.append({"role": "assistant", "content": reply})
        if prompt is not None:
            return


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
