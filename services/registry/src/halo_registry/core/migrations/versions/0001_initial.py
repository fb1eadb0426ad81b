"""Initial registry schema: runs, tags, metric names and points, artifacts, evaluation results, lineage.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(128), nullable=False, unique=True),
        sa.Column("name", sa.String(200)),
        sa.Column("job_id", sa.String(128)),
        sa.Column("service", sa.String(64)),
        sa.Column("method", sa.String(64), nullable=False, server_default="unknown"),
        sa.Column("base_model", sa.String(500)),
        sa.Column("models", JSON),
        sa.Column("backend", sa.String(32)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_ts", sa.DateTime),
        sa.Column("status_seq", sa.Integer),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("last_event_at", sa.DateTime),
        sa.Column("duration_s", sa.Float),
        sa.Column("last_step", sa.Integer),
        sa.Column("total_steps", sa.Integer),
        sa.Column("spec", JSON),
        sa.Column("summary", JSON),
        sa.Column("error", sa.Text),
        sa.Column("notes", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("ix_runs_created_at", "runs", ["created_at"])
    op.create_index("ix_runs_status_created", "runs", ["status", "created_at"])
    op.create_index("ix_runs_method_created", "runs", ["method", "created_at"])
    op.create_index("ix_runs_backend", "runs", ["backend"])
    op.create_index("ix_runs_base_model", "runs", ["base_model"])

    op.create_table(
        "run_tags",
        sa.Column("run_pk", sa.Integer, sa.ForeignKey("runs.pk", ondelete="CASCADE"), primary_key=True),
        sa.Column("tag", sa.String(64), primary_key=True),
    )
    op.create_index("ix_run_tags_tag", "run_tags", ["tag", "run_pk"])

    op.create_table(
        "metric_names",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
    )
    op.create_table(
        "metrics",
        sa.Column("run_pk", sa.Integer, primary_key=True),
        sa.Column("name_id", sa.Integer, primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_pk", sa.Integer, sa.ForeignKey("runs.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("path", sa.String(1000), nullable=False),
        sa.Column("sha256", sa.String(64)),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("step", sa.Integer),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("run_pk", "path", name="uq_artifacts_run_path"),
    )
    op.create_table(
        "eval_results",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_pk", sa.Integer, sa.ForeignKey("runs.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("metric", sa.String(200), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("higher_is_better", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("num_samples", sa.Integer),
        sa.Column("stderr", sa.Float),
        sa.Column("details", JSON),
        sa.Column("source", sa.String(64)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("run_pk", "task", "metric", name="uq_eval_results_run_task_metric"),
    )
    op.create_table(
        "lineage",
        sa.Column("parent_run_id", sa.String(128), primary_key=True),
        sa.Column("child_run_id", sa.String(128), primary_key=True),
        sa.Column("relation", sa.String(32), nullable=False, server_default="fork"),
        sa.Column("step", sa.Integer),
        sa.Column("cycle", sa.Integer),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_lineage_child", "lineage", ["child_run_id"])


def downgrade() -> None:
    for table in ("lineage", "eval_results", "artifacts", "metrics", "metric_names", "run_tags", "runs"):
        op.drop_table(table)
