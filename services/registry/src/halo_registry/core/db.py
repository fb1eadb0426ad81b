"""The run database: tables (SQLAlchemy Core), engine set-up for SQLite and PostgreSQL, and the
small dialect helpers every query module shares.

Usage::

    db = open_database(None, home)                 # SQLite at HALO_HOME/forge.db, migrated to head
    db = open_database("postgresql://u@h/db", home) # PostgreSQL through psycopg
    with db.read() as conn: ...                    # a consistent snapshot
    with db.write() as conn: ...                   # one transaction (BEGIN IMMEDIATE on SQLite)

The DDL lives in the Alembic migrations (``core/migrations/versions``); the tables here describe
the head revision for the queries and must match it (a test compares them).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from halo_common.errors import Unavailable
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC (same text on SQLite, ``timestamp`` on PostgreSQL), returned aware UTC.
    A naive value given to a query is taken as UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


JsonType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

metadata = MetaData()

runs = Table(
    "runs", metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(128), nullable=False, unique=True),
    Column("name", String(200)),
    Column("job_id", String(128)),
    Column("service", String(64)),
    Column("method", String(64), nullable=False, server_default="unknown"),
    Column("base_model", String(500)),
    Column("models", JsonType),
    Column("backend", String(32)),
    Column("status", String(16), nullable=False),
    # (status_ts, status_seq) of the event that set the status: an older event redelivered late
    # never moves a finished run back to running.
    Column("status_ts", UTCDateTime),
    Column("status_seq", Integer),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("last_event_at", UTCDateTime),
    Column("duration_s", Float),
    Column("last_step", Integer),
    Column("total_steps", Integer),
    Column("spec", JsonType),
    Column("summary", JsonType),
    Column("error", Text),
    Column("notes", Text, nullable=False, server_default=""),
    Column("origin", String(16), nullable=False, server_default="local"),
    Index("ix_runs_created_at", "created_at"),
    Index("ix_runs_status_created", "status", "created_at"),
    Index("ix_runs_method_created", "method", "created_at"),
    Index("ix_runs_backend", "backend"),
    Index("ix_runs_base_model", "base_model"),
    Index("ix_runs_facets", "status", "method", "backend", "base_model"),
)

run_tags = Table(
    "run_tags", metadata,
    Column("run_pk", Integer, ForeignKey("runs.pk", ondelete="CASCADE"), primary_key=True),
    Column("tag", String(64), primary_key=True),
    Index("ix_run_tags_tag", "tag", "run_pk"),
)

# Runs per (status, method, backend, base_model) (tag '') and per tag and those four (tag = the tag), kept
# by triggers on runs and run_tags (migration 0006); NULL backend / base_model are ''. Facets read this.
run_facet_counts = Table(
    "run_facet_counts", metadata,
    Column("tag", String(64), primary_key=True),
    Column("status", String(16), primary_key=True),
    Column("method", String(64), primary_key=True),
    Column("backend", String(32), primary_key=True),
    Column("base_model", String(500), primary_key=True),
    Column("n", Integer, nullable=False),
    sqlite_with_rowid=False,
)

# The tag rows of run_facet_counts summed over base models (migration 0007, its own triggers): the tag facet
# of a search without a model filter reads these (~10x fewer rows). NULL backend is ''.
run_tag_facet_counts = Table(
    "run_tag_facet_counts", metadata,
    Column("tag", String(64), primary_key=True),
    Column("status", String(16), primary_key=True),
    Column("method", String(64), primary_key=True),
    Column("backend", String(32), primary_key=True),
    Column("n", Integer, nullable=False),
    sqlite_with_rowid=False,
)

metric_names = Table(
    "metric_names", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
)

# The hot table (10M+ rows): integer keys only, clustered on the primary key (WITHOUT ROWID on
# SQLite), no foreign key (delete_run removes its rows explicitly). The primary key is what makes
# ingest idempotent: a replayed point overwrites itself.
metrics = Table(
    "metrics", metadata,
    Column("run_pk", Integer, primary_key=True),
    Column("name_id", Integer, primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("value", Float, nullable=False),
    sqlite_with_rowid=False,
)

# Per run × metric: first/last step and the last value; kept by ingest so listing last values and
# planning a downsampled read never scan the points.
metric_stats = Table(
    "metric_stats", metadata,
    Column("run_pk", Integer, primary_key=True),
    Column("name_id", Integer, primary_key=True),
    Column("first_step", Integer, nullable=False),
    Column("last_step", Integer, nullable=False),
    Column("last_value", Float, nullable=False),
    sqlite_with_rowid=False,
)

#: Steps per rollup block. Changing it needs a migration that rebuilds metric_rollups.
ROLLUP_STEPS = 64

# Per run × metric × block of ROLLUP_STEPS steps: what a downsampled read of a long series needs
# (count, sum, min, max, first step), recomputed from the points of each block ingest touches.
metric_rollups = Table(
    "metric_rollups", metadata,
    Column("run_pk", Integer, primary_key=True),
    Column("name_id", Integer, primary_key=True),
    Column("bucket", Integer, primary_key=True),
    Column("n", Integer, nullable=False),
    Column("vsum", Float, nullable=False),
    Column("vmin", Float, nullable=False),
    Column("vmax", Float, nullable=False),
    Column("first_step", Integer, nullable=False),
    sqlite_with_rowid=False,
)

power_samples = Table(
    "power_samples", metadata,
    Column("run_pk", Integer, primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("ts", UTCDateTime, nullable=False),
    Column("watts", Float, nullable=False),
    sqlite_with_rowid=False,
)

artifacts = Table(
    "artifacts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_pk", Integer, ForeignKey("runs.pk", ondelete="CASCADE"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("format", String(32), nullable=False),
    Column("path", String(1000), nullable=False),
    Column("sha256", String(64)),
    Column("size_bytes", BigInteger),
    Column("step", Integer),
    Column("created_at", UTCDateTime, nullable=False),
    Column("quant", String(16)),
    Column("status", String(16)),
    Column("details", JsonType),
    UniqueConstraint("run_pk", "path", name="uq_artifacts_run_path"),
    Index("ix_artifacts_created", "created_at", "id"),
)

eval_results = Table(
    "eval_results", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_pk", Integer, ForeignKey("runs.pk", ondelete="CASCADE"), nullable=False),
    Column("task", String(200), nullable=False),
    Column("metric", String(200), nullable=False),
    Column("value", Float, nullable=False),
    Column("higher_is_better", Boolean, nullable=False, server_default="1"),
    Column("num_samples", Integer),
    Column("stderr", Float),
    Column("details", JsonType),
    Column("source", String(64)),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("run_pk", "task", "metric", name="uq_eval_results_run_task_metric"),
    Index("ix_eval_results_task_metric", "task", "metric"),
)

lineage = Table(
    "lineage", metadata,
    Column("parent_run_id", String(128), primary_key=True),
    Column("child_run_id", String(128), primary_key=True),
    Column("relation", String(32), nullable=False, server_default="fork"),
    Column("step", Integer),
    Column("cycle", Integer),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_lineage_child", "child_run_id"),
)

# Dataset files (data pipeline outputs) with fingerprint and lineage; (path, sha256) identifies one.
datasets = Table(
    "datasets", metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("dataset_id", String(128), nullable=False, unique=True),
    Column("name", String(200)),
    Column("path", String(1000), nullable=False),
    Column("format", String(16), nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("recipe", JsonType),
    Column("parents", JsonType),
    Column("run_id", String(128)),
    Column("stats", JsonType),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("path", "sha256", name="uq_datasets_path_sha256"),
    Index("ix_datasets_name", "name"),
    Index("ix_datasets_run_id", "run_id"),
    Index("ix_datasets_created_at", "created_at"),
)

# Tombstones: events of a deleted run that arrive later (a straggler, a replay) are ignored.
deleted_runs = Table(
    "deleted_runs", metadata,
    Column("run_id", String(128), primary_key=True),
    Column("deleted_at", UTCDateTime, nullable=False),
)


# ---- engine ----------------------------------------------------------------------------------
def database_url(url: str | None, home: Path) -> str:
    """The SQLAlchemy URL to use: ``url`` (``postgresql://`` made ``postgresql+psycopg://``) or
    SQLite at ``home/forge.db``."""
    if not url:
        return f"sqlite:///{Path(home).expanduser() / 'forge.db'}"
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def make_engine(url: str) -> Engine:
    """An engine for ``url``. SQLite gets WAL (readers never block the writer), a busy timeout and
    explicit transaction control. PostgreSQL connection options go in the URL, e.g. a schema per
    test: ``postgresql+psycopg://u@h/db?options=-csearch_path%3Dmy_schema``."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
            # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's implicit BEGIN is
            # deferred and skips reads), so reads are snapshots and writes can BEGIN IMMEDIATE.
            # Foreign keys stay unenforced on SQLite: deletes are explicit (delete_run), and
            # enforcement would cascade through the table rebuilds of a batch migration.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000",
                           "temp_store=MEMORY", "cache_size=-65536", "mmap_size=268435456"):
                cur.execute(f"PRAGMA {pragma}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql(conn.info.pop("sqlite_begin", "BEGIN"))

        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True)
    raise ValueError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql")


class Database:
    """An engine plus the helpers shared by ingest and queries. Thread-safe: handlers call it from
    worker threads (``asyncio.to_thread``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._name_ids: dict[str, int] = {}
        self._names_lock = threading.Lock()

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection whose queries see one snapshot (rolled back at the end)."""
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction, committed on success. On SQLite it takes the write lock up front
        (``BEGIN IMMEDIATE``) so a read-then-write never fails with a stale snapshot."""
        with self.engine.connect() as conn:
            if self.is_sqlite:
                conn.info["sqlite_begin"] = "BEGIN IMMEDIATE"
            try:
                with conn.begin():
                    yield conn
            finally:
                # Metric names created in this transaction join the shared cache only once
                # committed: a rolled-back id must never be handed to another name.
                pending = conn.info.pop("pending_names", {})
            if pending:
                with self._names_lock:
                    self._name_ids.update(pending)

    def insert(self, table: Table) -> Any:
        """A dialect insert that supports ``on_conflict_do_update/nothing`` (SQLite and PostgreSQL)."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    def driver_datetime(self, value: datetime) -> Any:
        """``value`` as the driver stores a UTCDateTime, for driver-level executemany on hot paths:
        SQLite's text form (the one SQLAlchemy writes), a naive UTC datetime for PostgreSQL."""
        naive = value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
        return naive.strftime("%Y-%m-%d %H:%M:%S.%f") if self.is_sqlite else naive

    def placeholders(self, conn: Connection, n: int) -> str:
        """``?, ?, …`` or ``%s, %s, …``: the driver's parameter markers, for ``exec_driver_sql``."""
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        return ", ".join([mark] * n)

    def least(self, a: Any, b: Any) -> Any:
        return func.least(a, b) if self.dialect == "postgresql" else func.min(a, b)

    def greatest(self, a: Any, b: Any) -> Any:
        return func.greatest(a, b) if self.dialect == "postgresql" else func.max(a, b)

    def name_ids(self, conn: Connection, names: Iterable[str], *, create: bool = True) -> dict[str, int]:
        """Metric name -> id, creating missing names when ``create`` (inside ``conn``'s transaction).
        Committed names are cached: names are never deleted."""
        wanted = set(names)
        pending: dict[str, int] = conn.info.setdefault("pending_names", {}) if create else {}
        known = {**self._name_ids, **pending}
        missing = wanted - known.keys()
        if missing:
            if create:
                stmt = self.insert(metric_names).on_conflict_do_nothing(index_elements=["name"])
                conn.execute(stmt, [{"name": n} for n in sorted(missing)])
            found = dict(conn.execute(select(metric_names.c.name, metric_names.c.id).where(metric_names.c.name.in_(missing))).all())
            known.update(found)
            if create:
                pending.update(found)
            else:  # read without creating: what it finds is committed already
                with self._names_lock:
                    self._name_ids.update(found)
        return {n: known[n] for n in wanted if n in known}

    def ping(self) -> None:
        """Raise :class:`Unavailable` when the database cannot be reached."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception as exc:
            raise Unavailable(f"database unreachable: {type(exc).__name__}: {exc}") from None

    def dispose(self) -> None:
        self.engine.dispose()


def open_database(url: str | None, home: Path, *, migrate: bool = True) -> Database:
    """Open the run database (``url`` or SQLite under ``home``) and bring its schema to head."""
    from halo_registry.core.migrate import upgrade

    db = Database(make_engine(database_url(url, home)))
    if migrate:
        upgrade(db.engine)
    return db
