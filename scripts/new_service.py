#!/usr/bin/env python3
"""Scaffold a new service that passes the layout test from its first line.

    scripts/new-service NAME [--description TEXT]          (or: just new-service NAME)

writes ``services/NAME/`` (pyproject, README, settings, service, metrics, handlers, core/, tests/), the typed
client ``libs/halo-clients/src/halo_clients/<name>.py``, adds NAME to ``halo_bus.subjects.SERVICES`` and prints
the next steps. ``--root DIR`` writes into another tree (tests use it); ``--no-register`` leaves subjects alone.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def spellings(name: str) -> dict[str, str]:
    """One service, four spellings: folder/subject token, Python package, env prefix, class name."""
    snake = name.replace("-", "_")
    return {"name": name, "snake": snake, "module": f"halo_{snake}", "env": f"HALO_{snake.upper()}_",
            "cls": "".join(part.capitalize() for part in name.split("-"))}


def files(s: dict[str, str], description: str) -> dict[str, str]:
    name, module, env, cls, snake = s["name"], s["module"], s["env"], s["cls"], s["snake"]
    return {
        f"services/{name}/pyproject.toml": f'''[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "halo-{name}"
version = "0.1.0"
description = "Halo Forge {name}: {description}"
requires-python = ">=3.11"
dependencies = ["halo-runtime", "halo-clients"]

[tool.setuptools.packages.find]
where = ["src"]
''',
        f"services/{name}/README.md": f'''# {name}

{description}

Run it with `python -m {module}` (or `halo-forge up`, which starts every installed service). Settings come from
the environment with the prefix `{env}` (see `settings.py`); shared ones keep their `HALO_` names.

| part | what |
|---|---|
| `core/` | the logic, tested without NATS |
| `handlers.py` | bus handlers: parse, call core, map — a few lines each |
| `service.py` | registers the handlers (and job consumers) with the runtime |
| `metrics.py` | Prometheus metrics (list them in docs/metrics.md) |
| `halo_clients.{snake}` | the typed client other services, the gateway and the CLI use |
''',
        f"services/{name}/src/{module}/__init__.py": f'"""Halo Forge {name}: {description}"""\n\n__version__ = "0.1.0"\n',
        f"services/{name}/src/{module}/__main__.py": f'''from {module}.service import {cls}

if __name__ == "__main__":
    {cls}.main()
''',
        f"services/{name}/src/{module}/settings.py": f'''"""Settings of {name} (environment prefix ``{env}``)."""

from __future__ import annotations

from halo_common.settings import HaloSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class {cls}Settings(HaloSettings):
    """Environment: ``{env}*``; shared ``HALO_HOME`` / ``HALO_NATS_URL`` keep their names."""

    model_config = SettingsConfigDict(env_prefix="{env}", extra="ignore", validate_default=True)

    rpc_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of the requests this service makes.")
''',
        f"services/{name}/src/{module}/metrics.py": f'''"""Prometheus metrics of {name} (list each in docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class {cls}Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("halo_{snake}_requests_total", "Requests handled by {name}", ["verb"],
                                registry=registry)
''',
        f"services/{name}/src/{module}/core/__init__.py": f'''"""{name}'s logic: plain functions and classes, tested without NATS or HTTP (tests/test_core.py)."""
''',
        f"services/{name}/src/{module}/handlers.py": f'''"""Bus handlers of {name}: parse (the bus validates the request type), call ``core``, map. A few lines each.

Add a verb: a request/reply model pair in ``halo_schemas.{snake}``, ``declare(...)`` its subject in
``halo_bus.subjects``, a handler here, one line in :func:`endpoints`, and a method on ``halo_clients.{snake}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from {module}.service import {cls}


def endpoints(svc: {cls}) -> list[tuple[str, Callable[[Any], Awaitable[BaseModel]], type[BaseModel]]]:
    """(verb, handler, request type) of every RPC the service serves besides ``health``."""
    return []
''',
        f"services/{name}/src/{module}/service.py": f'''"""The {name} service. ``python -m {module}`` runs it: settings, NATS, health, /metrics, SIGTERM drain."""

from __future__ import annotations

from typing import Any

from halo_runtime import Service
from prometheus_client import CollectorRegistry

from {module} import __version__, handlers
from {module}.metrics import {cls}Metrics
from {module}.settings import {cls}Settings


class {cls}(Service):
    name = "{name}"
    version = __version__
    description = "{description}"
    settings_cls = {cls}Settings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = {cls}Metrics(self.telemetry.registry if self.telemetry else CollectorRegistry())

    async def setup(self) -> None:
        for verb, handler, request_type in handlers.endpoints(self):
            await self.endpoint(verb, handler, request_type)
''',
        f"services/{name}/tests/test_service.py": f'''"""{name} on the in-memory bus and a real nats-server (the ``bus`` fixture runs both)."""

from __future__ import annotations

from halo_bus import Bus
from halo_clients.{snake} import {cls}Client
from {module}.service import {cls}
from {module}.settings import {cls}Settings


async def test_the_service_starts_and_reports_healthy(bus: Bus) -> None:
    svc = {cls}({cls}Settings(), bus)
    await svc.start()
    try:
        health = await {cls}Client(bus).health()
        assert health.service == "{name}" and health.status == "ok"
    finally:
        await svc.stop()
''',
        f"libs/halo-clients/src/halo_clients/{snake}.py": f'''"""Typed client of {name}::

    from halo_clients.{snake} import {cls}Client

    health = await {cls}Client(bus).health()

Each method is one request/reply on a ``halo.rpc.{name}.*`` subject; errors arrive as the service raised them,
an absent service as :class:`~halo_common.errors.Unavailable`.
"""

from __future__ import annotations

from halo_bus import Bus, subjects
from halo_schemas.health import HealthRequest, ServiceHealth


class {cls}Client:
    def __init__(self, bus: Bus, timeout: float = 10.0) -> None:
        self.bus, self.timeout = bus, timeout

    async def health(self) -> ServiceHealth:
        return await self.bus.request(subjects.rpc("{name}", "health"), HealthRequest(), ServiceHealth,
                                      timeout=self.timeout)
''',
    }


def register_subject(root: Path, name: str) -> bool:
    """Add ``name`` to ``SERVICES`` in halo_bus/subjects.py (False when it is already there)."""
    path = root / "libs/halo-bus/src/halo_bus/subjects.py"
    text = path.read_text(encoding="utf-8")
    match = re.search(r"SERVICES: tuple\[str, \.\.\.\] = \((.*?)\n\)", text, re.S)
    if match is None:
        raise SystemExit(f"cannot find SERVICES in {path}")
    if f'"{name}"' in match.group(1):
        return False
    path.write_text(text[:match.end(1)] + f'\n    "{name}",' + text[match.end(1):], encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="service name: lowercase words joined by '-' (e.g. sweeps)")
    parser.add_argument("--description", default="a Halo Forge service", help="one line for the README and pyproject")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="repository root")
    parser.add_argument("--no-register", action="store_true", help="do not add the name to halo_bus.subjects")
    args = parser.parse_args(argv)
    if not NAME_RE.match(args.name):
        parser.error(f"invalid service name {args.name!r}: lowercase words joined by '-', e.g. 'sweeps'")
    s = spellings(args.name)
    target = args.root / "services" / args.name
    if target.exists():
        parser.error(f"{target} already exists")
    for rel, content in files(s, args.description).items():
        path = args.root / rel
        if path.exists():
            parser.error(f"{path} already exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    registered = not args.no_register and register_subject(args.root, args.name)
    print(f"created services/{args.name} and libs/halo-clients/src/halo_clients/{s['snake']}.py")
    if registered:
        print(f"added {args.name!r} to halo_bus.subjects.SERVICES (regenerate docs/messaging.md: just schemas)")
    print(f"next: .venv/bin/pip install -e services/{args.name}; .venv/bin/python -m pytest services/{args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
