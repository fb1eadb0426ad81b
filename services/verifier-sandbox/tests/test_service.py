"""The service over the bus (in-memory and a real nats-server): verify, verify-batch, inventory,
error mapping, metrics, plugins from HALO_HOME, fail-closed behaviour and hostile code."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from halo_bus import Bus, subjects
from halo_clients.verifier_sandbox import VerifierClient
from halo_common.errors import BadRequest, NotFound
from halo_schemas.health import HealthRequest, HealthStatus
from halo_schemas.verifiers import IOCase, VerifierSpec, VerifyContext, VerifyItem, VerifyStage
from halo_verifier_sandbox.service import VerifierSandbox
from halo_verifier_sandbox.settings import VerifierSandboxSettings
from halo_verifiers.sandbox import processes_of_uid

C_ADD = '#include <stdio.h>\nint main(void){ int a, b; scanf("%d %d", &a, &b); printf("%d\\n", a + b); return 0; }\n'
PLUGIN = '''
from halo_verifier_sandbox import register_verifier

@register_verifier("svc_plugin_len")
def length(completion, context):
    """Length / 10, capped at 1."""
    return min(1.0, len(completion) / 10)
'''


def metric(svc: VerifierSandbox, name: str, **labels: str) -> float:
    return svc.metrics_registry.get_sample_value(name, labels) or 0.0


async def start(bus: Bus, home: Path, **overrides: object) -> VerifierSandbox:
    settings = VerifierSandboxSettings(home=home, workers=2, **overrides)
    svc = VerifierSandbox(settings, bus)
    await svc.start()
    return svc


@pytest.fixture
async def service(bus: Bus, tmp_path: Path) -> AsyncIterator[VerifierSandbox]:
    (tmp_path / "verifiers").mkdir()
    (tmp_path / "verifiers" / "length.py").write_text(PLUGIN)
    (tmp_path / "verifiers" / "broken.py").write_text("import does_not_exist_anywhere\n")
    svc = await start(bus, tmp_path)
    yield svc
    await svc.stop()
    from halo_verifiers.registry import REGISTRY

    REGISTRY.load_plugins(None, group=None)  # drop this test's plugins from the process-wide registry


async def test_verify_batch_inventory_and_metrics(service: VerifierSandbox, bus: Bus) -> None:
    client = VerifierClient(bus)
    ctx = VerifyContext(cases=[IOCase(stdin="1 2", expected_output="3"), IOCase(stdin="2 2", expected_output="4")])
    one = await client.verify("gcc", C_ADD, ctx)
    assert one.reward == 1.0 and one.success and one.metadata["sandbox"] == "bwrap"

    items = [VerifyItem(id="good", completion=C_ADD, context=ctx),
             VerifyItem(id="wrong", completion=C_ADD.replace("a + b", "a - b"), context=ctx),
             VerifyItem(id="broken", completion="int main( {", context=ctx),
             VerifyItem(id="again", completion=C_ADD, context=ctx)]
    results = await client.verify_batch(VerifierSpec(name="gcc"), items)
    assert [r.id for r in results] == ["good", "wrong", "broken", "again"]
    assert [r.reward for r in results] == [1.0, pytest.approx(0.7 + 0.3 * 0 / 2), 0.0, 1.0]
    assert results[0].cached and results[3].cached  # same spec + completion + context as `one`

    inv = await client.inventory()
    names = {v.name: v for v in inv.verifiers}
    assert {"gcc", "clang", "mingw", "execution", "pytest", "humaneval", "mbpp", "rust", "cargo", "go", "custom",
            "subprocess", "json_structure", "json_schema", "regex_format", "bleu", "rouge", "chrf", "llm_judge",
            "multi"} <= set(names)
    assert names["svc_plugin_len"].origin == "plugin:length.py"
    assert [Path(p.source).name for p in inv.broken_plugins] == ["broken.py"]
    assert "does_not_exist_anywhere" in inv.broken_plugins[0].error
    assert inv.sandbox.mechanism == "bwrap" and "network" in inv.sandbox.isolation and inv.workers == 2
    assert (await client.verify("svc_plugin_len", "12345")).reward == 0.5

    assert metric(service, "halo_verifier_executions_total", verifier="gcc", result="success") == 3
    assert metric(service, "halo_verifier_executions_total", verifier="gcc", result="failure") == 2
    assert metric(service, "halo_verifier_cache_hits_total", verifier="gcc") == 2
    assert metric(service, "halo_verifier_execution_duration_seconds_count", verifier="gcc") == 3
    assert metric(service, "halo_verifier_sandbox_available", mechanism="bwrap") == 1
    health = await bus.request(subjects.rpc("verifier-sandbox", "health"), HealthRequest(), type(await service.health(HealthRequest())))
    assert health.status == HealthStatus.OK and health.checks["sandbox"] == "ok"


async def test_errors_are_mapped(service: VerifierSandbox, bus: Bus) -> None:
    client = VerifierClient(bus)
    with pytest.raises(NotFound) as nf:
        await client.verify("no-such-verifier", "x")
    assert nf.value.param == "spec.name"
    with pytest.raises(BadRequest) as br:
        await client.verify(VerifierSpec(name="gcc", params={"flagz": ["-O2"]}), "x")
    assert br.value.param == "params.flagz" and "unknown parameter" in br.value.message
    with pytest.raises(BadRequest):
        await client.verify_batch({"name": "regex_format", "params": {"pattern": "("}}, ["a", "b"])
    missing = await client.verify("humaneval", "    return 1\n")
    assert missing.error_type == "missing_context" and missing.reward == 0.0


async def test_large_batches_are_split_and_keep_order(service: VerifierSandbox, bus: Bus) -> None:
    client = VerifierClient(bus, chunk_items=7)
    texts = [f"item {i} " + "word " * (i % 5) for i in range(30)]
    results = await client.verify_batch("json_structure", [VerifyItem(id=str(i), completion=t) for i, t in enumerate(texts)])
    assert [r.id for r in results] == [str(i) for i in range(30)]
    assert all(r.reward == 0.0 for r in results)  # none of them is JSON


async def test_fails_closed_without_a_sandbox(bus: Bus, tmp_path: Path) -> None:
    # sandbox-exec exists only on macOS: forcing it on Linux leaves no working mechanism.
    svc = await start(bus, tmp_path, mechanism="sandbox-exec", plugins=False)
    try:
        client = VerifierClient(bus)
        r = await client.verify("gcc", C_ADD, VerifyContext(stdin="1 1", expected_output="2"))
        assert r.stage == VerifyStage.UNAVAILABLE and r.reward == 0.0 and r.error_type == "unavailable"
        assert "bubblewrap" in r.details["install_hint"] and "ALLOW_HOST" in r.details["install_hint"]
        assert (await client.verify("bleu", "a b c", VerifyContext(reference="a b c"))).reward == 1.0
        inv = await client.inventory()
        gcc = next(v for v in inv.verifiers if v.name == "gcc")
        assert not gcc.available and "no sandbox mechanism available (sandbox-exec" in (gcc.unavailable_reason or "")
        assert inv.sandbox.mechanism is None and "no sandbox mechanism available" in (inv.sandbox.problem or "")
        health = await svc.health(HealthRequest())
        assert health.status == HealthStatus.DEGRADED and health.checks["sandbox"].startswith("unavailable")
        assert metric(svc, "halo_verifier_sandbox_available", mechanism="none") == 0
        assert metric(svc, "halo_verifier_executions_total", verifier="gcc", result="unavailable") == 1
    finally:
        await svc.stop()


async def test_host_execution_is_an_explicit_opt_in(bus: Bus, tmp_path: Path) -> None:
    svc = await start(bus, tmp_path, mechanism="host", allow_host=True, plugins=False)
    try:
        r = await VerifierClient(bus).verify("gcc", C_ADD, VerifyContext(stdin="1 1", expected_output="2"))
        assert r.reward == 1.0 and r.metadata["sandbox"] == "host"
    finally:
        await svc.stop()


HOSTILE = {
    "infinite_loop": "while True:\n    pass\n",
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "alloc_10gb": "block = bytearray(10 * 1024 ** 3)\nprint(len(block))\n",
    "write_outside": "open({target!r}, 'w').write('pwned')\nprint('wrote')\n",
    "network": "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\nprint('connected')\n",
    "stdout_100mb": "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)\n",
}


async def test_hostile_code_is_contained_and_the_service_keeps_serving(nats_bus: Bus, tmp_path: Path) -> None:
    svc = await start(nats_bus, tmp_path, plugins=False)
    target = Path("/var/tmp") / f"halo-hostile-{os.getpid()}.txt"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    connected: list[bool] = []
    stop = threading.Event()
    accepter = threading.Thread(target=_accept, args=(listener, connected, stop))
    accepter.start()
    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}
    try:
        items = [VerifyItem(id=name, completion=code.format(target=str(target), port=listener.getsockname()[1]),
                            context=VerifyContext(expected_output="ok"))
                 for name, code in HOSTILE.items()]
        spec = VerifierSpec(name="execution", params={"language": "python", "timeout_s": 2, "memory_mb": 512,
                                                     "max_output_kb": 1024})
        results = await VerifierClient(nats_bus).verify_batch(spec, items, use_cache=False)
        by_id = {r.id: r for r in results}
        for name, r in by_id.items():
            case = r.details["cases"][0]
            assert not r.success and r.reward == 0.5 and not case["ran"], (name, case)
            assert r.duration_s < 15, name
        assert by_id["infinite_loop"].details["cases"][0]["reason"] == "timeout (wall clock)"
        assert by_id["fork_bomb"].details["cases"][0]["reason"] == "timeout (wall clock)"
        assert "MemoryError" in by_id["alloc_10gb"].details["cases"][0]["stderr"]
        assert "Read-only file system" in by_id["write_outside"].details["cases"][0]["stderr"]
        assert "Connection refused" in by_id["network"].details["cases"][0]["stderr"]
        assert by_id["stdout_100mb"].details["cases"][0]["reason"] == "output limit exceeded"
        # Nothing written, nothing connected, nothing left running.
        assert not target.exists() and connected == []
        # The only new processes are the warm sandboxes themselves (bwrap + the root agent inside).
        agents = set(svc.engine.runtime.sandbox.agent_pids())  # type: ignore[union-attr]
        agent_tree = agents | {c.pid for a in agents for c in psutil.Process(a).children(recursive=True)}
        left = [c for c in me.children(recursive=True) if c.pid not in before | agent_tree and c.is_running()
                and c.status() != psutil.STATUS_ZOMBIE]
        assert left == []
        assert all(psutil.Process(p).uids().real == os.geteuid() for p in agent_tree)
        settings: VerifierSandboxSettings = svc.settings  # type: ignore[assignment]
        for uid in range(settings.uid_base, settings.uid_base + settings.uid_count):
            assert processes_of_uid(uid) == []
        # ...and it still serves.
        ok = await VerifierClient(nats_bus).verify("gcc", C_ADD, VerifyContext(stdin="2 3", expected_output="5"))
        assert ok.reward == 1.0
    finally:
        stop.set()
        accepter.join()
        listener.close()
        target.unlink(missing_ok=True)
        await svc.stop()


def _accept(sock: socket.socket, out: list[bool], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
            conn.close()
            out.append(True)
        except OSError:  # timeout: look at the stop flag again
            continue


async def test_large_replies_are_trimmed_to_fit_the_bus(memory_bus: Bus, tmp_path: Path) -> None:
    svc = await start(memory_bus, tmp_path, plugins=False, max_reply_bytes=20_000)
    try:
        items = [VerifyItem(id=str(i), completion=f"print('{i}' * 3000)", context=VerifyContext(expected_output="x"))
                 for i in range(10)]
        results = await VerifierClient(memory_bus).verify_batch(
            VerifierSpec(name="execution", params={"language": "python"}), items, use_cache=False)
        assert [r.id for r in results] == [str(i) for i in range(10)]
        assert all(r.reward == pytest.approx(0.7) and r.stage == VerifyStage.RAN for r in results)
        assert all(r.details.get("truncated") for r in results)
        assert sum(len(r.model_dump_json()) for r in results) <= 20_000
        assert all(r.details["ran"] == 1 and r.details["total"] == 1 for r in results)  # counts survive trimming
    finally:
        await svc.stop()
