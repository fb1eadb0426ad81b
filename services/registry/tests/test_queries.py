"""Search, facets, detail, series downsampling, comparison, eval grid — checked against an
oracle computed in Python from the runs the test creates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy
from halo_common.errors import NotFound
from halo_registry.core.store import RegistryStore
from halo_schemas.registry import (
    EvalGridRequest,
    EvalRecordRequest,
    EvalResultIn,
    RunCompareRequest,
    RunMetricsRequest,
    RunSearch,
)
from halo_testing import RunEmitter
from pydantic import ValidationError

BASE = datetime(2026, 3, 1, tzinfo=UTC)


@dataclass
class R:
    run_id: str
    method: str
    model: str
    backend: str
    status: str
    tags: list[str]
    day: int
    final_loss: float | None
    evals: dict[str, float]


RUNS = [
    R("run-a01", "sft", "Qwen/Qwen2-0.5B", "cpu", "succeeded", ["base"], 0, 1.5, {"gsm8k": 0.30}),
    R("run-a02", "sft", "Qwen/Qwen2-1.5B", "cuda", "succeeded", ["base", "big"], 1, 1.2, {"gsm8k": 0.42, "mbpp": 0.2}),
    R("run-a03", "dpo", "Qwen/Qwen2-0.5B", "cuda", "failed", ["pref"], 2, 2.5, {}),
    R("run-a04", "dpo", "meta-llama/Llama-3.2-1B", "rocm", "succeeded", ["pref", "big"], 3, 0.9, {"gsm8k": 0.38}),
    R("run-a05", "grpo", "meta-llama/Llama-3.2-1B", "cuda", "running", ["rl"], 4, None, {}),
    R("run-a06", "grpo", "Qwen/Qwen2-0.5B", "mlx", "succeeded", ["rl", "base"], 5, 1.1, {"mbpp": 0.35}),
    R("run-a07", "sft", "tiny-llama", "cpu", "cancelled", [], 6, 3.0, {}),
    R("run-a08", "orpo", "Qwen/Qwen2-1.5B", "cuda", "succeeded", ["big"], 7, 1.0, {"gsm8k": 0.42}),
]


def _emit(store: RegistryStore, r: R) -> None:
    em = RunEmitter(r.run_id, method=r.method, base_model=r.model, backend=r.backend,
                    spec={"name": f"name-{r.run_id[-2:]}", "tags": r.tags, "lr": 1e-4 * (1 + r.day % 2),
                          "lora": {"rank": 8 if r.day < 4 else 16, "alpha": 16}},
                    t0=BASE + timedelta(days=r.day), step_s=1.0 + r.day)
    evs = [em.started()]
    if r.final_loss is not None:
        evs += [em.progressed(s, loss=r.final_loss + (9 - s) * 0.1) for s in range(10)]
    if r.status != "running":
        evs.append(em.finished(r.status, error="boom" if r.status == "failed" else None))
    store.apply_events(evs)
    if r.evals:
        store.record_eval(EvalRecordRequest(run_id=r.run_id, results=[
            EvalResultIn(task=t, metric="accuracy", value=v) for t, v in r.evals.items()]))


@pytest.fixture
def populated(store: RegistryStore) -> RegistryStore:
    for r in RUNS:
        _emit(store, r)
    return store


def ids(page) -> list[str]:  # noqa: ANN001
    return [i.run_id for i in page.items]


def oracle(pred, key=lambda r: r.day, reverse=True) -> list[str]:  # noqa: ANN001
    return [r.run_id for r in sorted((r for r in RUNS if pred(r)), key=key, reverse=reverse)]


@pytest.mark.parametrize(("req", "pred"), [
    ({}, lambda r: True),
    ({"status": ["succeeded"]}, lambda r: r.status == "succeeded"),
    ({"status": ["failed", "cancelled"]}, lambda r: r.status in ("failed", "cancelled")),
    ({"method": ["dpo", "grpo"]}, lambda r: r.method in ("dpo", "grpo")),
    ({"model": "qwen2-0.5"}, lambda r: "qwen2-0.5" in r.model.lower()),
    ({"model": "LLAMA"}, lambda r: "llama" in r.model.lower()),
    ({"backend": ["cuda"]}, lambda r: r.backend == "cuda"),
    ({"tag": ["big"]}, lambda r: "big" in r.tags),
    ({"tag": ["big", "pref"]}, lambda r: {"big", "pref"} <= set(r.tags)),
    ({"has_eval": True}, lambda r: bool(r.evals)),
    ({"has_eval": False}, lambda r: not r.evals),
    ({"since": BASE + timedelta(days=2), "until": BASE + timedelta(days=5)}, lambda r: 2 <= r.day < 5),
    ({"text": "name-0"}, lambda r: True),
    ({"text": "a03"}, lambda r: r.run_id == "run-a03"),
    ({"status": ["succeeded"], "backend": ["cuda"], "tag": ["big"]},
     lambda r: r.status == "succeeded" and r.backend == "cuda" and "big" in r.tags),
])
def test_search_filters(populated: RegistryStore, req: dict, pred) -> None:  # noqa: ANN001
    page = populated.search(RunSearch(**req))
    assert ids(page) == oracle(pred)
    assert page.total == len(oracle(pred))


def test_sort_and_pagination(populated: RegistryStore) -> None:
    asc = populated.search(RunSearch(sort="created_at"))
    assert ids(asc) == oracle(lambda r: True, reverse=False)
    by_method = populated.search(RunSearch(sort="method"))
    assert ids(by_method) == [r.run_id for r in sorted(RUNS, key=lambda r: (r.method, r.run_id))]
    # Duration: finished runs by duration desc (10 steps x step_s), the running one last (no duration).
    by_dur = populated.search(RunSearch(sort="-duration_s"))
    assert ids(by_dur)[-1] == "run-a05"
    assert [i.duration_s for i in by_dur.items[:-1]] == sorted([i.duration_s for i in by_dur.items[:-1]], reverse=True)

    pages = [populated.search(RunSearch(sort="-created_at", limit=3, offset=o)) for o in (0, 3, 6, 9)]
    assert [x for p in pages for x in ids(p)] == oracle(lambda r: True)
    assert [p.total for p in pages] == [8, 8, 8, 8] and ids(pages[3]) == []


def test_sort_by_last_metric_value(populated: RegistryStore) -> None:
    page = populated.search(RunSearch(sort="metric.loss"))
    with_loss = [r for r in RUNS if r.final_loss is not None]
    expected = [r.run_id for r in sorted(with_loss, key=lambda r: (r.final_loss, r.run_id))]
    expected += sorted(r.run_id for r in RUNS if r.final_loss is None)
    assert ids(page) == expected
    assert page.items[0].last_metrics["loss"] == pytest.approx(0.9)
    # An unknown metric sorts nothing away: every run is there, by run id.
    assert ids(populated.search(RunSearch(sort="metric.nope"))) == sorted(r.run_id for r in RUNS)


def test_facets_count_with_the_other_filters(populated: RegistryStore) -> None:
    page = populated.search(RunSearch(method=["sft"], facets=True))
    f = {k: {c.value: c.count for c in v} for k, v in page.facets.items()}
    sft = [r for r in RUNS if r.method == "sft"]
    # The method facet ignores the method filter (so other methods stay visible)…
    assert f["method"] == {"sft": 3, "dpo": 2, "grpo": 2, "orpo": 1}
    # …every other facet counts within it.
    assert f["status"] == {"succeeded": 2, "cancelled": 1}
    assert f["backend"] == {b: sum(r.backend == b for r in sft) for b in {r.backend for r in sft}}
    assert f["tag"] == {"base": 2, "big": 1}
    assert f["base_model"] == {"Qwen/Qwen2-0.5B": 1, "Qwen/Qwen2-1.5B": 1, "tiny-llama": 1}
    assert [c.count for c in page.facets["method"]] == sorted((c.count for c in page.facets["method"]), reverse=True)


def test_unknown_filters_and_bad_pages_are_refused_by_name() -> None:
    with pytest.raises(ValidationError, match="colour"):
        RunSearch.model_validate({"colour": "red"})
    with pytest.raises(ValidationError, match="offset"):
        RunSearch(offset=-1)
    with pytest.raises(ValidationError, match="limit"):
        RunSearch(limit=0)
    with pytest.raises(ValidationError, match="unknown sort field 'colour'"):
        RunSearch(sort="-colour")
    with pytest.raises(ValidationError, match="status"):
        RunSearch.model_validate({"status": ["finished"]})


def test_detail_of_unknown_run_is_not_found(populated: RegistryStore) -> None:
    with pytest.raises(NotFound, match="run-zzz"):
        populated.get("run-zzz")


# ---- series ----------------------------------------------------------------------------------
@pytest.fixture
def long_run(store: RegistryStore) -> str:
    em = RunEmitter("run-long")
    n = 10_000
    store.apply_events([em.started()])
    batch = [em.progressed(s, x=float(s), y=float(s % 7)) for s in range(n)]
    for i in range(0, n, 2000):
        store.apply_events(batch[i:i + 2000])
    return em.run_id


def test_whole_long_series_is_read_from_rollups_exactly(store: RegistryStore, long_run: str) -> None:
    m = store.metrics(RunMetricsRequest(run_id=long_run, names=["x", "y"], max_points=100))
    x, y = m.series
    # 10,000 steps = 157 blocks of 64; at most 100 points -> buckets of 2 blocks (128 steps), 79 points.
    assert (x.points, x.downsampled, x.bucket_steps, len(x.steps)) == (10_000, True, 128, 79)
    assert x.steps[:3] == [0, 128, 256] and x.steps[-1] == 9984
    assert x.values[0] == pytest.approx(63.5) and x.values[-1] == pytest.approx((9984 + 9999) / 2)
    assert (x.mins[5], x.maxs[5]) == (640.0, 767.0)
    # y = step % 7: each bucket's exact mean, from the points themselves.
    for i, start in enumerate(y.steps):
        vals = [s % 7 for s in range(start, min(start + 128, 10_000))]
        assert y.values[i] == pytest.approx(sum(vals) / len(vals)), start
    # Finer than a rollup block (10,000 / 500 = 20 steps per bucket): read from the points.
    fine = store.metrics(RunMetricsRequest(run_id=long_run, names=["x"], max_points=500)).series[0]
    assert (fine.bucket_steps, len(fine.values), fine.values[0]) == (20, 500, pytest.approx(9.5))


def test_step_window_is_bucketed_from_the_points(store: RegistryStore, long_run: str) -> None:
    m = store.metrics(RunMetricsRequest(run_id=long_run, names=["x"], max_points=100, step_min=0, step_max=9998))
    (x,) = m.series
    assert (x.points, x.downsampled, x.bucket_steps, len(x.steps)) == (9_999, True, 100, 100)
    assert x.steps[:3] == [0, 100, 200]
    assert x.values[0] == pytest.approx(49.5) and x.values[-1] == pytest.approx(9949.0)
    assert (x.mins[5], x.maxs[5]) == (500.0, 599.0)


def test_rollups_stay_exact_when_steps_are_relogged(store: RegistryStore) -> None:
    em = RunEmitter()
    store.apply_events([em.started()] + [em.progressed(s, v=1.0) for s in range(640)])
    store.apply_events([em.progressed(s, v=3.0) for s in range(64, 128)])  # a resume re-logs block 1
    store.apply_events([em.progressed(s, v=3.0) for s in range(64, 128)])  # …and is replayed
    (v,) = store.metrics(RunMetricsRequest(run_id=em.run_id, max_points=5)).series
    assert (v.bucket_steps, v.points) == (128, 640)
    assert v.values == pytest.approx([2.0, 1.0, 1.0, 1.0, 1.0])


def test_series_raw_when_short_enough_and_step_window(store: RegistryStore, long_run: str) -> None:
    m = store.metrics(RunMetricsRequest(run_id=long_run, names=["y"], max_points=20000))
    (y,) = m.series
    assert (y.points, y.downsampled, y.mins) == (10_000, False, None)
    assert y.values[:8] == [0, 1, 2, 3, 4, 5, 6, 0]
    w = store.metrics(RunMetricsRequest(run_id=long_run, names=["x"], step_min=1000, step_max=1099, max_points=10))
    assert (w.series[0].steps[0], w.series[0].points, w.series[0].bucket_steps) == (1000, 100, 10)
    assert w.series[0].values[-1] == pytest.approx(1094.5)


def test_series_unknown_metric_names_what_exists(store: RegistryStore, long_run: str) -> None:
    with pytest.raises(NotFound, match=r"no metric 'lss'; it has: x, y"):
        store.metrics(RunMetricsRequest(run_id=long_run, names=["lss"]))


def test_sparse_series_is_not_marked_downsampled(store: RegistryStore) -> None:
    em = RunEmitter()
    store.apply_events([em.started()] + [em.progressed(s * 50, loss=float(s)) for s in range(40)])
    (loss,) = store.metrics(RunMetricsRequest(run_id=em.run_id, max_points=100)).series
    assert (loss.points, loss.downsampled, len(loss.values)) == (40, False, 40)
    assert loss.steps[-1] == 1950 and loss.values == [float(s) for s in range(40)]


# ---- compare ---------------------------------------------------------------------------------
def test_compare_overlay_and_config_diff(populated: RegistryStore) -> None:
    cmp = populated.compare(RunCompareRequest(run_ids=["run-a01", "run-a04", "run-a06"], max_points=5))
    assert [r.run_id for r in cmp.runs] == ["run-a01", "run-a04", "run-a06"]
    assert cmp.metrics == ["loss"]
    s = cmp.series["run-a04"][0]
    assert (s.name, s.points, s.bucket_steps, len(s.values)) == ("loss", 10, 2, 5)
    assert s.values[0] == pytest.approx(0.9 + 0.85)  # mean of steps 0 and 1
    diff = {d.key: d.values for d in cmp.config_diff}
    assert diff["lora.rank"] == {"run-a01": 8, "run-a04": 8, "run-a06": 16}
    assert diff["run.method"] == {"run-a01": "sft", "run-a04": "dpo", "run-a06": "grpo"}
    assert diff["lr"] == {"run-a01": 1e-4, "run-a04": 2e-4, "run-a06": 2e-4}
    assert "lora.alpha" not in diff and cmp.identical_keys == 1  # only lora.alpha agrees
    assert list(diff) == sorted(diff)


def test_compare_refuses_bad_requests(populated: RegistryStore) -> None:
    with pytest.raises(ValidationError, match="run_ids"):
        RunCompareRequest(run_ids=[f"run-{i}" for i in range(9)])
    with pytest.raises(ValidationError, match="given twice: run-a01"):
        RunCompareRequest(run_ids=["run-a01", "run-a01"])
    with pytest.raises(NotFound, match="run-nope"):
        populated.compare(RunCompareRequest(run_ids=["run-a01", "run-nope"]))
    with pytest.raises(NotFound, match="'reward'"):
        populated.compare(RunCompareRequest(run_ids=["run-a01", "run-a02"], metrics=["reward"]))


# ---- eval grid -------------------------------------------------------------------------------
def test_eval_grid_best_per_task(populated: RegistryStore) -> None:
    populated.record_eval(EvalRecordRequest(run_id="run-a02", results=[
        EvalResultIn(task="wikitext", metric="perplexity", value=12.0, higher_is_better=False)]))
    populated.record_eval(EvalRecordRequest(run_id="run-a04", results=[
        EvalResultIn(task="wikitext", metric="perplexity", value=9.5, higher_is_better=False)]))
    grid = populated.grid(EvalGridRequest())
    assert [r.run_id for r in grid.runs] == oracle(lambda r: bool(r.evals))
    tasks = {t.task: t for t in grid.tasks}
    assert (tasks["gsm8k"].best_value, tasks["gsm8k"].metric) == (0.42, "accuracy")
    assert tasks["gsm8k"].best_run_id == "run-a08"  # tie with run-a02: the first in cohort order
    assert {c.run_id for c in grid.cells if c.task == "gsm8k" and c.best} == {"run-a02", "run-a08"}
    assert (tasks["wikitext"].best_run_id, tasks["wikitext"].higher_is_better) == ("run-a04", False)
    assert tasks["mbpp"].best_run_id == "run-a06"
    assert len(grid.cells) == 4 + 2 + 2  # gsm8k, mbpp, wikitext

    picked = populated.grid(EvalGridRequest(run_ids=["run-a01", "run-a02"], tasks=["gsm8k"]))
    assert [t.best_run_id for t in picked.tasks] == ["run-a02"] and len(picked.cells) == 2
    by_search = populated.grid(EvalGridRequest(search=RunSearch(tag=["big"])))
    assert [r.run_id for r in by_search.runs] == ["run-a08", "run-a04", "run-a02"]


def test_eval_record_upserts(populated: RegistryStore) -> None:
    req = EvalRecordRequest(run_id="run-a01", results=[EvalResultIn(task="gsm8k", metric="accuracy", value=0.5,
                                                                    num_samples=100, stderr=0.05)])
    assert populated.record_eval(req).recorded == 1
    evals = populated.get("run-a01").evals
    assert [(e.task, e.value, e.num_samples, e.stderr) for e in evals] == [("gsm8k", 0.5, 100, 0.05)]
    with pytest.raises(NotFound):
        populated.record_eval(req.model_copy(update={"run_id": "run-nope"}))
    with pytest.raises(ValidationError, match="finite"):
        EvalResultIn(task="t", metric="m", value=float("nan"))


def test_text_and_model_filters_are_literal_substrings(store: RegistryStore) -> None:
    for run_id, name, model in (("run-s1", "a_b", "org/x%y"), ("run-s2", "axb", "org/xzy"), ("run-s3", "A_B2", "ORG/X%Y")):
        em = RunEmitter(run_id, base_model=model, spec={"name": name})
        store.apply_events([em.started(), em.finished()])
    assert sorted(ids(store.search(RunSearch(text="_b")))) == ["run-s1", "run-s3"]  # '_' is not a wildcard
    assert sorted(ids(store.search(RunSearch(model="x%y")))) == ["run-s1", "run-s3"]  # nor is '%'; case ignored
    assert ids(store.search(RunSearch(text="s2"))) == ["run-s2"]
    page = store.search(RunSearch(text="run-s", limit=1, offset=5))
    assert (page.items, page.total) == ([], 3)  # a page past the end still counts


def _scan_facets(store: RegistryStore, req: RunSearch) -> tuple[int, dict]:
    """Total and facets the slow way (scans of runs and run_tags), as the registry did before 0006."""
    from halo_registry.core import queries
    from sqlalchemy import func, select

    with store.db.read() as conn:
        total = conn.scalar(select(func.count()).select_from(queries.runs)
                            .where(queries._all(queries._conditions(store.db, queries.runs, req)))) or 0
        facets = queries._facets(store.db, conn, req)
    return total, {k: [(c.value, c.count) for c in v] for k, v in facets.items()}


COUNTED = [RunSearch(facets=True), RunSearch(status=["succeeded"], facets=True),
           RunSearch(method=["sft", "dpo"], backend=["cuda"], facets=True), RunSearch(model="qwen", facets=True),
           RunSearch(tag=["big"], facets=True), RunSearch(tag=["base"], status=["succeeded"], model="0.5", facets=True),
           RunSearch(tag=["nope"], facets=True), RunSearch(tag=["big"], model="llama", facets=True),
           RunSearch(tag=["base"], model="nothing-like-it", facets=True)]


def _check_counts(store: RegistryStore) -> None:
    from sqlalchemy import text

    with store.db.read() as conn:  # the per-tag counts without base models (0007) are the scan's too
        kept = {tuple(r[:4]): r[4] for r in conn.execute(text(
            "SELECT tag, status, method, backend, n FROM run_tag_facet_counts WHERE n <> 0"))}
        scan = {tuple(r[:4]): r[4] for r in conn.execute(text(
            "SELECT t.tag, r.status, r.method, COALESCE(r.backend, ''), COUNT(*) FROM run_tags t "
            "JOIN runs r ON r.pk = t.run_pk GROUP BY t.tag, r.status, r.method, COALESCE(r.backend, '')"))}
    assert kept == scan
    for req in COUNTED:
        page = store.search(req)
        total, facets = _scan_facets(store, req)
        assert page.total == total, req
        assert {k: [(c.value, c.count) for c in v] for k, v in page.facets.items()} == facets, req


def test_facet_counts_match_a_scan(populated: RegistryStore) -> None:
    """The trigger-kept counts (migration 0006) give the same totals and facets as scanning the runs,
    after every kind of write: ingest (new runs, status changes), tag edits and deletes."""
    from halo_schemas.registry import RunBundleRequest, RunDeleteRequest, RunImportRequest, RunTagRequest

    _check_counts(populated)
    em = RunEmitter("run-a05", method="grpo", base_model="meta-llama/Llama-3.2-1B", backend="cuda",
                    t0=BASE + timedelta(days=4))
    populated.apply_events([em.finished("succeeded")])  # running -> succeeded moves the run and its tag
    populated.tag(RunTagRequest(run_id="run-a02", add=["new", "big"], remove=["base"]))
    populated.tag(RunTagRequest(run_id="run-a07", add=["big"]))
    populated.delete(RunDeleteRequest(run_id="run-a04", force=True))
    _emit(populated, R("run-a09", "rm", "tiny-qwen2", "cpu", "failed", ["big", "rl"], 8, 2.0, {}))
    _check_counts(populated)
    # imports: a bundle of a tagged run brought back after its delete, then over itself (replace)
    bundle = populated.bundle(RunBundleRequest(run_id="run-a06"))
    populated.delete(RunDeleteRequest(run_id="run-a06", force=True))
    _check_counts(populated)
    populated.import_bundle(RunImportRequest(path=bundle.path))
    _check_counts(populated)
    populated.import_bundle(RunImportRequest(path=bundle.path, replace=True))
    _check_counts(populated)
    page = populated.search(RunSearch(tag=["big"], facets=True))
    assert page.total == 4 and {c.value: c.count for c in page.facets["status"]} == {"succeeded": 2, "cancelled": 1,
                                                                                      "failed": 1}


def test_a_substring_matching_many_models_stays_a_substring_match(populated: RegistryStore,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted searches filter by the list of matching models, up to MODEL_LIST_MAX of them; beyond, by the
    substring itself: the same pages, totals and facets either way."""
    from halo_registry.core import queries

    reqs = [RunSearch(model="qwen", facets=True), RunSearch(model="QWEN2-1", tag=["big"], facets=True)]
    listed = [populated.search(r) for r in reqs]
    monkeypatch.setattr(queries, "MODEL_LIST_MAX", 1)  # "qwen" matches two models, "qwen2-1" one
    statements: list[str] = []
    sqlalchemy.event.listen(populated.db.engine, "before_cursor_execute",
                            lambda _c, _cur, statement, *_a: statements.append(statement))
    for req, want in zip(reqs, listed, strict=True):
        got = populated.search(req)
        assert (ids(got), got.total, got.facets) == (ids(want), want.total, want.facets), req
        total, facets = _scan_facets(populated, req)
        assert got.total == total and {k: [(c.value, c.count) for c in v] for k, v in got.facets.items()} == facets
    pages = [s for s in statements if s.lstrip().startswith("SELECT runs.pk")]
    assert "LIKE" in pages[0] and "LIKE" not in pages[1]  # two models: the substring; one: the list


def test_pages_planned_from_the_counts_match_the_plain_query(populated: RegistryStore) -> None:
    """Countable newest/oldest-first searches plan their page from the exact counts (walk the created_at
    index, or read through a filter's index, or scan, or skip a page past the end); every plan gives the
    page and total of the same search made uncountable (a date bound that every run meets)."""
    reqs = [RunSearch(), RunSearch(status=["succeeded"]), RunSearch(status=["succeeded", "failed"], method=["sft"]),
            RunSearch(method=["dpo", "grpo"]), RunSearch(backend=["cuda"]), RunSearch(model="qwen"),
            RunSearch(model="llama", status=["succeeded", "running"]), RunSearch(tag=["big"], backend=["cuda", "rocm"]),
            RunSearch(status=["queued"]), RunSearch(method=["orpo"], backend=["cpu"]), RunSearch(tag=["base"]),
            RunSearch(tag=["big"], model="qwen2-1"), RunSearch(model="zzz")]
    since = BASE - timedelta(days=365)
    statements: list[str] = []
    sqlalchemy.event.listen(populated.db.engine, "before_cursor_execute",
                            lambda _c, _cur, statement, *_a: statements.append(statement))
    for req in reqs:
        for sort in ("-created_at", "created_at", "-duration_s"):
            for limit, offset in ((1, 0), (2, 1), (3, 4), (50, 0), (2, 7), (5, 20)):
                r = req.model_copy(update={"sort": sort, "limit": limit, "offset": offset})
                got, want = populated.search(r), populated.search(r.model_copy(update={"since": since}))
                assert (ids(got), got.total) == (ids(want), want.total), r
    if not populated.db.is_sqlite:  # both PostgreSQL plans of a tagged page ran: a walk, and the tag's keys
        pages = [s for s in statements if s.lstrip().startswith("SELECT runs.pk") and "run_tags" in s]
        assert any("= ANY (CAST" in s for s in pages) and any("= ANY (CAST" not in s for s in pages)
