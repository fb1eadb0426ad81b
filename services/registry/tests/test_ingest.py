"""Event ingest into the run database: the row a run's events build, and idempotence."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from halo_registry.core.db import metrics, runs
from halo_registry.core.store import RegistryStore
from halo_schemas.registry import RunDeleteRequest, RunMetricsRequest, RunSearch
from halo_testing import T0, RunEmitter, loss_at
from sqlalchemy import func, select


def _count(store: RegistryStore, table=metrics) -> int:  # noqa: ANN001
    with store.db.read() as conn:
        return conn.scalar(select(func.count()).select_from(table))


def full_run(em: RunEmitter, steps: int = 20) -> list:
    evs = [em.started(total_steps=steps)]
    for s in range(steps):
        evs.append(em.progressed(s, total_steps=steps, loss=loss_at(s), lr=1e-4))
    evs.append(em.checkpointed(10, f"/tmp/{em.run_id}/checkpoints/step-10"))
    evs.append(em.artifact(f"/tmp/{em.run_id}/adapter", step=steps - 1, sha256="ab" * 32, size_bytes=1234))
    evs.append(em.finished(summary={"final_loss": loss_at(steps - 1), "steps": steps}))
    return evs


def test_events_build_the_run(store: RegistryStore) -> None:
    em = RunEmitter(method="dpo", base_model="Qwen/Qwen2-0.5B", backend="cpu",
                    spec={"name": "first dpo", "tags": ["exp1", "baseline"], "ref_model": "Qwen/Qwen2-0.5B-ref",
                          "beta": 0.1, "lora": {"rank": 8}})
    stats = store.apply_events(full_run(em))
    assert (stats.events, stats.points, stats.runs_created) == (24, 40, 1)

    d = store.get(em.run_id)
    r = d.run
    assert (r.method, r.base_model, r.backend, r.status.value, r.name) == ("dpo", "Qwen/Qwen2-0.5B", "cpu", "succeeded",
                                                                            "first dpo")
    assert r.models == {"base_model": "Qwen/Qwen2-0.5B", "ref_model": "Qwen/Qwen2-0.5B-ref"}
    assert r.tags == ["baseline", "exp1"]
    assert (r.started_at, r.finished_at, r.duration_s) == (T0, T0 + timedelta(seconds=20), 20.0)
    assert (r.last_step, r.total_steps, r.job_id, r.service) == (19, 20, em.job_id, "trainer-torch")
    assert r.last_metrics == {"loss": loss_at(19), "lr": 1e-4}
    assert d.spec["lora"] == {"rank": 8} and d.summary == {"final_loss": loss_at(19), "steps": 20}
    assert [(a.kind, a.format, a.step) for a in d.artifacts] == [("checkpoint", "other", 10), ("adapter", "peft", 19)]
    assert d.artifacts[1].sha256 == "ab" * 32 and d.artifacts[1].size_bytes == 1234
    loss = next(m for m in d.metrics if m.name == "loss")
    assert (loss.points, loss.first_step, loss.last_step) == (20, 0, 19)
    assert (loss.min_value, loss.max_value, loss.last_value) == (loss_at(19), loss_at(0), loss_at(19))


def test_replayed_and_reordered_events_change_nothing(store: RegistryStore) -> None:
    em = RunEmitter()
    evs = full_run(em, steps=50)
    store.apply_events(evs)
    before = store.get(em.run_id)
    series = store.metrics(RunMetricsRequest(run_id=em.run_id))

    # The same events again: one at a time, in random batches, and in reverse order.
    for ev in evs:
        store.apply_events([ev])
    rng = random.Random(7)
    shuffled = evs[:]
    rng.shuffle(shuffled)
    for i in range(0, len(shuffled), 9):
        store.apply_events(shuffled[i:i + 9])
    store.apply_events(list(reversed(evs)))

    assert _count(store) == 100  # 50 steps x 2 metrics, exactly once
    assert _count(store, runs) == 1
    after = store.get(em.run_id)
    assert after.run == before.run and after.metrics == before.metrics and after.artifacts == before.artifacts
    assert store.metrics(RunMetricsRequest(run_id=em.run_id)) == series


def test_a_late_start_never_reopens_a_finished_run(store: RegistryStore) -> None:
    em = RunEmitter()
    start, step, done = em.started(), em.progressed(0, loss=1.0), em.finished("failed", error="OOM")
    store.apply_events([done, step])
    assert store.summary(em.run_id).status.value == "failed"
    store.apply_events([start])
    s = store.summary(em.run_id)
    assert (s.status.value, s.error, s.method) == ("failed", "OOM", "sft")


def test_a_resumed_run_reopens_and_overwrites_relogged_steps(store: RegistryStore) -> None:
    em = RunEmitter()
    store.apply_events([em.started()] + [em.progressed(s, loss=float(s)) for s in range(60)]
                       + [em.finished("failed", error="killed", at_step=60)])
    assert store.summary(em.run_id).status.value == "failed"
    # Resume from the step-50 checkpoint: steps 50..59 are logged again with other values.
    resumed = [em.started(resumed_from_step=50, at_step=61)] + [em.progressed(s, loss=float(s) + 0.5) for s in range(50, 80)]
    store.apply_events(resumed)
    s = store.summary(em.run_id)
    assert (s.status.value, s.finished_at, s.error, s.last_step) == ("running", None, None, 79)
    store.apply_events([em.finished(at_step=81)])
    assert _count(store) == 80
    loss = store.metrics(RunMetricsRequest(run_id=em.run_id, names=["loss"])).series[0]
    assert loss.values[49] == 49.0 and loss.values[50] == 50.5 and loss.values[79] == 79.5
    assert store.summary(em.run_id).last_metrics["loss"] == 79.5


def test_progress_before_start_makes_a_placeholder_that_start_completes(store: RegistryStore) -> None:
    em = RunEmitter(method="grpo", base_model="m")
    start = em.started()
    store.apply_events([em.progressed(0, reward=0.1)])
    s = store.summary(em.run_id)
    assert (s.method, s.status.value, s.base_model) == ("unknown", "running", None)
    store.apply_events([start])
    s = store.summary(em.run_id)
    assert (s.method, s.base_model, s.created_at, s.started_at) == ("grpo", "m", T0, T0)


def test_events_of_a_deleted_run_are_ignored(store: RegistryStore) -> None:
    em = RunEmitter()
    evs = full_run(em, steps=5)
    store.apply_events(evs)
    store.delete(RunDeleteRequest(run_id=em.run_id))
    stats = store.apply_events(evs)
    assert stats.ignored == len(evs)
    assert store.search(RunSearch()).total == 0 and _count(store) == 0


def test_lineage_from_the_spec(store: RegistryStore) -> None:
    parent = RunEmitter()
    child = RunEmitter(spec={"parent_run_id": parent.run_id, "fork_step": 40, "fork_cycle": 2})
    store.apply_events(full_run(parent, 3) + full_run(child, 3))
    p, c = store.get(parent.run_id), store.get(child.run_id)
    assert [(lk.child_run_id, lk.step, lk.cycle, lk.relation) for lk in p.children] == [(child.run_id, 40, 2, "fork")]
    assert [lk.parent_run_id for lk in c.parents] == [parent.run_id] and c.children == []


def test_power_readings_are_kept_as_samples(store: RegistryStore) -> None:
    em = RunEmitter(step_s=10.0)
    store.apply_events([em.started()] + [em.progressed(s, loss=1.0, power_watts=100.0 + 10 * s) for s in range(4)])
    with store.db.read() as conn:
        rows = conn.exec_driver_sql("SELECT step, watts FROM power_samples ORDER BY step").all()
    assert [tuple(r) for r in rows] == [(0, 100.0), (1, 110.0), (2, 120.0), (3, 130.0)]


@pytest.mark.parametrize("bad_state", ["running"])
def test_finished_with_a_non_terminal_state_still_records(store: RegistryStore, bad_state: str) -> None:
    # A producer bug must not crash ingest: the state is stored as given.
    em = RunEmitter()
    store.apply_events([em.started(), em.finished(bad_state)])
    assert store.summary(em.run_id).status.value == bad_state


def test_unstorable_values_are_skipped_not_fatal(store: RegistryStore) -> None:
    em = RunEmitter(method="m" * 300, backend="b" * 50, spec={"name": "n" * 500, "tags": ["t" * 100]})
    evs = [em.started(),
           em.progressed(0, loss=1.0, grad_norm=float("nan"), **{"x" * 200: 1.0}),
           em.progressed(1, loss=float("inf"), power_watts=float("nan")),
           em.progressed(2, loss=0.5),
           em.artifact("/tmp/a", kind="k" * 40, format="f" * 40),
           em.finished()]
    stats = store.apply_events(evs)
    assert (stats.points, stats.skipped_points) == (2, 4)
    d = store.get(em.run_id)
    assert (d.run.method, d.run.backend, d.run.name, d.run.tags) == ("m" * 64, "b" * 32, "n" * 200, ["t" * 64])
    assert [m.name for m in d.metrics] == ["loss"] and d.metrics[0].points == 2
    assert (d.artifacts[0].kind, d.artifacts[0].format) == ("k" * 32, "f" * 32)
    long_id = RunEmitter("r" * 129)
    assert store.apply_events([long_id.started()]).ignored == 1
