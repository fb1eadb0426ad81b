"""Deployment packaging stays in step with the services: compose/, containers/, helm/.

The list of services is derived, not written here: the planned ones come from
``halo_bus.subjects.SERVICES`` and the existing ones are the folders under ``services/`` with a
``src/halo_<svc>/__main__.py``. So a colleague adding a service folder makes these tests fail until
compose, the Helm values, Prometheus and a Containerfile know it — and an entry for a planned
service is only checked against code once that code exists.

One service, four spellings (DESIGN.md §2) are checked everywhere: ``trainer-torch`` (folder,
compose service, image) · ``halo_trainer_torch`` (module) · ``trainerTorch`` (Helm key) ·
``HALO_TRAINER_TORCH_`` (settings prefix).

No Docker, Podman or Helm is needed (none is on CI); where ``helm`` is on PATH the chart is also
linted and rendered.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from halo_bus.subjects import SERVICES as PLANNED

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
CONTAINERS = ROOT / "containers"
CHART = ROOT / "helm" / "halo-forge"

ACCELERATOR_SERVICES = ("trainer-torch", "rollout", "serve")
VARIANTS = ("slim", "cpu", "cuda", "rocm")
HALO_HOME = "/var/lib/halo"
METRICS_PORT = "9400"
# Settings every service shares (HaloSettings keeps their HALO_ names); anything else starting
# with HALO_ in a service's environment must carry that service's own prefix.
SHARED_ENV = {"HALO_NATS_URL", "HALO_NATS_USER", "HALO_NATS_PASSWORD", "HALO_DATABASE_URL", "HALO_HOME",
              "HALO_LOG_LEVEL", "HALO_LOG_JSON"}
# Metrics the dashboard shows before the services that will export them exist. Keep this list
# short: each name is what the owning service is asked to export (see compose/README.md).
PLANNED_METRICS = {"halo_train_loss", "halo_train_tokens_total"}


# ---- the four spellings ----------------------------------------------------------------------------
def module_of(folder: str) -> str:
    return "halo_" + folder.replace("-", "_")


def env_prefix_of(folder: str) -> str:
    return "HALO_" + folder.upper().replace("-", "_") + "_"


def camel_of(folder: str) -> str:
    first, *rest = folder.split("-")
    return first + "".join(p.capitalize() for p in rest)


def kebab_of(key: str) -> str:
    """What sprig's ``kebabcase`` (used by the chart) makes of a camelCase values key."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", key).lower()


def existing_services() -> dict[str, Path]:
    """Service folders that are runnable today (``python -m halo_<svc>`` has a __main__)."""
    out = {}
    for d in sorted((ROOT / "services").iterdir()):
        main = d / "src" / module_of(d.name) / "__main__.py"
        if main.is_file():
            out[d.name] = main
    return out


EXISTING = existing_services()
ALL_SERVICES = sorted(set(PLANNED) | set(EXISTING))


def test_service_folders_follow_the_spellings() -> None:
    """A __main__ under a package not named after its folder would be invisible to everything
    below (and to `python -m halo_<folder>` in the images)."""
    for d in sorted((ROOT / "services").iterdir()):
        if not (d / "pyproject.toml").is_file():
            continue
        mains = sorted(p.parent.name for p in (d / "src").glob("*/__main__.py"))
        assert mains in ([], [module_of(d.name)]), (
            f"services/{d.name}: __main__ found in {mains}, expected {module_of(d.name)}"
        )
        assert re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", d.name), f"services/{d.name}: folder must be kebab-case"
    assert "gateway" in EXISTING  # the derivation above works at all


@pytest.mark.parametrize("folder", sorted(EXISTING))
def test_settings_prefix_matches_folder(folder: str) -> None:
    """The fourth spelling lives in code: the service's settings class reads HALO_<SVC>_*."""
    settings = ROOT / "services" / folder / "src" / module_of(folder) / "settings.py"
    assert settings.is_file(), f"{settings.relative_to(ROOT)} missing (conventions: settings.py per service)"
    prefixes = re.findall(r"env_prefix\s*=\s*[\"'](HALO_[A-Z0-9_]+)[\"']", settings.read_text())
    assert prefixes == [env_prefix_of(folder)], (
        f"{settings.relative_to(ROOT)}: env_prefix {prefixes}, expected {env_prefix_of(folder)}"
    )


# ---- compose ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())


def halo_services_in(compose: dict[str, Any]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """folder -> [(compose service name, definition)] via the io.halo-forge.service label."""
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, svc in compose["services"].items():
        folder = (svc.get("labels") or {}).get("io.halo-forge.service")
        if folder:
            out.setdefault(folder, []).append((name, svc))
    return out


def env_of(svc: dict[str, Any]) -> dict[str, Any]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def test_compose_infrastructure(compose: dict[str, Any]) -> None:
    nats = compose["services"]["nats"]
    assert nats["image"].startswith("nats:2.10")
    assert "-js" in nats["command"]
    assert "-sd" in nats["command"] and nats["command"][nats["command"].index("-sd") + 1] == "/data"
    assert "nats:/data" in nats["volumes"] and "nats" in compose["volumes"]
    assert "healthcheck" in nats
    pg = compose["services"]["postgres"]
    assert pg["image"] == "postgres:16"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert pg["environment"]["POSTGRES_DB"] == "halo" and pg["environment"]["POSTGRES_USER"] == "halo"
    assert "artifacts" in compose["volumes"]


NATS_CONF = "/etc/nats/halo-nats.conf"
NATS_ENV_FILE = ".nats.env"


def test_compose_nats_requires_credentials(compose: dict[str, Any]) -> None:
    """NATS is no side door: the server runs with a config that requires a user and password, and
    every Halo service (and nothing else) gets them from the generated env file."""
    nats = compose["services"]["nats"]
    cmd = nats["command"]
    assert cmd[cmd.index("-c") + 1] == NATS_CONF
    mounts = {v.split(":")[1]: v for v in nats["volumes"]}
    src, _dst, mode = mounts[NATS_CONF].split(":")
    assert mode == "ro"
    conf = (COMPOSE_DIR / src).read_text()
    block = re.search(r"^authorization\s*\{(.*?)^\}", conf, re.S | re.M)
    assert block, "halo-nats.conf has no authorization block"
    assert re.search(r"^\s*user:\s*\$HALO_NATS_USER\s*$", block.group(1), re.M)
    assert re.search(r"^\s*password:\s*\$HALO_NATS_PASSWORD\s*$", block.group(1), re.M)
    assert NATS_ENV_FILE in nats["env_file"]
    for entries in halo_services_in(compose).values():
        for name, svc in entries:
            assert NATS_ENV_FILE in (svc.get("env_file") or []), f"compose {name}: no {NATS_ENV_FILE}"
            assert "@" not in env_of(svc)["HALO_NATS_URL"], f"compose {name}: credentials in HALO_NATS_URL"
    assert NATS_ENV_FILE in (COMPOSE_DIR / ".gitignore").read_text().split()


def test_compose_gateway_always_has_a_token_and_accepts_its_service_name(compose: dict[str, Any]) -> None:
    """Bound to 0.0.0.0 in its container the gateway requires a token: compose hands it one from the
    generated .gateway.env (never a value in compose.yaml), and other containers may call it as 'gateway'."""
    gateway = compose["services"]["gateway"]
    assert ".gateway.env" in gateway["env_file"] and NATS_ENV_FILE in gateway["env_file"]
    env = env_of(gateway)
    assert "HALO_GATEWAY_TOKEN" not in env, "the token comes from the env file, never from compose.yaml"
    assert env["HALO_GATEWAY_HOST"] == "0.0.0.0" and env["HALO_GATEWAY_ALLOWED_HOSTS"] == "gateway"
    assert ".gateway.env" in (COMPOSE_DIR / ".gitignore").read_text().split()


def test_compose_init_secrets_makes_credentials_the_server_requires(tmp_path: Path) -> None:
    """Run compose/init-secrets.sh, then a real nats-server with compose's config and that env file:
    anonymous clients are refused, the generated credentials work, and without them the server
    does not start at all."""
    import asyncio

    import nats
    from halo_common.natsproc import find_nats_server, free_port, wait_for_port

    env_file = tmp_path / NATS_ENV_FILE
    gateway_env = tmp_path / ".gateway.env"
    run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HALO_NATS_ENV_FILE": str(env_file),
               "HALO_GATEWAY_ENV_FILE": str(gateway_env)}
    first = subprocess.run(["sh", str(COMPOSE_DIR / "init-secrets.sh")], env=run_env, capture_output=True, text=True,
                           timeout=30)
    assert first.returncode == 0, first.stderr
    assert oct(env_file.stat().st_mode & 0o777) == oct(0o600)
    creds = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert set(creds) == {"HALO_NATS_USER", "HALO_NATS_PASSWORD"} and len(creds["HALO_NATS_PASSWORD"]) >= 32
    assert creds["HALO_NATS_PASSWORD"] not in first.stdout + first.stderr
    token = dict(line.split("=", 1) for line in gateway_env.read_text().splitlines())["HALO_GATEWAY_TOKEN"]
    assert token.startswith("hfk_") and len(token) >= 40 and oct(gateway_env.stat().st_mode & 0o777) == oct(0o600)
    assert token not in first.stdout + first.stderr
    again = subprocess.run(["sh", str(COMPOSE_DIR / "init-secrets.sh")], env=run_env, capture_output=True, text=True,
                           timeout=30)
    assert again.returncode == 0 and dict(line.split("=", 1) for line in env_file.read_text().splitlines()) == creds
    assert f"HALO_GATEWAY_TOKEN={token}" in gateway_env.read_text(), "a rerun keeps the token"

    conf = str(COMPOSE_DIR / "nats" / "halo-nats.conf")
    port = free_port()
    base = [find_nats_server(), "-c", conf, "-a", "127.0.0.1", "-p", str(port)]
    # Without the variables the server refuses to start (it never runs open).
    bare = subprocess.run(base, env={"PATH": run_env["PATH"]}, capture_output=True, text=True, timeout=30)
    assert bare.returncode != 0 and "HALO_NATS_USER" in bare.stdout + bare.stderr
    server = subprocess.Popen(base, env={"PATH": run_env["PATH"], **creds}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        assert wait_for_port("127.0.0.1", port, 10)

        async def probe() -> tuple[str, bool]:
            async def quiet(_e: Exception) -> None:
                pass

            url = f"nats://127.0.0.1:{port}"
            try:
                await nats.connect(url, allow_reconnect=False, error_cb=quiet)
                refused = "connected without credentials"
            except Exception as exc:  # noqa: BLE001 - the refusal is what we look at
                refused = str(exc)
            nc = await nats.connect(url, allow_reconnect=False, error_cb=quiet, user=creds["HALO_NATS_USER"],
                                    password=creds["HALO_NATS_PASSWORD"])
            ok = nc.is_connected
            await nc.close()
            return refused, ok

        refused, ok = asyncio.run(probe())
        assert "Authorization Violation" in refused and ok
    finally:
        server.terminate()
        server.wait(10)


def test_every_service_is_in_compose(compose: dict[str, Any]) -> None:
    """Existing services (and the planned ones, so nothing is forgotten) have a compose service."""
    found = halo_services_in(compose)
    missing = [s for s in ALL_SERVICES if s not in found]
    assert not missing, f"services missing from compose/compose.yaml: {missing}"
    unknown = [s for s in found if s not in ALL_SERVICES]
    assert not unknown, f"compose services for unknown service folders: {unknown}"


@pytest.mark.parametrize("folder", ALL_SERVICES)
def test_compose_service_definition(compose: dict[str, Any], folder: str) -> None:
    entries = halo_services_in(compose).get(folder, [])
    assert entries, f"{folder} is not in compose.yaml"
    prefix = env_prefix_of(folder)
    for name, svc in entries:
        where = f"compose service {name!r}"
        variant = svc["labels"].get("io.halo-forge.variant")
        assert variant in VARIANTS, f"{where}: io.halo-forge.variant {variant!r}"
        assert name in (folder, f"{folder}-{variant}"), f"{where}: name must be {folder!r} or {folder}-<variant>"
        if name != folder:
            aliases = svc["networks"]["default"]["aliases"]
            assert folder in aliases, (
                f"{where}: needs network alias {folder!r} so it is reachable by the service's name"
            )
        assert svc["command"] == ["python", "-m", module_of(folder)], f"{where}: command"
        if folder in EXISTING:
            assert EXISTING[folder].is_file()

        env = env_of(svc)
        assert env["HALO_NATS_URL"] == "nats://nats:4222", where
        assert str(env["HALO_DATABASE_URL"]).startswith("postgresql+psycopg://"), where
        assert "@postgres:5432/" in str(env["HALO_DATABASE_URL"]), where
        assert env["HALO_HOME"] == HALO_HOME, where
        assert str(env[f"{prefix}METRICS_PORT"]) == METRICS_PORT, f"{where}: {prefix}METRICS_PORT"
        assert env[f"{prefix}METRICS_HOST"] == "0.0.0.0", f"{where}: {prefix}METRICS_HOST"
        stray = [k for k in env if k.startswith("HALO_") and k not in SHARED_ENV and not k.startswith(prefix)]
        assert not stray, f"{where}: HALO_ variables without the {prefix} prefix: {stray}"

        assert f"artifacts:{HALO_HOME}" in svc["volumes"], f"{where}: artifacts volume at HALO_HOME"
        assert svc["depends_on"]["nats"]["condition"] == "service_healthy", where

        build = svc["build"]
        assert build["args"]["SERVICE"] == folder, f"{where}: build arg SERVICE"
        containerfile = (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve()
        assert containerfile.is_file(), f"{where}: {containerfile} missing"
        assert folder in containerfile_services(containerfile), f"{where}: {containerfile.name} does not list {folder}"
        expected_file = {
            "slim": "Containerfile.slim",
            "cpu": "Containerfile.cpu",
            "cuda": "Containerfile.cuda",
            "rocm": "Containerfile.rocm",
        }[variant]
        assert containerfile.name == expected_file, f"{where}: variant {variant} must build {expected_file}"


def test_compose_accelerator_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    profiles = {p for svc in services.values() for p in svc.get("profiles", [])}
    assert {"cpu", "cuda", "rocm"} <= profiles
    for folder in ACCELERATOR_SERVICES:
        cpu, cuda, rocm = services[folder], services[f"{folder}-cuda"], services[f"{folder}-rocm"]
        assert cpu["profiles"] == ["cpu"] and cuda["profiles"] == ["cuda"] and rocm["profiles"] == ["rocm"], folder
        devices = cuda["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), (
            f"{folder}-cuda: nvidia GPU reservation"
        )
        assert {"/dev/kfd", "/dev/dri"} <= set(rocm["devices"]), f"{folder}-rocm: /dev/kfd and /dev/dri"
        assert "video" in rocm["group_add"], f"{folder}-rocm: group_add video"
    # The always-on services have no profile, so `docker compose up` alone starts a usable core.
    for folder in ("gateway", "registry", "verifier-sandbox", "eval"):
        assert "profiles" not in services[folder], folder


def published_ports(svc: dict[str, Any]) -> list[tuple[str | None, str]]:
    out = []
    for p in svc.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip"), str(p.get("published"))))
        else:
            parts = str(p).split(":")
            out.append((parts[0] if len(parts) == 3 else None, parts[-2] if len(parts) >= 2 else parts[0]))
    return out


@pytest.mark.parametrize("file", ["compose.yaml", "observability.yaml"])
def test_published_ports_are_loopback_only(file: str) -> None:
    doc = yaml.safe_load((COMPOSE_DIR / file).read_text())
    for name, svc in doc["services"].items():
        for host_ip, port in published_ports(svc):
            assert host_ip == "127.0.0.1", f"{file}: {name} publishes {port} on {host_ip or 'all interfaces'}"
    if file == "compose.yaml":
        assert ("127.0.0.1", "8420") in published_ports(doc["services"]["gateway"])
        assert env_of(doc["services"]["gateway"])["HALO_GATEWAY_HOST"] == "0.0.0.0"


def test_observability_overlay() -> None:
    overlay = yaml.safe_load((COMPOSE_DIR / "observability.yaml").read_text())
    base = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    # include-able: it adds services and never redefines one of compose.yaml's
    assert not set(overlay["services"]) & set(base["services"])
    assert {"prometheus", "grafana", "otel-collector"} <= set(overlay["services"])
    for name, svc in overlay["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (COMPOSE_DIR / src).exists(), f"observability.yaml: {name} mounts missing {src}"

    prom = yaml.safe_load((COMPOSE_DIR / "observability" / "prometheus.yml").read_text())
    halo_job = next(j for j in prom["scrape_configs"] if j["job_name"] == "halo")
    sd = halo_job["dns_sd_configs"][0]
    assert str(sd["port"]) == METRICS_PORT
    missing = [s for s in ALL_SERVICES if s not in sd["names"]]
    assert not missing, f"prometheus.yml does not scrape {missing}"
    assert any(r.get("target_label") == "service" for r in halo_job["relabel_configs"])

    otel = yaml.safe_load((COMPOSE_DIR / "observability" / "otel-collector.yaml").read_text())
    assert {"grpc", "http"} <= set(otel["receivers"]["otlp"]["protocols"])
    pipelines = otel["service"]["pipelines"]
    assert "debug" in pipelines["traces"]["exporters"]
    assert "prometheus" in pipelines["metrics"]["exporters"]
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            for comp in pipeline.get(kind, []):
                assert comp in otel[kind], f"otel-collector: pipeline uses undefined {kind[:-1]} {comp!r}"
    prom_port = otel["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    otel_job = next(j for j in prom["scrape_configs"] if j["job_name"] == "otel-collector")
    assert otel_job["static_configs"][0]["targets"] == [f"otel-collector:{prom_port}"]


def metric_names_in_code() -> set[str]:
    names: set[str] = set()
    for base in ("libs", "services"):
        for py in (ROOT / base).rglob("*.py"):
            names |= set(re.findall(r"[\"'](halo_[a-z0-9_]+)[\"']", py.read_text(errors="replace")))
    metrics_md = ROOT / "docs" / "metrics.md"
    if metrics_md.is_file():
        names |= set(re.findall(r"`(halo_[a-z0-9_]+)`", metrics_md.read_text()))
    return names


def test_grafana_dashboard_and_datasource() -> None:
    ds = yaml.safe_load((COMPOSE_DIR / "observability/grafana/provisioning/datasources/prometheus.yaml").read_text())
    uid = ds["datasources"][0]["uid"]
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(
        (COMPOSE_DIR / "observability/grafana/provisioning/dashboards/halo-forge.yaml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"

    dash = json.loads((COMPOSE_DIR / "observability/grafana/dashboards/halo-forge.json").read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    titles = " ".join(p["title"].lower() for p in panels)
    # Loss is a per-run series (the registry and the dashboard show it), not a Prometheus metric.
    for topic in ("optimizer steps", "tokens/s", "verifier", "utilisation"):
        assert topic in titles, f"dashboard has no {topic} panel"
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    for p in panels:
        assert p["datasource"]["uid"] == uid, p["title"]
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"\bhalo_[a-z0-9_]+", e)}
    known = metric_names_in_code()
    unknown = used - known - PLANNED_METRICS
    assert not unknown, f"dashboard queries metrics no code defines: {sorted(unknown)}"
    for core in (
        "halo_rpc_requests_total",
        "halo_rpc_duration_seconds",
        "halo_accelerator_utilization_ratio",
        "halo_accelerator_memory_used_bytes",
        "halo_accelerator_power_watts",
    ):
        assert core in used, f"dashboard does not show {core}"
        assert core in known, f"{core} is no longer defined in code: update the dashboard"


# ---- containers ------------------------------------------------------------------------------------
CONTAINERFILES = sorted(CONTAINERS.glob("Containerfile.*"))


def containerfile_services(path: Path) -> list[str]:
    m = re.search(r"^# halo-services:(.*)$", path.read_text(), re.M)
    assert m, f"{path.name}: no '# halo-services:' line"
    return m.group(1).split()


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        buf += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    assert not buf, f"{path.name}: dangling line continuation"
    return out


def test_containerfiles_cover_every_service() -> None:
    names = {p.name for p in CONTAINERFILES}
    assert {"Containerfile.slim", "Containerfile.cpu", "Containerfile.cuda", "Containerfile.rocm"} <= names
    covered = {s for p in CONTAINERFILES for s in containerfile_services(p)}
    missing = [s for s in ALL_SERVICES if s not in covered]
    assert not missing, f"no Containerfile builds {missing}"
    for variant in ("cpu", "cuda", "rocm"):
        listed = containerfile_services(CONTAINERS / f"Containerfile.{variant}")
        assert set(ACCELERATOR_SERVICES) <= set(listed), f"Containerfile.{variant} must build {ACCELERATOR_SERVICES}"
    slim = containerfile_services(CONTAINERS / "Containerfile.slim")
    for s in ("gateway", "registry", "verifier-sandbox", "data", "sweeps"):
        assert s in slim, f"Containerfile.slim must build {s}"
    assert "eval" in containerfile_services(CONTAINERS / "Containerfile.cpu"), "eval needs torch: the CPU image"
    for s in slim:
        assert s not in ACCELERATOR_SERVICES, f"Containerfile.slim must not build {s} (it needs torch)"


def needs_torch(folder: str) -> bool:
    """Whether the service or a local lib it depends on requires torch."""
    import tomllib

    local_deps = _load_local_deps()
    for path in local_deps.closure(ROOT / "services" / folder, root=ROOT):
        deps = tomllib.loads((path / "pyproject.toml").read_text())["project"].get("dependencies", [])
        if any(re.match(r"torch\b", d.strip()) for d in deps):
            return True
    return False


@pytest.mark.parametrize("folder", sorted(EXISTING))
def test_torch_services_use_an_accelerator_image(folder: str) -> None:
    """A service that needs torch is never built from the slim image (whose build also refuses it)."""
    if not needs_torch(folder):
        return
    assert folder not in containerfile_services(CONTAINERS / "Containerfile.slim"), folder
    compose = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    for name, svc in halo_services_in(compose).get(folder, []):
        assert svc["labels"]["io.halo-forge.variant"] != "slim", f"compose {name}: {folder} needs torch"
    helm_values = yaml.safe_load((CHART / "values.yaml").read_text())["services"][camel_of(folder)]
    assert helm_values.get("variant", "slim") != "slim", f"helm services.{camel_of(folder)}: {folder} needs torch"


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.name)
def test_containerfile(path: Path) -> None:
    ins = instructions(path)
    listed = containerfile_services(path)
    for s in listed:
        assert s in ALL_SERVICES, f"{path.name} lists unknown service {s!r}"
    kinds = [k for k, _ in ins]
    assert kinds.count("FROM") >= 1 and kinds[0] in ("ARG", "FROM")

    args = [a for k, a in ins if k == "ARG" and a.startswith("SERVICE=")]
    assert args, f"{path.name}: no ARG SERVICE=<default>"
    for a in args:
        assert a.split("=", 1)[1] in listed, f"{path.name}: default {a} is not in its halo-services list"

    final_stage = ins[max(i for i, (k, _) in enumerate(ins) if k == "FROM") :]
    users = [a for k, a in final_stage if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), (
        f"{path.name}: final image must run as a non-root USER"
    )
    assert any(k == "HEALTHCHECK" and "healthcheck.py" in a for k, a in final_stage), f"{path.name}: HEALTHCHECK"
    entry = [a for k, a in final_stage if k == "ENTRYPOINT"]
    assert entry and "halo-entrypoint" in entry[-1], f"{path.name}: ENTRYPOINT must be the halo entrypoint"
    envs = " ".join(a for k, a in final_stage if k == "ENV")
    assert "HALO_SERVICE=${SERVICE}" in envs and f"HALO_HOME={HALO_HOME}" in envs, (
        f"{path.name}: ENV HALO_SERVICE/HALO_HOME"
    )

    # Every COPY source exists in the build context (the repository root), for each service the
    # file builds that exists today.
    for s in [x for x in listed if x in EXISTING] or [None]:
        for k, a in ins:
            if k != "COPY" or "--from=" in a:
                continue
            *sources, _dest = [t for t in a.split() if not t.startswith("--")]
            for src in sources:
                if "${SERVICE}" in src and s is None:
                    continue
                resolved = src.replace("${SERVICE}", s or "")
                assert (ROOT / resolved).exists(), f"{path.name}: COPY source {resolved} missing"

    text = path.read_text()
    # torch comes from the variant's own stack
    base = {
        "Containerfile.slim": "python:3.11-slim",
        "Containerfile.cpu": "download.pytorch.org/whl/cpu",
        "Containerfile.cuda": "nvidia/cuda:",
        "Containerfile.rocm": "rocm/pytorch:",
    }.get(path.name)
    if base:
        assert base in text, f"{path.name}: expected {base}"
    if path.name == "Containerfile.slim":
        for pkg in ("gcc", "g++", "clang", "mingw-w64", "golang-go", "rustc", "cargo", "bubblewrap", "util-linux"):
            assert re.search(rf"(?<![\w-]){re.escape(pkg)}(?![\w-])", text), f"verifier toolchain lacks {pkg}"
    for mod in re.findall(r"python3? -m (halo_[a-z0-9_]+)", text):
        assert mod in {module_of(s) for s in ALL_SERVICES}, f"{path.name}: python -m {mod} is no service module"


@pytest.mark.parametrize("folder", ALL_SERVICES)
def test_entrypoint_runs_the_service_module(folder: str) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HALO_SERVICE": folder, "HALO_ENTRYPOINT_DRY_RUN": "1"}
    out = subprocess.run(["sh", str(CONTAINERS / "entrypoint.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    prefix = env_prefix_of(folder)
    assert f"{prefix}METRICS_PORT={METRICS_PORT}" in lines
    assert f"{prefix}METRICS_HOST=0.0.0.0" in lines
    assert lines[-1] == f"exec python -m {module_of(folder)}"
    if folder in EXISTING:
        assert EXISTING[folder].parent.name == module_of(folder)
    # arguments replace the default command; a set port is kept
    env[f"{prefix}METRICS_PORT"] = "9999"
    out = subprocess.run(
        ["sh", str(CONTAINERS / "entrypoint.sh"), "bash", "-l"], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.stdout.splitlines() == [f"{prefix}METRICS_PORT=9999", f"{prefix}METRICS_HOST=0.0.0.0", "exec bash -l"]


def test_entrypoint_rejects_bad_service_names() -> None:
    for bad in ("", "a;b", "Trainer", "-x"):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HALO_SERVICE": bad, "HALO_ENTRYPOINT_DRY_RUN": "1"}
        out = subprocess.run(
            ["sh", str(CONTAINERS / "entrypoint.sh")], env=env, capture_output=True, text=True, timeout=30
        )
        assert out.returncode != 0, bad


def _load_local_deps() -> Any:
    spec = importlib.util.spec_from_file_location("halo_local_deps", CONTAINERS / "local_deps.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("folder", sorted(EXISTING))
def test_image_installs_only_local_halo_packages(folder: str) -> None:
    """The images pip-install paths from local_deps.py; every halo-* dependency must resolve to a
    folder here, so no index is ever asked for one of our names."""
    local_deps = _load_local_deps()
    paths = local_deps.closure(
        ROOT / "services" / folder, ["halo-models"] if folder in ACCELERATOR_SERVICES else [], root=ROOT
    )
    assert paths[-1] == (ROOT / "services" / folder).resolve()
    names = [p.name for p in paths]
    assert "halo-runtime" in names and names.index("halo-common") < names.index("halo-runtime")
    assert "halo-testing" not in names  # test fixtures stay out of images


def test_local_deps_command_line() -> None:
    script = str(CONTAINERS / "local_deps.py")
    run = subprocess.run(
        [sys.executable, script, "services/gateway", "--extras", "a,b"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    paths = run.stdout.split()
    assert paths[-1] == "services/gateway[a,b]" and "libs/halo-runtime" in paths
    assert all((ROOT / p.split("[")[0]).is_dir() for p in paths)
    run = subprocess.run(
        [sys.executable, script, "services/gateway", "--extras", ""], cwd=ROOT, capture_output=True, text=True
    )
    assert run.stdout.split()[-1] == "services/gateway"
    run = subprocess.run([sys.executable, script, "services/no-such"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and "no pyproject.toml" in run.stderr


def test_local_deps_rejects_unknown_halo_dependency(tmp_path: Path) -> None:
    local_deps = _load_local_deps()
    (tmp_path / "libs" / "halo-a").mkdir(parents=True)
    (tmp_path / "libs" / "halo-a" / "pyproject.toml").write_text(
        '[project]\nname = "halo-a"\ndependencies = ["pydantic>=2"]\n'
    )
    svc = tmp_path / "services" / "x"
    svc.mkdir(parents=True)
    (svc / "pyproject.toml").write_text('[project]\nname = "halo-x"\ndependencies = ["halo-a", "halo-nope>=1"]\n')
    with pytest.raises(SystemExit, match="halo-nope"):
        local_deps.closure(svc, root=tmp_path)
    (svc / "pyproject.toml").write_text('[project]\nname = "halo-x"\ndependencies = ["halo_a", "fastapi"]\n')
    assert [p.name for p in local_deps.closure(svc, root=tmp_path)] == ["halo-a", "x"]


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        ok = self.path == "/metrics"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"halo_service_start_time_seconds 1\n" if ok else b"")

    def log_message(self, *args: Any) -> None:
        pass


def test_healthcheck_script() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HALO_SERVICE": "trainer-torch",
            "HALO_TRAINER_TORCH_METRICS_PORT": str(port),
        }

        def run(e: dict[str, str]) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, str(CONTAINERS / "healthcheck.py")], env=e, capture_output=True, text=True, timeout=30
            )

        assert run(env).returncode == 0
        server.shutdown()
        server.server_close()
        failed = run(env)
        assert failed.returncode == 1 and "unhealthy" in failed.stderr
        assert run({"PATH": env["PATH"]}).returncode == 1  # no HALO_SERVICE
    finally:
        server.shutdown()  # returns at once when already shut down
        server.server_close()


def test_dockerignore_keeps_the_build_inputs() -> None:
    patterns = [
        ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    for needed in ("libs", "services", "containers", "*", "**"):
        assert needed not in patterns, f".dockerignore excludes {needed}"
    assert ".venv" in patterns and ".git" in patterns


# ---- helm ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def test_chart_metadata(values: dict[str, Any]) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "halo-forge"
    deps = {d["name"]: d for d in chart["dependencies"]}
    assert set(deps) == {"nats", "postgresql"}
    for name, dep in deps.items():
        assert dep["condition"] == f"{name}.enabled", name
        assert dep["repository"] and dep["version"], name
        assert isinstance(values[name]["enabled"], bool), f"values.{name}.enabled"
    assert values["nats"]["config"]["jetstream"]["enabled"] is True
    assert (CHART / "templates" / "NOTES.txt").is_file()


def test_helm_values_cover_every_service(values: dict[str, Any]) -> None:
    keys = values["services"]
    for key in keys:
        folder = kebab_of(key)
        assert camel_of(folder) == key, f"services.{key}: not the camelCase spelling of a folder name"
        assert folder in ALL_SERVICES, f"services.{key}: no service {folder!r}"
    missing = [s for s in ALL_SERVICES if camel_of(s) not in keys]
    assert not missing, f"helm values lack services {missing} (as keys {[camel_of(s) for s in missing]})"
    assert keys["trainerMlx"]["enabled"] is False


@pytest.mark.parametrize("folder", ALL_SERVICES)
def test_helm_service_values(values: dict[str, Any], folder: str) -> None:
    key = camel_of(folder)
    assert key in values["services"], f"helm values.yaml has no services.{key} for {folder}"
    svc = values["services"][key]
    assert isinstance(svc["enabled"], bool) and int(svc["replicas"]) >= 0, key
    assert svc.get("variant", "slim") in VARIANTS, key
    gpu = svc.get("gpu") or {}
    if int(gpu.get("count", 0)) > 0:
        resource = gpu.get("resource") or {"cuda": "nvidia.com/gpu", "rocm": "amd.com/gpu"}.get(svc["variant"])
        assert resource in ("nvidia.com/gpu", "amd.com/gpu"), (
            f"services.{key}.gpu: no GPU resource for variant {svc['variant']}"
        )
    if folder in ("trainer-torch",):
        assert int(gpu.get("count", 0)) >= 1, "trainer-torch is a GPU worker in the chart"
    if folder in EXISTING:
        # the spellings the chart derives point at real code
        assert EXISTING[folder].parent.name == module_of(folder)
    if folder == "gateway":
        assert svc["http"]["port"] == 8420


TEMPLATE_FILES = sorted((CHART / "templates").glob("*"))
_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)


def actions(text: str) -> list[str]:
    return [a for a in _ACTION.findall(text) if not a.startswith("/*")]


@pytest.mark.parametrize("path", TEMPLATE_FILES, ids=lambda p: p.name)
def test_template_well_formed(path: Path, values: dict[str, Any]) -> None:
    text = path.read_text()
    assert text.count("{{") == text.count("}}"), f"{path.name}: unbalanced {{{{ }}}}"
    stack: list[str] = []
    for act in actions(text):
        word = act.split()[0] if act.split() else ""
        if word in ("if", "range", "with", "define", "block"):
            stack.append(word)
        elif word == "end":
            assert stack, f"{path.name}: {{{{ end }}}} without an opening block"
            stack.pop()
        elif word == "else":
            assert stack and stack[-1] in ("if", "with", "range"), f"{path.name}: else outside if/with/range"
    assert not stack, f"{path.name}: unclosed {stack}"

    # Every .Values path a template reads exists in values.yaml (catches typos like .Values.persistance).
    for ref in re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text):
        node: Any = values
        walked = []
        for part in ref.strip(".").split("."):
            if not isinstance(node, dict):
                break
            walked.append(part)
            assert part in node, f"{path.name}: .Values.{'.'.join(walked)} is not in values.yaml"
            node = node[part]


def test_template_includes_are_defined() -> None:
    defined = set()
    used: list[tuple[str, str]] = []
    for path in TEMPLATE_FILES:
        text = path.read_text()
        defined |= set(re.findall(r"\{\{-?\s*define\s+\"([^\"]+)\"", text))
        used += [(path.name, n) for n in re.findall(r"(?:include|template)\s+\"([^\"]+)\"", text)]
    assert {"halo-forge.folder", "halo-forge.module", "halo-forge.envPrefix"} <= defined
    undefined = [(f, n) for f, n in used if n not in defined]
    assert not undefined, f"templates include undefined names: {undefined}"


def test_templates_derive_the_spellings() -> None:
    """The chart spells a service from its key with sprig's kebabcase/snakecase; our Python mirror
    of that (kebab_of) must agree with the folder names, checked above for every key."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert "kebabcase" in helpers and "snakecase" in helpers
    deployments = (CHART / "templates" / "deployments.yaml").read_text()
    assert "range $key, $svc := .Values.services" in deployments
    assert 'include "halo-forge.module" $key' in deployments and 'include "halo-forge.envPrefix" $key' in deployments
    assert "METRICS_PORT" in deployments and "METRICS_HOST" in deployments
    assert "HALO_GATEWAY_TOKEN" in helpers and "secretKeyRef" in helpers


def test_helm_nats_requires_credentials(values: dict[str, Any]) -> None:
    """The bundled NATS requires the natsAuth Secret's user/password; the chart generates that
    Secret (random, kept across upgrades) and hands it to every service."""
    auth = values["natsAuth"]
    assert auth["enabled"] is True and auth["create"] is True and auth["user"]
    secret_name = auth["secretName"]
    assert values["nats"]["config"]["merge"]["authorization"] == {
        "user": "<< $HALO_NATS_USER >>", "password": "<< $HALO_NATS_PASSWORD >>"}
    env = values["nats"]["container"]["env"]
    for var, key in (("HALO_NATS_USER", "user"), ("HALO_NATS_PASSWORD", "password")):
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret_name, "key": key}, f"nats.container.env.{var}"

    secret = (CHART / "templates" / "nats-auth-secret.yaml").read_text()
    assert "randAlphaNum" in secret and 'lookup "v1" "Secret" .Release.Namespace $name' in secret
    assert "$name := .Values.natsAuth.secretName" in secret
    assert re.search(r"^  user: .*b64enc", secret, re.M) and re.search(r"^  password: .*\$password.*b64enc", secret, re.M)

    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    block = helpers.split('define "halo-forge.natsAuthEnv"', 1)[1].split("{{- end }}\n{{- end }}", 1)[0]
    for var, key in (("HALO_NATS_USER", "user"), ("HALO_NATS_PASSWORD", "password")):
        assert re.search(rf"- name: {var}\n\s+valueFrom:\n\s+secretKeyRef:\n\s+name: "
                         rf"\{{\{{ \.Values\.natsAuth\.secretName \}}\}}\n\s+key: {key}\n", block), var
    deployments = (CHART / "templates" / "deployments.yaml").read_text()
    gateway_only = deployments.split('if eq $key "gateway"', 1)[1].split("{{- end }}\n            {{- end }}", 1)[0]
    assert 'include "halo-forge.natsAuthEnv" $' in deployments and "natsAuthEnv" not in gateway_only


@pytest.mark.skipif(shutil.which("helm") is None, reason="helm not installed")
def test_helm_lint_and_render(tmp_path: Path) -> None:
    """With helm available: lint and render the chart (dependencies switched off, as they cannot
    be fetched offline) and check what a Deployment runs."""
    chart = tmp_path / "halo-forge"
    shutil.copytree(CHART, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta.pop("dependencies")
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    sets = [
        "--set",
        "nats.enabled=false",
        "--set",
        "externalNats.url=nats://nats:4222",
        "--set",
        "postgresql.enabled=false",
        "--set",
        "serviceMonitor.enabled=true",
    ]
    lint = subprocess.run(["helm", "lint", str(chart), *sets], capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    out = subprocess.run(["helm", "template", "hf", str(chart), *sets], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs if d["kind"] == "Deployment"}
    enabled = {
        kebab_of(k) for k, v in yaml.safe_load((CHART / "values.yaml").read_text())["services"].items() if v["enabled"]
    }
    assert set(deployments) == enabled
    for folder, dep in deployments.items():
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == ["python", "-m", module_of(folder)]
        names = {e["name"] for e in container["env"]}
        assert f"{env_prefix_of(folder)}METRICS_PORT" in names
        assert {"HALO_NATS_USER", "HALO_NATS_PASSWORD"} <= names
