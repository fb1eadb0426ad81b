"""Test helpers for the registry (used by its tests, the integration tests and the benchmark).

* :class:`RunEmitter` (plays a trainer: the events of one run with deterministic timestamps), ``T0`` and
  ``loss_at`` live in ``halo_testing``; they are re-exported here for older imports.
* ``registry_db``: a pytest fixture parametrised over SQLite (a fresh file) and PostgreSQL (a
  fresh schema on the ``postgres_url`` database, dropped afterwards). Import it into a test module
  (``from halo_registry.testing import registry_db  # noqa: F401``) and take ``registry_db``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from halo_testing import T0, RunEmitter, loss_at

__all__ = ["T0", "RegistryDb", "RunEmitter", "loss_at", "postgres_schema", "registry_db"]


@dataclass(frozen=True)
class RegistryDb:
    """Where a test's registry database lives: ``url`` (None = SQLite under ``home``)."""

    kind: str
    url: str | None
    home: Path


def _pg_schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgres"])
def registry_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RegistryDb]:
    """A fresh, empty registry database per test: a new SQLite file, or a new PostgreSQL schema
    (needs ``postgres_url``; that fixture fails naming the URL when PostgreSQL is unreachable)."""
    home = tmp_path / "halo-home"
    home.mkdir()
    if request.param == "sqlite":
        yield RegistryDb("sqlite", None, home)
        return
    with postgres_schema(request.getfixturevalue("postgres_url")) as url:
        yield RegistryDb("postgres", url, home)


@contextlib.contextmanager
def postgres_schema(base: str) -> Iterator[str]:
    """A fresh schema on the PostgreSQL at ``base``, dropped afterwards: yields a URL that selects it."""
    import sqlalchemy

    schema = f"reg_{uuid.uuid4().hex[:16]}"
    admin = sqlalchemy.create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield _pg_schema_url(base, schema)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()
