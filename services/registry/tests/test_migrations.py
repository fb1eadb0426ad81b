"""Migrations: a database made by the first migration upgrades to head with its data intact; the
tables the queries use match what the migrations build; the round trip down and up keeps data."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from halo_registry.core import migrate
from halo_registry.core.db import database_url, make_engine, metadata, open_database
from halo_registry.core.store import RegistryStore
from halo_registry.testing import RegistryDb, postgres_schema
from halo_schemas.registry import RunCostRequest, RunMetricsRequest, RunSearch
from sqlalchemy import inspect, text


def _engine(db: RegistryDb):  # noqa: ANN202
    return make_engine(database_url(db.url, db.home))


def _seed_v1(engine) -> None:  # noqa: ANN001
    """Rows as a 0001-era registry wrote them (raw SQL: no code of today involved)."""
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO runs (run_id, name, method, base_model, backend, status, created_at, started_at, "
            "finished_at, duration_s, last_step, notes, spec) VALUES "
            "('run-old1', 'old one', 'sft', 'tiny-llama', 'cpu', 'succeeded', :c, :c, :f, 3600.0, 2, 'kept', :spec),"
            "('run-old2', NULL, 'dpo', 'tiny-qwen', 'cuda', 'failed', :c2, :c2, :f, 1800.0, 1, '', NULL)"),
            {"c": datetime(2025, 5, 1, 10), "c2": datetime(2025, 5, 1, 10, 30), "f": datetime(2025, 5, 1, 11),
             "spec": '{"lr": 0.001}'})
        conn.execute(text("INSERT INTO run_tags (run_pk, tag) SELECT pk, 'legacy' FROM runs"))
        conn.execute(text("INSERT INTO metric_names (name) VALUES ('loss'), ('lr')"))
        conn.execute(text(
            "INSERT INTO metrics (run_pk, name_id, step, value) "
            "SELECT r.pk, n.id, s.step, CASE WHEN n.name = 'loss' THEN 3.0 - s.step ELSE 0.001 END "
            "FROM runs r, metric_names n, (SELECT 0 AS step UNION ALL SELECT 1 UNION ALL SELECT 2) s "
            "WHERE r.run_id = 'run-old1' OR s.step < 2"))
        conn.execute(text(
            "INSERT INTO eval_results (run_pk, task, metric, value, created_at) "
            "SELECT pk, 'gsm8k', 'accuracy', 0.25, :c FROM runs WHERE run_id = 'run-old1'"),
            {"c": datetime(2025, 5, 2)})


def test_first_migration_upgrades_to_head_with_data_intact(registry_db: RegistryDb) -> None:
    engine = _engine(registry_db)
    migrate.upgrade(engine, "0001")
    assert migrate.current_revision(engine) == "0001"
    _seed_v1(engine)
    assert "metric_stats" not in inspect(engine).get_table_names()

    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision() == "0009"
    with engine.connect() as conn:  # 0003 backfilled the 64-step rollup blocks from the points
        rollups = conn.execute(text(
            "SELECT r.run_id, n.name, m.bucket, m.n, m.vsum, m.vmin, m.vmax, m.first_step FROM metric_rollups m "
            "JOIN runs r ON r.pk = m.run_pk JOIN metric_names n ON n.id = m.name_id ORDER BY 1, 2")).all()
    assert [tuple(x) for x in rollups] == [
        ("run-old1", "loss", 0, 3, 6.0, 1.0, 3.0, 0), ("run-old1", "lr", 0, 3, 0.003, 0.001, 0.001, 0),
        ("run-old2", "loss", 0, 2, 5.0, 2.0, 3.0, 0), ("run-old2", "lr", 0, 2, 0.002, 0.001, 0.001, 0)]
    engine.dispose()

    store = RegistryStore.open(registry_db.url, registry_db.home)
    try:
        page = store.search(RunSearch(sort="created_at"))
        assert [r.run_id for r in page.items] == ["run-old1", "run-old2"]
        old1, old2 = page.items
        assert (old1.name, old1.origin, old1.tags, old1.has_eval, old1.duration_s) == ("old one", "local", ["legacy"],
                                                                                        True, 3600.0)
        # metric_stats was backfilled from the stored points.
        assert old1.last_metrics == {"loss": 1.0, "lr": 0.001} and old2.last_metrics == {"loss": 2.0, "lr": 0.001}
        loss = store.metrics(RunMetricsRequest(run_id="run-old1", names=["loss"])).series[0]
        assert (loss.steps, loss.values) == ([0, 1, 2], [3.0, 2.0, 1.0])
        d = store.get("run-old1")
        assert (d.notes, d.spec, [e.value for e in d.evals]) == ("kept", {"lr": 0.001}, [0.25])
        assert store.cost(RunCostRequest(run_id="run-old1")).source == "nominal"
    finally:
        store.close()


def test_down_and_up_again_keeps_the_data(registry_db: RegistryDb) -> None:
    engine = _engine(registry_db)
    migrate.upgrade(engine, "0001")
    _seed_v1(engine)
    migrate.upgrade(engine)
    migrate.downgrade(engine, "0001")
    assert "origin" not in {c["name"] for c in inspect(engine).get_columns("runs")}
    migrate.upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM metrics")).scalar() == 3 * 2 + 2 * 2
        assert conn.execute(text("SELECT count(*) FROM metric_stats")).scalar() == 4
        assert conn.execute(text("SELECT sum(n) FROM metric_rollups")).scalar() == 10
    engine.dispose()


def test_migrations_build_exactly_the_tables_the_queries_use(registry_db: RegistryDb) -> None:
    db = open_database(registry_db.url, registry_db.home)  # an empty database: migrated on open
    try:
        insp = inspect(db.engine)
        assert set(insp.get_table_names()) == set(metadata.tables) | {"alembic_version"}
        for name, table in metadata.tables.items():
            cols = {c["name"]: c for c in insp.get_columns(name)}
            assert set(cols) == {c.name for c in table.columns}, name
            for col in table.columns:
                assert cols[col.name]["nullable"] == col.nullable or col.primary_key, f"{name}.{col.name}"
            indexes = {i["name"] for i in insp.get_indexes(name)}
            assert {i.name for i in table.indexes} <= indexes, name
            pk = insp.get_pk_constraint(name)["constrained_columns"]
            assert pk == [c.name for c in table.primary_key.columns], name
    finally:
        db.dispose()


@pytest.mark.parametrize("url", ["postgres://u@h/db", "postgresql://u@h/db"])
def test_postgres_urls_use_psycopg(url: str, tmp_path) -> None:  # noqa: ANN001
    assert database_url(url, tmp_path) == "postgresql+psycopg://u@h/db"
    assert database_url(None, tmp_path) == f"sqlite:///{tmp_path / 'forge.db'}"


@pytest.fixture
def pg_store(postgres_url: str, tmp_path: Path) -> Iterator[RegistryStore]:
    """A registry on PostgreSQL only (for what only PostgreSQL has), migrated to head."""
    with postgres_schema(postgres_url) as url:
        store = RegistryStore.open(url, tmp_path)
        try:
            yield store
        finally:
            store.close()


def test_postgres_substring_search_is_served_by_trigram_indexes(pg_store: RegistryStore) -> None:
    """Migration 0008: text and model filters (ILIKE '%...%') can use pg_trgm's GIN indexes, not only a scan."""
    import sqlalchemy
    from halo_schemas.events import RunStarted

    store = pg_store
    statements: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ANN202
        if statement.lstrip().startswith("SELECT runs.pk") and "ILIKE" in statement:
            statements.append((statement, parameters))

    # one matching run, so the model search (counted from the facet counts) reads a page
    store.apply_events([RunStarted(run_id="run-1", service="trainer-torch", seq=0, method="sft",
                                   base_model="tiny-qwen", backend="cpu")])
    sqlalchemy.event.listen(store.db.engine, "before_cursor_execute", capture)
    store.search(RunSearch(text="name-42", limit=10))
    # not countable (a search the facet counts answer matches the models they name, by equality)
    store.search(RunSearch(model="qwen", has_eval=False, sort="-duration_s", limit=10))
    sqlalchemy.event.remove(store.db.engine, "before_cursor_execute", capture)
    assert len(statements) == 2
    with store.db.engine.connect() as conn:
        # an empty table: with whole-table reads off the planner shows which index serves the filter
        conn.exec_driver_sql("SET enable_seqscan = off")
        conn.exec_driver_sql("SET enable_indexscan = off")
        plans = ["\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + s, p)) for s, p in statements]
    assert "ix_runs_run_id_trgm" in plans[0] and "ix_runs_name_trgm" in plans[0], plans[0]
    assert "ix_runs_base_model_trgm" in plans[1], plans[1]


def test_postgres_metric_sorts_have_covering_indexes(pg_store: RegistryStore) -> None:
    """Migration 0009: run keys by method and metric values by run are in PostgreSQL indexes (index-only reads)."""
    with pg_store.db.engine.connect() as conn:
        defs = dict(conn.exec_driver_sql(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()").all())
    assert "(method, pk) INCLUDE (run_id)" in defs["ix_runs_method_pk"]
    assert "(run_pk, name_id) INCLUDE (last_value)" in defs["ix_metric_stats_value"]
