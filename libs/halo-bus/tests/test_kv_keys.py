"""Key/value keys: a key NATS KV would refuse (or mis-handle) is a 400 naming ``key`` on both buses,
never a 500 from the client library (issue #18: ``GET /api/v1/rollout/jobs/a%20b`` answered 500)."""

from __future__ import annotations

import pytest
from halo_bus import Bus, subjects
from halo_common.errors import BadRequest
from halo_schemas import JobStatus
from halo_schemas.jobs import JobState

BAD_KEYS = ["a b", "é", "job-1\n", "", ".job", "job.", "a..b", "*", ">", "a\x00b", "a:b"]


async def test_invalid_keys_are_bad_requests(bus: Bus) -> None:
    bucket = subjects.KV_JOB_STATE
    st = JobStatus(job_id="job-k", run_id="run-k", job_type="sft", service="trainer-torch", state=JobState.QUEUED)
    for key in BAD_KEYS:
        with pytest.raises(BadRequest) as err:
            await bus.kv_get(bucket, key, JobStatus)
        assert err.value.param == "key" and repr(key) in err.value.message
        with pytest.raises(BadRequest):
            await bus.kv_put(bucket, key, st)
    assert "job-1" not in await bus.kv_keys(bucket)  # "job-1\n" did not land as "job-1" either
    for key in ("job-k", "a.b_c-d", "A=1/x"):
        await bus.kv_put(bucket, key, st)
        assert await bus.kv_get(bucket, key, JobStatus) == st
