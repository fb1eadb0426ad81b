"""Optuna's storage next to the registry's database: SQLite files side by side under HALO_HOME, and on
PostgreSQL one database with a schema each (both keep an ``alembic_version`` table, so they cannot share one)."""

from __future__ import annotations

import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from halo_registry.core.db import open_database
from halo_schemas.sweeps import SweepSpec
from halo_sweeps.core import study as st

pytestmark = pytest.mark.integration

SWEEP = SweepSpec.model_validate({"method": "sft", "base": {"model": "tiny://llama", "data": {"train": "x.jsonl"}},
                                  "search_space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}}})


def roundtrip(storage: optuna.storages.RDBStorage) -> None:
    study = st.create_study(storage, f"sweep-{uuid.uuid4().hex[:8]}", SWEEP)
    trial = study.ask()
    trial.suggest_float("learning_rate", 1e-4, 1e-2)
    trial.report(1.5, 3)
    study.tell(trial, 1.25)
    again = st.describe(storage, study.study_name)
    assert again.trials[0].value == 1.25 and again.trials[0].intermediate == {3: 1.5}


def test_sqlite_beside_the_registry(tmp_path: Path) -> None:
    open_database(None, tmp_path)  # the registry's forge.db, migrated
    storage = st.open_storage(None, tmp_path)
    roundtrip(storage)
    assert (tmp_path / "forge.db").is_file() and (tmp_path / "optuna.db").is_file()
    with sa.create_engine(f"sqlite:///{tmp_path / 'optuna.db'}").connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_postgres_same_database_own_schema(postgres_url: str, tmp_path: Path) -> None:
    schema = f"reg_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        registry_url = f"{postgres_url}?options=-csearch_path%3D{schema}"
        registry = open_database(registry_url, tmp_path)  # the registry in its schema, migrated
        storage = st.open_storage(registry_url, tmp_path)  # Optuna in the same database, schema "optuna"
        roundtrip(storage)
        assert storage.engine.url.database == registry.engine.url.database
        with engine.connect() as conn:
            tables = set(conn.exec_driver_sql(
                "SELECT table_schema || '.' || table_name FROM information_schema.tables "
                f"WHERE table_schema IN ('{schema}', 'optuna')").scalars())
        assert {f"{schema}.runs", f"{schema}.alembic_version", "optuna.trials", "optuna.alembic_version"} <= tables
        assert f"{schema}.trials" not in tables and "optuna.runs" not in tables
        registry.dispose()
        storage.engine.dispose()
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()
