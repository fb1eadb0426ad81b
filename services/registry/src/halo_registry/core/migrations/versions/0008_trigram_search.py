"""Trigram indexes for substring search on PostgreSQL.

A run search's ``text`` (run id or name) and ``model`` (base model) are case-insensitive substring matches
(``ILIKE '%...%'``), which no b-tree index serves: at 100,000 runs each was a scan of the runs (~80 ms). A GIN
index of pg_trgm's trigrams answers them for patterns of three characters or more (~1 ms plus the page).

pg_trgm ships with PostgreSQL and is a trusted extension (13+): anyone who may create objects in the
database can enable it. Where it cannot be enabled the migration logs why and leaves search as it was (a
scan); nothing else depends on these indexes. SQLite: nothing to do (LIKE scans narrow rows there, and the
query planner's page plans already account for it).

Revision ID: 0008
Revises: 0007
"""

import logging

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

log = logging.getLogger("halo_registry")

#: index name -> runs column
TRIGRAM_INDEXES = {"ix_runs_run_id_trgm": "run_id", "ix_runs_name_trgm": "name",
                   "ix_runs_base_model_trgm": "base_model"}


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    try:
        with bind.begin_nested():  # a savepoint: a refused CREATE EXTENSION must not abort the migration
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except sa.exc.DBAPIError as exc:
        log.warning("pg_trgm unavailable (%s): run search by text or model scans the runs",
                    str(exc.orig).strip().splitlines()[0])
        return
    # The extension lives in one schema per database (maybe not the registry's): name its operator class there.
    schema = bind.exec_driver_sql(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_trgm'").scalar_one()
    for index, column in TRIGRAM_INDEXES.items():
        op.execute(f'CREATE INDEX IF NOT EXISTS {index} ON runs USING gin ({column} "{schema}".gin_trgm_ops)')


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for index in TRIGRAM_INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {index}")
