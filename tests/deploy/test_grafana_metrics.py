"""Every Grafana panel query names a metric the services really export: the ``halo_*`` names in the provisioned
dashboards (compose/observability/grafana/dashboards/*.json) must be listed in docs/metrics.md and registered by
the services' own metrics code — the runtime and telemetry metrics of a service started in-process (the
registry, on an in-memory bus) and every service's ``metrics`` module instantiated on a fresh registry."""

from __future__ import annotations

import importlib
import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from halo_bus import InMemoryBus
from halo_registry.service import Registry
from halo_registry.settings import RegistrySettings
from halo_telemetry import setup as telemetry_setup
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "compose/observability/grafana/dashboards").glob("*.json"))
METRIC = re.compile(r"\bhalo_[a-z0-9_]+\b")
#: Series Prometheus derives from one histogram / summary / counter family.
SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def dashboard_metrics() -> dict[str, set[str]]:
    """metric family -> titles of the panels whose queries name it."""
    found: dict[str, set[str]] = {}
    for path in DASHBOARDS:
        doc = json.loads(path.read_text())
        for panel in panels(doc.get("panels", [])):
            for target in panel.get("targets", []):
                for name in METRIC.findall(target.get("expr", "")):
                    for s in SUFFIXES:
                        name = name.removesuffix(s)
                    found.setdefault(name, set()).add(f"{path.name}: {panel.get('title')}")
    return found


def family_names(registry: CollectorRegistry) -> set[str]:
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


async def exported_metrics(tmp_path: Path) -> set[str]:
    names: set[str] = set()
    telemetry = telemetry_setup("registry", metrics_port=None, json_logs=False)
    service = Registry(RegistrySettings(home=tmp_path), InMemoryBus(), telemetry)
    await service.start()
    try:
        names |= family_names(telemetry.registry)
    finally:
        await service.stop()
    for mod_path in sorted(ROOT.glob("services/*/src/halo_*/metrics.py")):
        module = importlib.import_module(f"{mod_path.parent.name}.metrics")
        registry = CollectorRegistry()
        for _, cls in inspect.getmembers(module, inspect.isclass):
            params = list(inspect.signature(cls).parameters)
            if params[:1] == ["registry"] and cls.__name__.endswith(("Metrics", "Meters")):
                cls(registry)
        names |= family_names(registry)
    return names


def test_dashboards_exist_and_query_halo_metrics() -> None:
    assert DASHBOARDS, "no provisioned Grafana dashboard"
    assert len(dashboard_metrics()) >= 5


async def test_every_panel_query_names_an_exported_and_documented_metric(tmp_path: Path) -> None:
    used = dashboard_metrics()
    documented = set(METRIC.findall((ROOT / "docs/metrics.md").read_text()))
    exported = await exported_metrics(tmp_path)
    assert {"halo_rpc_requests_total", "halo_trainer_tokens_total", "halo_http_requests_total"} <= exported
    missing = {m: sorted(p) for m, p in used.items() if m not in exported or m not in documented}
    assert not missing, "panels query metrics no service exports or docs/metrics.md does not list: " + json.dumps(
        {m: {"panels": p, "exported": m in exported, "documented": m in documented} for m, p in missing.items()},
        indent=1)
