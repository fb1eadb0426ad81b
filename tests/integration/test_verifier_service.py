"""verifier-sandbox end to end: a real nats-server, the service and the gateway as real processes,
the Python client over NATS, the HTTP API, the CLI, /metrics, and hostile code sent through the
whole path while the service keeps serving."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from halo_bus import NatsBus, subjects
from halo_clients.verifier_sandbox import VerifierClient
from halo_common.natsproc import NatsProcess, free_port
from halo_schemas.health import HealthRequest, ServiceHealth
from halo_schemas.verifiers import IOCase, VerifierSpec, VerifyContext, VerifyItem
from halo_testing import wait_until
from halo_verifiers.sandbox import processes_of_uid

pytestmark = pytest.mark.integration

UID_BASE = 2_950_000  # a pool of its own, so nothing else in the test run shares these uids
C_ADD = '#include <stdio.h>\nint main(void){ int a, b; scanf("%d %d", &a, &b); printf("%d\\n", a + b); return 0; }\n'


async def _health(url: str) -> ServiceHealth:
    bus = await NatsBus.connect(url, name="verifier-it")
    try:
        return await bus.request(subjects.rpc("verifier-sandbox", "health"), HealthRequest(), ServiceHealth, timeout=2)
    finally:
        await bus.close()


class Stack:
    def __init__(self, nats: NatsProcess, service: subprocess.Popen[bytes], gateway: subprocess.Popen[bytes],
                 gateway_url: str, home: Path, env: dict[str, str]) -> None:
        self.nats, self.service, self.gateway = nats, service, gateway
        self.gateway_url, self.home, self.env = gateway_url, home, env


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("verifier-home")
    (home / "verifiers").mkdir()
    (home / "verifiers" / "shout.py").write_text(
        "from halo_verifier_sandbox import register_verifier\n\n"
        "@register_verifier('it_shout')\ndef shout(completion, context):\n    \"\"\"All caps.\"\"\"\n"
        "    return completion.isupper()\n")
    nats = NatsProcess.start(home / "nats", log_file=home / "nats.log")
    port = free_port()
    env = dict(os.environ, HALO_HOME=str(home), HALO_NATS_URL=nats.url, HALO_LOG_JSON="false",
               HALO_VERIFIER_SANDBOX_WORKERS="2", HALO_VERIFIER_SANDBOX_UID_BASE=str(UID_BASE),
               HALO_GATEWAY_PORT=str(port), HALO_GATEWAY_URL=f"http://127.0.0.1:{port}", PYTHONUNBUFFERED="1")
    logs = {n: open(home / f"{n}.log", "wb") for n in ("service", "gateway")}  # noqa: SIM115
    service = subprocess.Popen([sys.executable, "-m", "halo_verifier_sandbox"], env=env, stdout=logs["service"],
                               stderr=subprocess.STDOUT)
    gateway = subprocess.Popen([sys.executable, "-m", "halo_gateway"], env=env, stdout=logs["gateway"],
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: asyncio.run(_health(nats.url)).status == "ok", 60, 0.2, "verifier-sandbox healthy",
                   ignore=(Exception,))
        wait_until(lambda: httpx.get(f"{url}/health", timeout=2).json()["nats"] == "connected", 60, 0.2, "gateway up",
                   ignore=(Exception,))
        yield Stack(nats, service, gateway, url, home, env)
    finally:
        for p in (gateway, service):
            p.terminate()
        for p in (gateway, service):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs.values():
            f.close()
        nats.stop()


def test_client_over_nats_to_the_service_process(stack: Stack) -> None:
    async def go() -> None:
        bus = await NatsBus.connect(stack.nats.url, name="trainer-like")
        try:
            client = VerifierClient(bus)
            ctx = VerifyContext(cases=[IOCase(stdin="2 2", expected_output="4"), IOCase(stdin="2 3", expected_output="5")])
            r = await client.verify("gcc", C_ADD, ctx)
            assert r.reward == 1.0 and r.metadata["sandbox"] == "bwrap"
            items = [VerifyItem(id=str(i), completion=C_ADD if i % 2 == 0 else C_ADD.replace("a + b", "a * b"),
                                context=ctx) for i in range(10)]
            rs = await client.verify_batch(VerifierSpec(name="gcc"), items)
            assert [x.id for x in rs] == [str(i) for i in range(10)]
            assert [x.reward for x in rs] == [1.0 if i % 2 == 0 else pytest.approx(0.85) for i in range(10)]
            assert sum(x.cached for x in rs) >= 8  # two distinct programs; the rest are cache hits
            inv = await client.inventory()
            assert any(v.name == "it_shout" and v.origin == "plugin:shout.py" for v in inv.verifiers)
        finally:
            await bus.close()

    asyncio.run(go())


def test_http_api(stack: Stack) -> None:
    url = stack.gateway_url
    inv = httpx.get(f"{url}/api/v1/verifiers", timeout=30).json()
    names = {v["name"] for v in inv["verifiers"]}
    assert {"gcc", "humaneval", "bleu", "llm_judge", "multi", "it_shout"} <= names
    assert inv["sandbox"]["mechanism"] == "bwrap"
    one = httpx.post(f"{url}/api/v1/verify", json={
        "spec": {"name": "bleu"}, "completion": "the cat sat on the mat",
        "context": {"reference": "the cat sat on the mat"}}, timeout=60).json()
    assert one["reward"] == 1.0 and one["stage"] == "scored"
    items = [{"id": f"q{i}", "completion": "YES" if i % 3 else "no"} for i in range(150)]  # > one bus chunk
    batch = httpx.post(f"{url}/api/v1/verify/batch", json={"spec": {"name": "it_shout"}, "items": items},
                       timeout=120).json()
    assert [r["id"] for r in batch["results"]] == [f"q{i}" for i in range(150)]
    assert [r["reward"] for r in batch["results"]] == [1.0 if i % 3 else 0.0 for i in range(150)]
    typo = httpx.post(f"{url}/api/v1/verify", json={"spec": {"name": "gcc"}, "completion": "x",
                                                      "context": {"expected_ouput": "3"}}, timeout=30)
    assert typo.status_code == 400 and typo.json()["error"]["param"] == "context.expected_ouput"
    unknown = httpx.post(f"{url}/api/v1/verify", json={"spec": {"name": "nope"}, "completion": "x"}, timeout=30)
    assert unknown.status_code == 404 and "unknown verifier" in unknown.json()["error"]["message"]
    bad = httpx.post(f"{url}/api/v1/verify", json={"spec": {"name": "rouge", "params": {"rouge_type": "rouge9"}},
                                                    "completion": "x"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "params.rouge_type"


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "halo_forge.main", *args], env={**stack.env, "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=300)


def test_cli_verify_and_list(stack: Stack, tmp_path: Path) -> None:
    rows = [{"id": "ok", "completion": f"```c\n{C_ADD}```", "context": {"stdin": "1 2", "expected_output": "3"}},
            {"id": "wrong", "completion": C_ADD.replace("a + b", "a - b"), "stdin": "1 2", "expected_output": "3"},
            {"id": "broken", "completion": "int main( {", "expected_output": "3"}]
    inp = tmp_path / "completions.jsonl"
    inp.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "clang", "params": {"flags": ["-O0"]}}))
    out = tmp_path / "results.jsonl"
    proc = _cli(stack, "verify", "--verifier", "gcc", "--spec", str(spec), "--input", str(inp), "--output", str(out),
                "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "verify: gcc" in proc.stdout and "mean reward" in proc.stdout and "0.5667" in proc.stdout
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["reward"]) for r in results] == [("ok", 1.0), ("wrong", 0.7), ("broken", 0.0)]

    listing = _cli(stack, "verifiers", "list")
    assert listing.returncode == 0, listing.stderr
    for name in ("gcc", "mingw", "humaneval", "json_schema", "llm_judge", "it_shout", "plugin:shout.py"):
        assert name in listing.stdout
    assert "sandbox: bwrap" in listing.stdout

    inp.write_text('{"completion": "x"}\n{not json}\n')
    bad = _cli(stack, "verify", "--verifier", "gcc", "--input", str(inp))
    assert bad.returncode == 1 and f"{inp}:2" in bad.stderr and "Traceback" not in bad.stderr
    missing = _cli(stack, "verify", "--input", str(inp))
    assert missing.returncode == 1 and "--verifier" in missing.stderr


HOSTILE = {
    "infinite_loop": "while True:\n    pass\n",
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "alloc_10gb": "x = bytearray(10 * 1024 ** 3)\n",
    "write_outside": "open('/var/tmp/halo-it-pwned', 'w').write('x')\n",
    "network": "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=3)\n",
    "stdout_100mb": "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * (1 << 20))\n",
}


def test_hostile_code_through_the_gateway(stack: Stack) -> None:
    items = [{"id": k, "completion": v, "context": {"expected_output": "ok"}} for k, v in HOSTILE.items()]
    spec = {"name": "execution", "params": {"language": "python", "timeout_s": 2, "memory_mb": 512}}
    start = time.monotonic()
    reply = httpx.post(f"{stack.gateway_url}/api/v1/verify/batch",
                       json={"spec": spec, "items": items, "use_cache": False}, timeout=120).json()
    assert time.monotonic() - start < 30
    reasons = {r["id"]: r["details"]["cases"][0]["reason"] for r in reply["results"]}
    assert all(not r["success"] and r["reward"] == 0.5 for r in reply["results"])
    assert reasons["infinite_loop"] == reasons["fork_bomb"] == "timeout (wall clock)"
    assert reasons["stdout_100mb"] == "output limit exceeded"
    assert all(reasons[k] == "exit code 1" for k in ("alloc_10gb", "write_outside", "network"))
    assert not Path("/var/tmp/halo-it-pwned").exists()
    svc = psutil.Process(stack.service.pid)
    # The service's children are only its warm sandboxes (root: bwrap and the agent inside);
    # no process of a sandbox uid is left anywhere.
    children = [c for c in svc.children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
    assert {c.name() for c in children} <= {"bwrap", Path(os.path.realpath(sys.executable)).name}
    assert all(c.uids().real == 0 for c in children)
    assert all(processes_of_uid(uid) == [] for uid in range(UID_BASE, UID_BASE + 64))
    # still serving, and the metrics saw all of it
    ok = httpx.post(f"{stack.gateway_url}/api/v1/verify", json={
        "spec": {"name": "gcc"}, "completion": C_ADD, "context": {"stdin": "1 1", "expected_output": "2"}},
        timeout=60).json()
    assert ok["reward"] == 1.0
    health = asyncio.run(_health(stack.nats.url))
    assert health.status == "ok" and health.metrics_url
    text = httpx.get(health.metrics_url, timeout=10).text
    assert 'halo_verifier_executions_total{result="failure",verifier="execution"} 6.0' in text
    assert "halo_verifier_execution_duration_seconds_bucket" in text
    assert 'halo_verifier_sandbox_available{mechanism="bwrap"} 1.0' in text
