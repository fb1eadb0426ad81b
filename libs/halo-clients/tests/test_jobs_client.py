"""Job routing by registration, and the jobs client on both buses."""

from __future__ import annotations

import pytest
from halo_bus import Bus, subjects
from halo_clients import JobsClient, choose_route, register_route, routes_for
from halo_clients import jobs as jobs_mod
from halo_common.errors import BadRequest, NotFound
from halo_common.settings import HaloSettings
from halo_runtime import Service
from halo_schemas.base import UserInput
from halo_schemas.jobs import JobEnvelope, JobRef, JobState, JobStatus
from pydantic import Field


class NoteSpec(UserInput):
    schema_id = "halo.test.note.v1"

    text: str = Field(default="hi", description="Text.")


@pytest.fixture
def routes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A private routing table with a job type served by two backends."""
    monkeypatch.setattr(jobs_mod, "_ROUTES", {})
    register_route("sft", "trainer-torch", backend="torch")
    register_route("sft", "trainer-mlx", backend="mlx")
    register_route("score", "eval")


def test_explicit_backends_pick_their_service(routes: None) -> None:
    assert choose_route("sft", "torch").service == "trainer-torch"
    assert choose_route("sft", "mlx").service == "trainer-mlx"
    assert choose_route("score", "mlx").service == "eval", "a backend-neutral route serves every backend"
    with pytest.raises(BadRequest, match="backend must be one of auto, torch, mlx"):
        choose_route("sft", "tpu")
    with pytest.raises(NotFound, match="unknown job type 'nope'; known: score, sft"):
        choose_route("nope")


def test_auto_prefers_a_running_service_then_the_host(routes: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_route("sft", "auto", running={"trainer-mlx"}).service == "trainer-mlx"
    assert choose_route("sft", "auto", running={"trainer-torch"}).service == "trainer-torch"
    monkeypatch.setattr(jobs_mod, "host_backend", lambda: "mlx")
    assert choose_route("sft", "auto", running={"trainer-torch", "trainer-mlx"}).service == "trainer-mlx"
    assert choose_route("sft", "auto", running=set()).service == "trainer-mlx", "nothing up: the host decides"
    monkeypatch.setattr(jobs_mod, "host_backend", lambda: "torch")
    assert choose_route("sft", "auto", running=None).service == "trainer-torch"


def test_registration_is_idempotent_and_checks_the_service(routes: None) -> None:
    register_route("score", "eval")
    assert len(routes_for("score")) == 1
    with pytest.raises(ValueError, match="unknown service 'nowhere'"):
        register_route("score", "nowhere")


def test_the_repository_routes_every_trainer_method() -> None:
    for method in subjects.TRAINER_TORCH_JOB_TYPES:
        assert any(r.service == "trainer-torch" for r in routes_for(method))
    assert routes_for("generate")[0].service == "rollout"


class FakeEval(Service):
    """A service that answers ``cancel`` like a job service does."""

    name = "eval"

    async def setup(self) -> None:
        await self.endpoint("cancel", self.on_cancel, JobRef)

    async def on_cancel(self, req: JobRef) -> JobStatus:
        status = await self.bus.kv_get(subjects.KV_JOB_STATE, req.job_id, JobStatus)
        assert status is not None
        status = status.model_copy(update={"state": JobState.CANCELLED})
        await self.bus.kv_put(subjects.KV_JOB_STATE, req.job_id, status)
        return status


async def test_submit_list_status_and_cancel(bus: Bus, routes: None) -> None:
    jobs = JobsClient(bus)
    seen: list[JobEnvelope] = []

    async def handler(delivery) -> None:  # noqa: ANN001
        seen.append(delivery.message)

    sub = await bus.consume_jobs(subjects.job("eval", "score"), "t-score", handler, JobEnvelope)
    submitted = await jobs.submit(await jobs.route("score"), NoteSpec(text="x"))
    status = await jobs.status(submitted.job_id)
    assert status.service == "eval" and status.job_type == "score" and status.state == JobState.QUEUED
    assert [j.job_id for j in await jobs.list(service="eval")] == [submitted.job_id]
    assert await jobs.list(service="trainer-torch") == []

    # The owning service is down: the cancel is recorded for the worker that picks the job up.
    recorded = await jobs.cancel(submitted.job_id)
    assert recorded.cancel_requested and recorded.state == JobState.QUEUED

    svc = FakeEval(HaloSettings(), bus)
    await svc.start()
    try:
        assert (await jobs.cancel(submitted.job_id)).state == JobState.CANCELLED
        assert (await jobs.cancel(submitted.job_id)).state == JobState.CANCELLED, "terminal: unchanged"
    finally:
        await svc.stop()
        await sub.stop()
    with pytest.raises(NotFound, match="no job 'job-missing'"):
        await jobs.status("job-missing")
