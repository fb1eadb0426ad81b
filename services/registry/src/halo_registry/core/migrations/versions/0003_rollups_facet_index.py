"""Metric rollups for downsampling long runs, and a covering index for facet counts.

- ``metric_rollups``: per run × metric × block of 64 steps, the count, sum, min, max and first
  step of its points, computed here from the points already stored and then kept by ingest. A
  downsampled read of a long series aggregates these blocks instead of every point (64x fewer rows).
- ``ix_runs_facets`` (status, method, backend, base_model): facet counts become an index-only scan.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ROLLUP_STEPS = 64  # must equal halo_registry.core.db.ROLLUP_STEPS


def upgrade() -> None:
    op.create_table(
        "metric_rollups",
        sa.Column("run_pk", sa.Integer, primary_key=True),
        sa.Column("name_id", sa.Integer, primary_key=True),
        sa.Column("bucket", sa.Integer, primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("vsum", sa.Float, nullable=False),
        sa.Column("vmin", sa.Float, nullable=False),
        sa.Column("vmax", sa.Float, nullable=False),
        sa.Column("first_step", sa.Integer, nullable=False),
        sqlite_with_rowid=False,
    )
    op.execute(
        f"""
        INSERT INTO metric_rollups (run_pk, name_id, bucket, n, vsum, vmin, vmax, first_step)
        SELECT run_pk, name_id, step / {ROLLUP_STEPS}, COUNT(*), SUM(value), MIN(value), MAX(value), MIN(step)
        FROM metrics GROUP BY run_pk, name_id, step / {ROLLUP_STEPS}
        """
    )
    op.create_index("ix_runs_facets", "runs", ["status", "method", "backend", "base_model"])


def downgrade() -> None:
    op.drop_index("ix_runs_facets", table_name="runs")
    op.drop_table("metric_rollups")
