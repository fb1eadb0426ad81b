"""Run origin, per-metric stats (backfilled), power samples, deleted-run tombstones, eval task index.

- ``runs.origin``: ``local`` (from events) or ``imported`` (from a bundle); existing rows are local.
- ``metric_stats``: first/last step and last value per run × metric, computed here from the points
  already stored, then kept by ingest.
- ``power_samples``: ``power_watts`` readings with their time, for the measured cost.
- ``deleted_runs``: so late or replayed events of a deleted run do not resurrect it.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("origin", sa.String(16), nullable=False, server_default="local"))

    op.create_table(
        "metric_stats",
        sa.Column("run_pk", sa.Integer, primary_key=True),
        sa.Column("name_id", sa.Integer, primary_key=True),
        sa.Column("first_step", sa.Integer, nullable=False),
        sa.Column("last_step", sa.Integer, nullable=False),
        sa.Column("last_value", sa.Float, nullable=False),
        sqlite_with_rowid=False,
    )
    op.execute(
        """
        INSERT INTO metric_stats (run_pk, name_id, first_step, last_step, last_value)
        SELECT m.run_pk, m.name_id, agg.first_step, agg.last_step, m.value
        FROM (SELECT run_pk, name_id, MIN(step) AS first_step, MAX(step) AS last_step
              FROM metrics GROUP BY run_pk, name_id) AS agg
        JOIN metrics AS m ON m.run_pk = agg.run_pk AND m.name_id = agg.name_id AND m.step = agg.last_step
        """
    )
    op.create_table(
        "power_samples",
        sa.Column("run_pk", sa.Integer, primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True),
        sa.Column("ts", sa.DateTime, nullable=False),
        sa.Column("watts", sa.Float, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "deleted_runs",
        sa.Column("run_id", sa.String(128), primary_key=True),
        sa.Column("deleted_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_eval_results_task_metric", "eval_results", ["task", "metric"])


def downgrade() -> None:
    op.drop_index("ix_eval_results_task_metric", table_name="eval_results")
    op.drop_table("deleted_runs")
    op.drop_table("power_samples")
    op.drop_table("metric_stats")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("origin")
