"""The data service on a real nats-server with the real registry, verifier-sandbox and serve (tiny model as the
teacher): jobs, datasets with lineage, ``dataset:<id>`` inputs, synthesize (both kinds, a failing teacher,
resume without duplicates), inspect and bad input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from halo_bus import Bus
from halo_clients import DataClient, JobsClient, RegistryClient
from halo_clients.data import resolve_dataset_refs
from halo_common.errors import BadRequest, NotFound
from halo_data import adapters
from halo_data.core.common import Cancelled
from halo_data.core.synthesize import OpenAITeacher, synthesize
from halo_data.service import DataService
from halo_data.settings import DataSettings
from halo_registry.service import Registry
from halo_registry.settings import RegistrySettings
from halo_schemas.data import DedupSpec, InspectRequest, ScoreSpec, SynthesizeParams, SynthesizeSpec
from halo_schemas.jobs import JobState, JobStatus
from halo_schemas.training import SFTSpec
from halo_serve.service import Serve
from halo_serve.settings import ServeSettings
from halo_testing import await_until
from halo_verifier_sandbox.service import VerifierSandbox
from halo_verifier_sandbox.settings import VerifierSandboxSettings

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    bus: Bus
    home: Path
    serve_url: str


@pytest.fixture
async def stack(nats_bus: Bus, tmp_path: Path, tiny_model_dir: Path) -> AsyncIterator[Stack]:
    home = tmp_path / "home"
    services = [
        Registry(RegistrySettings(home=home), nats_bus),
        VerifierSandbox(VerifierSandboxSettings(home=home, workers=1), nats_bus),
        Serve(ServeSettings(port=0, home=home, models=[f"tiny={tiny_model_dir}"]), nats_bus),
        DataService(DataSettings(home=home, progress_interval_s=0), nats_bus),
    ]
    for svc in services:
        await svc.start()
    try:
        yield Stack(nats_bus, home, services[2].url)  # type: ignore[attr-defined]
    finally:
        for svc in reversed(services):
            await svc.stop()


async def finished(bus: Bus, job_id: str) -> JobStatus:
    jobs = JobsClient(bus)

    async def done() -> JobStatus | None:
        s = await jobs.status(job_id)
        return s if s.state.terminal else None

    return await await_until(done, timeout=240, interval=0.2, what=f"job {job_id} to finish")


async def run_summary(bus: Bus, job_id: str) -> dict:
    from halo_bus import subjects

    records = await bus.replay(subjects.run_events_filter((await JobsClient(bus).status(job_id)).run_id))
    return next(r.message.summary for r in records if r.subject.endswith(".finished"))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


async def test_dedup_job_registers_a_dataset_that_the_next_step_reads(stack: Stack, tmp_path: Path) -> None:
    rows = [{"text": f"row {i} talks about topic {i % 5} in several more words"} for i in range(20)]
    src = write_jsonl(tmp_path / "raw.jsonl", rows + rows[:5])
    data, registry = DataClient(stack.bus), RegistryClient(stack.bus)
    sub = await data.submit(DedupSpec(input=str(src), output=str(tmp_path / "dedup.jsonl"), method="exact",
                                      dataset_name="raw-dedup"))
    status = await finished(stack.bus, sub.job_id)
    assert status.state == JobState.SUCCEEDED, status.error
    summary = await run_summary(stack.bus, sub.job_id)
    info = await registry.dataset(summary["dataset_id"])
    assert (info.rows, info.name, info.recipe["op"], info.recipe["method"]) == (20, "raw-dedup", "dedup", "exact")
    assert info.sha256 == summary["sha256"] and info.path == str(tmp_path / "dedup.jsonl")

    sub2 = await data.submit(ScoreSpec(input=f"dataset:{info.dataset_id}", output=str(tmp_path / "scored.parquet")))
    assert (await finished(stack.bus, sub2.job_id)).state == JobState.SUCCEEDED
    child = await registry.dataset((await run_summary(stack.bus, sub2.job_id))["dataset_id"])
    assert child.parents == [info.dataset_id] and child.format == "parquet" and child.rows == 20
    listed = await registry.datasets()
    assert [d.dataset_id for d in listed.datasets][:2] == [child.dataset_id, info.dataset_id]

    report = await data.inspect(InspectRequest(path=f"dataset:{child.dataset_id}"))
    assert report.rows == 20 and "scores" in report.fields

    # A training spec may name the dataset; the gateway's submit path resolves it to the registered file.
    spec = SFTSpec.model_validate({"model": "tiny", "data": {"train": f"dataset:{info.dataset_id}"}})
    resolved = await resolve_dataset_refs(stack.bus, spec)
    assert resolved.data.train == str(tmp_path / "dedup.jsonl")
    with pytest.raises(NotFound) as err:
        await resolve_dataset_refs(stack.bus, spec.model_copy(update={"data": spec.data.model_copy(
            update={"eval": "dataset:ds-nope"})}))
    assert err.value.param == "data.eval"


async def test_bad_input_fails_the_job_naming_the_line(stack: Stack, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": \n')
    sub = await DataClient(stack.bus).submit(DedupSpec(input=str(bad)))
    status = await finished(stack.bus, sub.job_id)
    assert status.state == JobState.FAILED and "bad.jsonl:2:" in (status.error or "")
    with pytest.raises(BadRequest, match="no records"):
        empty = tmp_path / "empty.jsonl"
        empty.write_text("")
        await DataClient(stack.bus).inspect(InspectRequest(path=str(empty)))


def seeds(tmp_path: Path) -> Path:
    rows = [{"question": f"Say the word number {i}.", "answer": f"word number {i}"} for i in range(6)]
    rows.insert(3, {"question": "Repeat this: " + "x " * 4000, "answer": "x"})  # longer than the tiny model's context
    return write_jsonl(tmp_path / "seeds.jsonl", rows)


@pytest.mark.parametrize("kind", ["sft", "preference"])
async def test_synthesize_with_the_served_tiny_model(stack: Stack, tmp_path: Path, kind: str) -> None:
    spec = SynthesizeSpec.model_validate({
        "input": str(seeds(tmp_path)), "output": str(tmp_path / f"{kind}.jsonl"), "kind": kind,
        "n": 1 if kind == "sft" else 3, "threshold": 0.0, "margin": 0.0, "batch_size": 2,
        "teacher": {"url": stack.serve_url + "/v1", "model": "tiny", "max_tokens": 12, "temperature": 1.0},
        "verifier": {"name": "chrf"}, "context_fields": {"reference": "answer"}})
    sub = await DataClient(stack.bus).submit(spec)
    status = await finished(stack.bus, sub.job_id)
    assert status.state == JobState.SUCCEEDED, status.error
    summary = await run_summary(stack.bus, sub.job_id)
    print(f"\n{kind}: {summary}")
    assert summary["teacher_errors"] == 1 and summary["dropped"]["teacher_error"] == 1
    rows = [json.loads(x) for x in (tmp_path / f"{kind}.jsonl").read_text().splitlines()]
    assert len({r["seed_row"] for r in rows}) == len(rows) and 4 not in {r["seed_row"] for r in rows}
    if kind == "sft":
        assert len(rows) == 6 and all(0 <= r["reward"] <= 1 and r["completion"] for r in rows)
    else:
        assert rows and all(r["chosen_reward"] > r["rejected_reward"] for r in rows)
        assert len(rows) + summary["dropped"].get("tie", 0) + 1 == 7
    assert (await RegistryClient(stack.bus).dataset(summary["dataset_id"])).rows == len(rows)


async def test_synthesize_resumes_after_a_restart_without_duplicates(stack: Stack, tmp_path: Path) -> None:
    params = SynthesizeParams.model_validate({
        "kind": "sft", "n": 1, "threshold": 0.0, "batch_size": 2, "verifier": {"name": "chrf"},
        "context_fields": {"reference": "answer"},
        "teacher": {"url": stack.serve_url + "/v1", "model": "tiny", "max_tokens": 8}})
    loop = asyncio.get_running_loop()
    plugins = adapters.plugins(stack.bus, loop, verify_timeout_s=120, teacher_timeout_s=120)
    asked: list[str] = []

    class Counting(OpenAITeacher):
        def generate(self, prompts: list[str], n: int):  # type: ignore[no-untyped-def]
            asked.extend(prompts)
            return super().generate(prompts, n)

    src, out = seeds(tmp_path), tmp_path / "resume.jsonl"
    batches = [0]

    def stop_after_two_batches() -> bool:
        batches[0] += 1
        return batches[0] > 2

    def run(stop) -> object:  # type: ignore[no-untyped-def]
        return synthesize(src, out, params, teacher=Counting(params.teacher), verify=plugins.verify(params.verifier),
                          should_stop=stop)

    with pytest.raises(Cancelled):
        await asyncio.to_thread(run, stop_after_two_batches)
    first = len(asked)
    assert first == 4
    result = await asyncio.to_thread(run, lambda: False)
    assert len(asked) == 7  # only the 3 seeds not done before were asked again
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["seed_row"] for r in rows) == [1, 2, 3, 5, 6, 7] and result.details["seeds_resumed"] == 4
