"""Covering indexes for metric-sorted searches on PostgreSQL.

A search sorted by a metric (``sort="metric.loss"``) with a method filter and ``has_eval`` reads every
matching run: their keys by method, a semi-join with the evaluated runs, and each run's metric value. At
100,000 runs that was a heap scan of the runs and a heap fetch per run in ``metric_stats`` (~50-70 ms). With
the run keys and the value in the indexes the same plan reads indexes only (~25 ms).

SQLite: nothing to do (its secondary indexes carry the integer primary key already, and its metric sorts are
planned from a scan).

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

#: index name -> CREATE INDEX body
COVERING_INDEXES = {
    "ix_runs_method_pk": "runs (method, pk) INCLUDE (run_id)",
    "ix_metric_stats_value": "metric_stats (run_pk, name_id) INCLUDE (last_value)",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for index, body in COVERING_INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {body}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for index in COVERING_INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {index}")
