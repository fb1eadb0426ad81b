"""convert / merge as jobs on the serve service (real nats-server): the run's events carry the output
(RunArtifactAdded with quant, status and the verify figures), a failed verify fails the job with the
artifact recorded as failed, bad specs fail naming the field, and ``convert-formats`` answers over the bus."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from halo_bus import subjects
from halo_clients import JobsClient, ServeClient
from halo_clients.jobs import choose_route
from halo_schemas.convert import ConvertSpec, MergeBakeSpec
from halo_schemas.events import RunArtifactAdded, RunFinished, RunStarted
from halo_schemas.jobs import JobState
from halo_serve.core.convert.testing import confident_copy, replace_tokenizer
from halo_serve.service import Serve
from halo_serve.settings import ServeSettings


@pytest.fixture
async def serve(nats_bus: Any, tmp_path: Path) -> Any:
    svc = Serve(ServeSettings(port=0, home=tmp_path / "home", preload=False), nats_bus)
    await svc.start()
    yield ServeClient(nats_bus)
    await svc.stop()


async def _events(bus: Any, run_id: str, timeout: float = 300.0) -> list[Any]:
    """The run's events once it has finished."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        msgs = [r.message for r in await bus.replay(subjects.run_events_filter(run_id))]
        if any(isinstance(m, RunFinished) for m in msgs) or asyncio.get_running_loop().time() > deadline:
            return sorted(msgs, key=lambda m: m.seq)
        await asyncio.sleep(0.2)


async def test_convert_job_announces_a_verified_artifact(serve: ServeClient, nats_bus: Any, tiny_model_dir: Path,
                                                         tmp_path: Path) -> None:
    formats = (await serve.convert_formats()).formats
    assert formats["hf"]["fp16"] is None and set(formats) == {"hf", "gguf", "mlx"}
    src = confident_copy(tiny_model_dir, tmp_path / "src")
    out = tmp_path / "out-hf"
    sub = await serve.submit_convert(ConvertSpec(source=str(src), format="hf", quant="fp32", out=str(out),
                                                 max_new_tokens=4))
    evs = await _events(nats_bus, sub.run_id)
    started, art, fin = (next(e for e in evs if isinstance(e, t)) for t in (RunStarted, RunArtifactAdded, RunFinished))
    assert (started.method, started.service) == ("convert", "serve")
    assert fin.state == JobState.SUCCEEDED, fin.error
    assert (art.kind, art.format, art.quant, art.status, art.path) == ("export", "hf", "fp32", "verified", str(out))
    assert art.details["verify"]["passed"] and art.details["verify"]["top1_agreement"] >= 0.99
    assert art.size_bytes and len(art.sha256 or "") == 64 and (out / "config.json").is_file()
    assert fin.summary["status"] == "verified" and fin.summary["sha256"] == art.sha256
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1))
    status = await JobsClient(nats_bus).status(sub.job_id)
    assert status.state == JobState.SUCCEEDED and status.service == "serve"


async def test_failed_verify_fails_the_job_and_records_a_failed_artifact(
        serve: ServeClient, nats_bus: Any, tiny_model_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A broken exporter (it writes another tokenizer into the export, as a real converter bug would):
    # the job's verify must catch it, fail the job and still record the artifact, as failed.
    import halo_serve.core.convert as convert_mod
    from halo_models.tiny import make_tiny_cached

    other = make_tiny_cached(arch="llama", vocab_size=400)
    real_export = convert_mod.EXPORTERS["hf"]

    def broken_export(src: Path, out: Path, quant: str) -> Path:
        result = real_export(src, out, quant)
        replace_tokenizer(out, other)
        return result

    monkeypatch.setitem(convert_mod.EXPORTERS, "hf", broken_export)
    src = confident_copy(tiny_model_dir, tmp_path / "src")
    out = tmp_path / "out"
    sub = await serve.submit_convert(ConvertSpec(source=str(src), format="hf", quant="fp32", out=str(out),
                                                 max_new_tokens=4))
    evs = await _events(nats_bus, sub.run_id)
    art = next(e for e in evs if isinstance(e, RunArtifactAdded))
    fin = evs[-1]
    assert fin.state == JobState.FAILED and fin.error.startswith("round-trip verify failed: tokenizer")
    assert art.status == "failed" and art.details["verify"]["tokenizer_agreement"] < 1.0
    assert fin.summary["status"] == "failed" and out.is_dir()


async def test_bad_specs_fail_naming_the_field(serve: ServeClient, nats_bus: Any, tmp_path: Path) -> None:
    jobs = JobsClient(nats_bus)
    missing = await serve.submit_convert(ConvertSpec(source=str(tmp_path / "nope"), format="hf", quant="fp16"))
    fin = (await _events(nats_bus, missing.run_id, timeout=60))[-1]
    assert fin.state == JobState.FAILED and "nope" in fin.error
    # A spec that does not validate (sent raw, as another client might): failed, naming the field.
    from halo_runtime.jobs import submit_job
    from halo_schemas.base import UserInput

    class Raw(UserInput):
        source: str
        format: str
        quant: str

    bad = await submit_job(nats_bus, service="serve", job_type="convert",
                           spec=Raw(source="x", format="onnx", quant="fp16"))
    fin = (await _events(nats_bus, bad.run_id, timeout=60))[-1]
    assert fin.state == JobState.FAILED and "format" in fin.error
    assert (await jobs.status(bad.job_id)).state == JobState.FAILED
    assert choose_route("merge-bake").service == "serve"
    bake = await serve.submit_bake(MergeBakeSpec(adapter=str(tmp_path), out=str(tmp_path / "baked")))
    fin = (await _events(nats_bus, bake.run_id, timeout=60))[-1]
    assert fin.state == JobState.FAILED and "adapter" in fin.error
