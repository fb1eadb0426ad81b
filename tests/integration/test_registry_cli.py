"""`halo-forge runs …` and `halo-forge replay` end to end: two machines (each its own HALO_HOME,
nats-server, registry and gateway); a run bundled on one imports into the other and `runs compare`
shows it beside a local run; tampered and malformed bundles and bad filters fail with one clear line."""

from __future__ import annotations

import asyncio
import importlib.metadata
import io
import json
import sys
import tarfile
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from halo_bus import NatsBus
from halo_common.natsproc import NatsProcess
from halo_forge import main as main_mod
from halo_forge.commands import replay as replay_cmd
from halo_forge.commands import runs as runs_cmd
from halo_forge.main import main
from halo_gateway.service import Gateway
from halo_gateway.settings import GatewaySettings
from halo_registry.service import Registry
from halo_registry.settings import RegistrySettings
from halo_testing import RunEmitter, loss_at

pytestmark = pytest.mark.integration


class Machine:
    """One HALO_HOME with its own nats-server, registry and gateway, served from a background thread
    (so the CLI can run synchronously in the test's thread)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.nats = NatsProcess.start(home / "nats", log_file=home / "nats.log")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self._start())

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    async def _start(self) -> None:
        url = self.nats.url
        self.registry = Registry(RegistrySettings(home=self.home, nats_url=url), await NatsBus.connect(url))
        await self.registry.start()
        self.gateway = Gateway(GatewaySettings(home=self.home, nats_url=url, port=0), await NatsBus.connect(url))
        await self.gateway.start()
        port = self.gateway.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.trainer = await NatsBus.connect(url, name="trainer")

    def emit(self, em: RunEmitter, events: list) -> None:  # noqa: ANN001
        async def go() -> None:
            for ev in events:
                await self.trainer.publish_event(em.subject(ev), ev, msg_id=em.msg_id(ev))
            for _ in range(1000):
                try:
                    if self.registry.store.summary(em.run_id).last_step == em.last_step and \
                            self.registry.store.summary(em.run_id).status.value != "running":
                        return
                except Exception:
                    pass
                await asyncio.sleep(0.01)
            raise AssertionError(f"{em.run_id} was not ingested")

        self.call(go())

    def close(self) -> None:
        async def stop() -> None:
            for svc in (self.gateway, self.registry):
                await svc.stop()
                await svc.bus.close()
            await self.trainer.close()

        try:
            self.call(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.nats.stop()


@pytest.fixture
def machines(tmp_path: Path) -> Iterator[tuple[Machine, Machine]]:
    a = Machine(tmp_path / "machine-a")
    try:
        b = Machine(tmp_path / "machine-b")
    except BaseException:
        a.close()
        raise
    yield a, b
    b.close()
    a.close()


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # noqa: ANN201
    """``cli(machine, *args) -> (exit code, stdout, stderr)``, running `halo-forge` in-process."""
    for console in (runs_cmd.console, replay_cmd.console, main_mod.err_console):
        monkeypatch.setattr(console, "width", 400)

    def run(machine: Machine, *args: str) -> tuple[int, str, str]:
        monkeypatch.setenv("HALO_GATEWAY_URL", machine.url)
        monkeypatch.setenv("HALO_HOME", str(machine.home))
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def finished_run(em: RunEmitter, steps: int, offset: float = 0.0) -> list:
    return ([em.started(total_steps=steps)]
            + [em.progressed(s, steps, loss=loss_at(s) + offset, reward=s / steps) for s in range(steps)]
            + [em.finished(summary={"final_loss": loss_at(steps - 1) + offset})])


def test_bundle_on_one_machine_compare_on_another(machines, cli, tmp_path: Path) -> None:  # noqa: ANN001
    a, b = machines
    em_a = RunEmitter(method="sft", base_model="tiny-llama", spec={"name": "from-a", "lr": 2e-4, "tags": ["shipped"]})
    adapter = a.home / "runs" / em_a.run_id / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00\x01" * 4096)
    events = finished_run(em_a, 40)
    events.insert(-1, em_a.artifact(str(adapter), step=39))
    a.emit(em_a, events)

    code, out, _ = cli(a, "runs", "list")
    assert code == 0 and em_a.run_id in out and "from-a" in out and "succeeded" in out
    code, out, _ = cli(a, "runs", "show", em_a.run_id)
    assert code == 0 and "energy" in out and "nominal" in out and "loss" in out
    bundle = tmp_path / "from-a.tar.gz"
    code, out, err = cli(a, "runs", "bundle", em_a.run_id, "-o", str(bundle))
    assert code == 0, err
    assert bundle.is_file() and "sha256" in out

    em_b = RunEmitter(method="sft", base_model="tiny-llama", spec={"name": "local-b", "lr": 1e-4})
    b.emit(em_b, finished_run(em_b, 40, offset=0.3))
    code, out, err = cli(b, "runs", "import", str(bundle))
    assert code == 0, err
    assert f"imported {em_a.run_id}" in out
    code, out, _ = cli(b, "runs", "list", "--tag", "shipped", "--json")
    assert [r["run_id"] for r in json.loads(out)["items"]] == [em_a.run_id]
    assert json.loads(out)["items"][0]["origin"] == "imported"

    code, out, err = cli(b, "runs", "compare", em_b.run_id, em_a.run_id, "--width", "90")
    assert code == 0, err
    assert "local-b" in out and "from-a" in out and "imported" in out
    assert "config diff" in out and "2e-4" in out.replace("0.0002", "2e-4")
    assert "loss" in out and "reward" in out and "┌" in out  # the plot frame
    code, out, _ = cli(b, "runs", "compare", em_b.run_id, em_a.run_id, "--json")
    cmp = json.loads(out)
    assert cmp["metrics"] == ["loss", "reward"]
    assert {len(s[0]["values"]) for s in cmp["series"].values()} == {40}

    # A tampered copy of the bundle and a file that is no bundle: one red line each, exit 1.
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(bundle) as src, tarfile.open(tampered, "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name == "spec.json":
                data = data.replace(b"0.0002", b"0.002")
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    code, out, err = cli(b, "runs", "import", str(tampered), "--replace")
    assert code == 1 and "checksum mismatch for 'spec.json'" in err and "Traceback" not in err
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"definitely not a tarball")
    code, _, err = cli(b, "runs", "import", str(junk))
    assert code == 1 and "not a readable Halo run bundle" in err
    code, _, err = cli(b, "runs", "import", str(tmp_path / "missing.tar.gz"))
    assert code == 1 and "no bundle file" in err
    # The imported run was left untouched by the refused imports.
    code, out, _ = cli(b, "runs", "show", em_a.run_id, "--json")
    assert json.loads(out)["spec"]["lr"] == 2e-4


def test_bad_filters_and_pages_fail_with_one_line(machines, cli) -> None:  # noqa: ANN001
    a, _b = machines
    for args, needle in ((("--offset", "-1"), "offset: Input should be greater than or equal to 0"),
                         (("--limit", "0"), "limit: Input should be greater than or equal to 1"),
                         (("--sort", "colour"), "unknown sort field 'colour'"),
                         (("--status", "done"), "status.0"),
                         (("--since", "last tuesday"), "since")):
        code, _out, err = cli(a, "runs", "list", *args)
        assert code == 1 and needle in err, (args, err)
        assert len(err.strip().splitlines()) == 1
    code, _, err = cli(a, "runs", "show", "run-nope")
    assert code == 1 and "no run 'run-nope'" in err
    code, _, err = cli(a, "runs", "compare", *[f"run-{i}" for i in range(9)])
    assert code == 1 and "run_ids" in err


def test_tag_note_rm(machines, cli) -> None:  # noqa: ANN001
    a, _b = machines
    em = RunEmitter(spec={"name": "mutable"})
    run_dir = a.home / "runs" / em.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("{}\n")
    a.emit(em, finished_run(em, 5))
    assert cli(a, "runs", "tag", em.run_id, "keep", "best")[0] == 0
    code, out, _ = cli(a, "runs", "tag", em.run_id, "--remove", "keep")
    assert code == 0 and "tags best" in out
    assert cli(a, "runs", "note", em.run_id, "first")[0] == 0
    assert cli(a, "runs", "note", em.run_id, "second", "--append")[0] == 0
    code, out, _ = cli(a, "runs", "show", em.run_id, "--json")
    d = json.loads(out)
    assert d["notes"] == "first\n\nsecond" and d["run"]["tags"] == ["best"]
    code, out, _ = cli(a, "runs", "list", "--tag", "best", "--json")
    assert json.loads(out)["total"] == 1
    code, out, err = cli(a, "runs", "rm", em.run_id, "--yes", "--delete-artifacts")
    assert code == 0, err
    assert f"removed {run_dir}" in out and not run_dir.exists()
    code, out, _ = cli(a, "runs", "list", "--json")
    assert json.loads(out)["total"] == 0


def test_replay_prints_command_and_drift_and_guards_launch(machines, cli, tmp_path: Path) -> None:  # noqa: ANN001
    a, _b = machines
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "hi", "completion": "there"}\n')
    from halo_common.backend import detect_backend
    from halo_common.files import dataset_fingerprint as fingerprint

    sha, size = fingerprint(data)
    em = RunEmitter(spec={"name": "replayable", "seed": 7})
    marker = tmp_path / "relaunched.txt"
    # Exactly the shape trainer-torch's write_replay produces (no run_id; extra keys it keeps).
    manifest = {
        "method": "sft", "spec": em.spec,
        "argv": [sys.executable, "-c", f"import pathlib; pathlib.Path({str(marker)!r}).write_text('again')"],
        "seeds": {"seed": 7, "data_seed": 7},
        "datasets": [{"location": "train.jsonl", "sha256": sha, "size_bytes": size, "records": 1, "kind": "file"},
                     {"location": "org/some-hub-set", "sha256": "ab" * 32, "size_bytes": 10, "records": 5,
                      "kind": "hub"}],
        "data_format": "prompt-completion", "records": {"train": 1, "eval": 0},
        "packages": {"pydantic": importlib.metadata.version("pydantic"), "sqlalchemy": "0.0.1",
                     "surely-not-installed-pkg": "absent"},
        "python": None, "platform": None, "backend": str(detect_backend()),  # whatever this host is: no drift
        "capabilities": {"bf16": True}, "resolved": {"dtype": "fp32"},
        "cwd": str(tmp_path),
    }
    run_dir = a.home / "runs" / em.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "replay.json").write_text(json.dumps(manifest))
    a.emit(em, finished_run(em, 3))

    code, out, err = cli(a, "replay", em.run_id)
    assert code == 0, err
    assert f"cd {tmp_path} && {sys.executable} -c" in out and "seed=7" in out
    lines = {ln.split("│")[1].strip(): ln for ln in out.splitlines() if ln.count("│") >= 4}
    assert "ok" in lines["package:pydantic"] and "drift" in lines["package:sqlalchemy"]
    assert "ok" in lines["dataset:train.jsonl"] and "ok" in lines["backend"]
    assert "ok" in lines["package:surely-not-installed-pkg"] and "info" in lines["dataset:org/some-hub-set"]
    assert "1 field(s) drifted" in out

    code, _, err = cli(a, "replay", em.run_id, "--launch")
    assert code == 1 and "refusing to relaunch" in err and "package:sqlalchemy" in err and not marker.exists()
    code, out, err = cli(a, "replay", em.run_id, "--launch", "--force")
    assert code == 0, err
    assert marker.read_text() == "again"

    data.write_text("changed\n")  # the dataset drifts too now
    code, out, _ = cli(a, "replay", em.run_id, "--json")
    report = json.loads(out)["drift"]
    assert {i["field"] for i in report["items"] if i["status"] == "drift"} == {"package:sqlalchemy", "dataset:train.jsonl"}

    code, _, err = cli(a, "replay", "run-without-manifest")
    assert code == 1 and "has no replay manifest" in err


def test_replay_launches_halo_forge_without_the_venv_on_path(machines, cli, tmp_path: Path,  # noqa: ANN001
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`replay --launch` of a run recorded as `halo-forge …` runs this CLI through the current
    interpreter, so it works from a venv that is not on PATH (it used to say "'halo-forge' is not
    installed here")."""
    import shutil

    from halo_common.backend import detect_backend

    a, _b = machines
    em = RunEmitter(spec={"name": "relaunch-me"})
    out = tmp_path / "relaunched.tar.gz"
    run_dir = a.home / "runs" / em.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "replay.json").write_text(json.dumps({
        "method": "sft", "spec": em.spec, "argv": ["halo-forge", "runs", "bundle", em.run_id, "-o", str(out)],
        "backend": str(detect_backend())}))
    a.emit(em, finished_run(em, 3))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert shutil.which("halo-forge") is None
    code, stdout, err = cli(a, "replay", em.run_id, "--launch")
    assert code == 0, err
    assert f"{sys.executable} -m halo_forge.main runs bundle {em.run_id}" in stdout
    with tarfile.open(out) as tar:  # the relaunched command really ran
        assert json.loads(tar.extractfile("run.json").read())["run"]["run_id"] == em.run_id


def test_replay_of_an_imported_run_names_source_paths(machines, cli, tmp_path: Path, tiny_model_dir: Path) -> None:  # noqa: ANN001
    """An imported run's replay says which paths are the source machine's: the bundled spec.json is
    remapped into the local run directory, a missing data file refuses --launch naming the `--set`
    that supplies it, and with it the job really reaches this machine's gateway with the local path."""
    from halo_bus import subjects
    from halo_common.backend import detect_backend
    from halo_common.files import dataset_fingerprint as fingerprint
    from halo_schemas.jobs import JobEnvelope

    a, b = machines
    data = tmp_path / "here" / "train.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(8)))
    sha, size = fingerprint(data)
    source_data = "/nonexistent-source-machine/data/train.jsonl"
    em = RunEmitter(method="sft", spec={"model": str(tiny_model_dir), "data": {"train": source_data}, "max_steps": 1})
    src_dir = a.home / "runs" / em.run_id
    src_dir.mkdir(parents=True)
    (src_dir / "replay.json").write_text(json.dumps({
        "method": "sft", "spec": em.spec, "backend": str(detect_backend()),
        "argv": ["halo-forge", "train", "sft", "--config", str(src_dir / "spec.json"), "--detach"],
        "datasets": [{"location": source_data, "sha256": sha, "size_bytes": size, "records": 8, "kind": "file"}]}))
    a.emit(em, finished_run(em, 3))
    bundle = tmp_path / "imported.tar.gz"
    assert cli(a, "runs", "bundle", em.run_id, "-o", str(bundle))[0] == 0
    code, _, err = cli(b, "runs", "import", str(bundle))
    assert code == 0, err
    local_dir = b.home / "runs" / em.run_id

    code, out, err = cli(b, "replay", em.run_id)
    assert code == 0, err
    assert "imported run" in out and str(src_dir) in out and "paths from the source machine" in out
    rows = {ln.split("│")[1].strip(): ln for ln in out.splitlines() if ln.count("│") >= 5}
    assert source_data in rows["data.train"] and "missing" in rows["data.train"]
    assert str(local_dir / "spec.json") in rows["argv[4]"] and "bundled" in rows["argv[4]"]
    assert "present" in rows["model"]

    code, _, err = cli(b, "replay", em.run_id, "--launch", "--force")
    assert code == 1 and "--set data.train=PATH" in err and source_data in err and "source machine" in err

    code, out, _ = cli(b, "replay", em.run_id, "--json", "--set", f"data.train={data}")
    report = json.loads(out)
    assert {(p["key"], p["how"]) for p in report["source_paths"]} >= {("data.train", "supplied"), ("argv[4]", "bundled")}
    assert [i["status"] for i in report["drift"]["items"] if i["field"] == f"dataset:{source_data}"] == ["ok"]
    assert report["imported"]["bundle_sha256"]

    code, out, err = cli(b, "replay", em.run_id, "--launch", "--set", f"data.train={data}")
    assert code == 0, err
    assert f"--config {local_dir / 'spec.json'} --detach --set data.train={data}" in out

    async def queued() -> list[JobEnvelope]:
        got: list[JobEnvelope] = []

        async def take(delivery) -> None:  # noqa: ANN001
            got.append(delivery.message)

        sub = await b.trainer.consume_jobs(subjects.job("trainer-torch", "sft"), "test-replay", take, JobEnvelope)
        for _ in range(500):
            if got:
                break
            await asyncio.sleep(0.02)
        await sub.stop()
        return got

    jobs = b.call(queued())
    assert len(jobs) == 1 and jobs[0].spec["data"]["train"] == str(data)
    assert jobs[0].spec["model"] == str(tiny_model_dir)


@pytest.mark.parametrize("terminal", [False, True])
def test_compare_plots_runs_with_a_single_shared_metric(machines, cli, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                                        terminal: bool) -> None:
    """Two SFT runs that log only `loss`: the default `runs compare` plot (one panel) used to crash
    with a TypeError inside plotext; drawn both for a pipe (no colour) and a colour terminal."""
    from rich.console import Console

    a, _b = machines
    ems = [RunEmitter(method="sft", spec={"name": f"only-loss-{i}", "lr": 1e-4 * (i + 1)}) for i in range(2)]
    for i, em in enumerate(ems):
        a.emit(em, [em.started(total_steps=20)] + [em.progressed(s, 20, loss=loss_at(s) + 0.2 * i) for s in range(20)]
               + [em.finished()])
    if terminal:
        monkeypatch.setattr(runs_cmd, "console", Console(force_terminal=True, color_system="256", width=200))
    code, out, err = cli(a, "runs", "compare", ems[0].run_id, ems[1].run_id)
    assert code == 0, err
    assert "only-loss-0" in out and "only-loss-1" in out and "┌" in out and "loss" in out
    assert ("\x1b[" in out) is terminal
    plot = out[out.index("┌"):]
    assert "only-loss-0" in plot and "only-loss-1" in plot  # both runs are in the legend
    assert "3.0" in plot  # the y axis spans the curves (loss starts at 3.0)
