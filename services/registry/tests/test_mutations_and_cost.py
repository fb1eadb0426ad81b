"""Tags, notes, delete (keeping or removing artifacts), and the cost rollup."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from halo_common.errors import Conflict, NotFound
from halo_registry.core.cost import compute_cost, mean_power
from halo_registry.core.store import RegistryStore
from halo_schemas.registry import (
    RunCostRequest,
    RunDeleteRequest,
    RunNoteRequest,
    RunSearch,
    RunTagRequest,
)
from halo_testing import T0, RunEmitter


def test_tags_and_notes(store: RegistryStore) -> None:
    em = RunEmitter(spec={"tags": ["a"]})
    store.apply_events([em.started(), em.finished()])
    s = store.tag(RunTagRequest(run_id=em.run_id, add=["b", "c", "a"], remove=["a"]))
    assert s.tags == ["b", "c"]
    assert store.search(RunSearch(tag=["c"])).total == 1 and store.search(RunSearch(tag=["a"])).total == 0
    store.note(RunNoteRequest(run_id=em.run_id, notes="lr too high"))
    store.note(RunNoteRequest(run_id=em.run_id, notes="retry with 1e-5", append=True))
    assert store.get(em.run_id).notes == "lr too high\n\nretry with 1e-5"
    store.note(RunNoteRequest(run_id=em.run_id, notes="replaced"))
    assert store.get(em.run_id).notes == "replaced"
    with pytest.raises(NotFound):
        store.tag(RunTagRequest(run_id="run-missing", add=["x"]))


def _run_with_files(store: RegistryStore, outside: Path) -> tuple[RunEmitter, Path, Path, Path]:
    em = RunEmitter()
    run_dir = store.run_dir(em.run_id)
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    merged = store.paths.home / "models" / f"{em.run_id}-merged"
    merged.mkdir(parents=True)
    (merged / "model.safetensors").write_bytes(b"merged")
    outside.mkdir(parents=True, exist_ok=True)
    store.apply_events([em.started(), em.artifact(str(run_dir / "adapter")),
                        em.artifact(str(merged), kind="model", format="hf"),
                        em.artifact(str(outside), kind="export", format="gguf"), em.finished()])
    return em, run_dir, merged, outside


def test_delete_keeping_artifacts(store: RegistryStore, tmp_path: Path) -> None:
    em, run_dir, merged, outside = _run_with_files(store, tmp_path / "elsewhere")
    out = store.delete(RunDeleteRequest(run_id=em.run_id))
    assert out.removed_paths == [] and set(out.kept_paths) == {str(run_dir / "adapter"), str(merged), str(outside)}
    assert run_dir.exists() and merged.exists()
    with pytest.raises(NotFound):
        store.get(em.run_id)
    with store.db.read() as conn:
        for table in ("metrics", "artifacts", "run_tags", "eval_results", "metric_stats"):
            assert conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar() == 0, table


def test_delete_removing_artifacts_stays_inside_halo_home(store: RegistryStore, tmp_path: Path) -> None:
    em, run_dir, merged, outside = _run_with_files(store, tmp_path / "elsewhere")
    out = store.delete(RunDeleteRequest(run_id=em.run_id, keep_artifacts=False))
    assert set(out.removed_paths) == {str(run_dir), str(merged)}
    assert out.kept_paths == [str(outside)]
    assert not run_dir.exists() and not merged.exists() and outside.exists()


def test_delete_refuses_a_running_run_unless_forced(store: RegistryStore) -> None:
    em = RunEmitter()
    store.apply_events([em.started()])
    with pytest.raises(Conflict, match="still running"):
        store.delete(RunDeleteRequest(run_id=em.run_id))
    store.delete(RunDeleteRequest(run_id=em.run_id, force=True))
    assert store.search(RunSearch()).total == 0


# ---- cost ------------------------------------------------------------------------------------
def test_mean_power_is_time_weighted() -> None:
    t = [T0 + timedelta(seconds=s) for s in (0, 10, 30)]
    # trapezoids: (100+200)/2*10 + (200+100)/2*20 = 1500 + 3000 = 4500 J over 30 s
    assert mean_power([(t[0], 100.0), (t[1], 200.0), (t[2], 100.0)]) == pytest.approx(150.0)
    assert mean_power([(t[0], 80.0)]) == 80.0 and mean_power([]) is None


def test_measured_cost(store: RegistryStore) -> None:
    em = RunEmitter(backend="cuda", step_s=36.0)  # 100 steps x 36 s = 1 h
    evs = [em.started()] + [em.progressed(s, loss=1.0, power_watts=300.0 if s < 50 else 500.0) for s in range(100)]
    store.apply_events(evs + [em.finished(at_step=100)])
    c = store.cost(RunCostRequest(run_id=em.run_id))
    # Samples at steps 0..99; trapezoid mean over 99 intervals: 49 at 300 W, 1 ramp at 400 W, 49 at 500 W.
    mean = (49 * 300 + 400 + 49 * 500) / 99
    assert (c.source, c.samples, c.duration_s, c.currency, c.price_per_kwh) == ("measured", 100, 3600.0, "EUR", 0.25)
    assert c.avg_watts == pytest.approx(mean)
    assert c.kwh == pytest.approx(mean / 1000) and c.cost == pytest.approx(mean / 1000 * 0.25)
    assert store.get(em.run_id).cost == c
    assert store.cost(RunCostRequest(run_id=em.run_id, price_per_kwh=1.0)).cost == pytest.approx(mean / 1000)


def test_nominal_cost_when_nothing_was_measured(store: RegistryStore) -> None:
    em = RunEmitter(backend="cpu", step_s=18.0)
    store.apply_events([em.started()] + [em.progressed(s, loss=1.0) for s in range(100)] + [em.finished(at_step=100)])
    c = store.cost(RunCostRequest(run_id=em.run_id))
    assert (c.source, c.avg_watts, c.duration_s, c.samples) == ("nominal", 60.0, 1800.0, 0)
    assert c.kwh == pytest.approx(0.03) and c.cost == pytest.approx(0.0075)


def test_cost_while_running_and_unknown() -> None:
    c = compute_cost("run-x", backend="mps", duration_s=None, samples=[], price_per_kwh=0.3, currency="USD",
                     nominal_watts={"mps": 40.0})
    assert (c.source, c.kwh, c.cost) == ("unknown", None, None)
    running = compute_cost("run-x", backend="rocm", duration_s=900.0, samples=[], price_per_kwh=0.3, currency="USD",
                           nominal_watts={"rocm": 400.0, "cpu": 65.0})
    assert running.kwh == pytest.approx(0.1)
    # An unknown backend falls back to the CPU figure.
    odd = compute_cost("run-x", backend="tpu", duration_s=3600.0, samples=[], price_per_kwh=1.0, currency="USD",
                       nominal_watts={"cpu": 65.0})
    assert odd.kwh == pytest.approx(0.065)
