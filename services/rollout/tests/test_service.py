"""The rollout service on the in-memory bus: RPCs, errors with the field named, health."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from halo_bus import InMemoryBus, subjects
from halo_common.errors import BadRequest, NotFound
from halo_common.settings import ConfigError, load_settings
from halo_rollout.service import Rollout
from halo_rollout.settings import RolloutSettings
from halo_schemas.health import HealthRequest, ServiceHealth
from halo_schemas.rollout import (
    RolloutLoaded,
    RolloutLoadRequest,
    RolloutRequest,
    RolloutResult,
    SampleParams,
    SampleRequest,
)


@pytest.fixture
async def service(memory_bus: InMemoryBus, tiny_model_dir: Path, tmp_path: Path) -> AsyncIterator[Rollout]:
    svc = Rollout(RolloutSettings(default_model=str(tiny_model_dir), home=tmp_path, max_rpc_samples=16), memory_bus)
    await svc.start()
    yield svc
    await svc.stop()


async def test_generate_and_load_over_the_bus(service: Rollout, memory_bus: InMemoryBus, tiny_model_dir: Path) -> None:
    req = RolloutRequest(params=SampleParams(n=3, temperature=1.0, max_new_tokens=5, seed=2),
                         requests=[SampleRequest(prompt="hello"), SampleRequest(prompt="x", params=SampleParams())])
    res = await memory_bus.request(subjects.ROLLOUT_GENERATE, req, RolloutResult, timeout=60)
    assert res.backend == "transformers" and res.model == str(tiny_model_dir) and res.weights_version == 0
    assert [len(r.completions) for r in res.results] == [3, 1] and res.num_samples == 4
    assert res.num_tokens == sum(c.num_tokens for r in res.results for c in r.completions)
    again = await memory_bus.request(subjects.ROLLOUT_GENERATE, req.model_copy(update={"requests": req.requests[:1]}),
                                     RolloutResult, timeout=60)
    assert [c.token_ids for c in again.results[0].completions] == [c.token_ids for c in res.results[0].completions]

    loaded = await memory_bus.request(subjects.ROLLOUT_LOAD, RolloutLoadRequest(), RolloutLoaded, timeout=60)
    assert loaded.action == "cached" and loaded.weights_version == 0
    reloaded = await memory_bus.request(subjects.ROLLOUT_LOAD, RolloutLoadRequest(reload=True), RolloutLoaded, timeout=60)
    assert reloaded.action == "updated" and reloaded.weights_version == 1
    assert reloaded.weights_fingerprint != loaded.weights_fingerprint
    health = await memory_bus.request(subjects.rpc("rollout", "health"), HealthRequest(), ServiceHealth)
    assert health.status == "ok" and health.details["models"] == [f"transformers:{tiny_model_dir}"]
    assert service.metrics.samples.labels("transformers", "rpc")._value.get() == 7  # noqa: SLF001


async def test_errors_name_the_field(service: Rollout, memory_bus: InMemoryBus, tmp_path: Path) -> None:
    too_many = RolloutRequest(params=SampleParams(n=9), requests=[SampleRequest(prompt="a"), SampleRequest(prompt="b")])
    with pytest.raises(BadRequest) as err:
        await memory_bus.request(subjects.ROLLOUT_GENERATE, too_many, RolloutResult, timeout=60)
    assert err.value.param == "requests" and "rollout job" in err.value.message
    with pytest.raises(NotFound) as err:
        await memory_bus.request(subjects.ROLLOUT_GENERATE, RolloutRequest(model=str(tmp_path / "nope"),
                                 requests=[SampleRequest(prompt="a")]), RolloutResult, timeout=60)
    assert err.value.param == "model"
    with pytest.raises(NotFound) as err:
        await memory_bus.request(subjects.ROLLOUT_LOAD, RolloutLoadRequest(adapter=str(tmp_path / "nope")),
                                 RolloutLoaded, timeout=60)
    assert err.value.param == "adapter"
    # A typo inside the sampling parameters is refused by name (SampleParams is strict, even on the bus).
    raw = RolloutRequest.model_construct(model=None, adapter=None, backend="auto", params={"temprature": 0.5},
                                         requests=[{"prompt": "a"}])
    with pytest.warns(UserWarning), pytest.raises(BadRequest, match="params.temprature: unknown field"):
        await memory_bus.request(subjects.ROLLOUT_GENERATE, raw, RolloutResult, timeout=60)


async def test_no_default_model_is_a_clear_error(memory_bus: InMemoryBus, tmp_path: Path) -> None:
    svc = Rollout(RolloutSettings(home=tmp_path), memory_bus)
    await svc.start()
    try:
        with pytest.raises(BadRequest) as err:
            await memory_bus.request(subjects.ROLLOUT_GENERATE, RolloutRequest(requests=[SampleRequest(prompt="a")]),
                                     RolloutResult, timeout=30)
        assert err.value.param == "model" and "HALO_ROLLOUT_DEFAULT_MODEL" in err.value.message
    finally:
        await svc.stop()


def test_invalid_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALO_ROLLOUT_BACKEND", "tpu")
    with pytest.raises(ConfigError, match="HALO_ROLLOUT_BACKEND"):
        load_settings(RolloutSettings)
