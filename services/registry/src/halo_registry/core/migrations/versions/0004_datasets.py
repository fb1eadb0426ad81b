"""Datasets: files made by the data pipeline (or registered by hand), with fingerprint and lineage.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JsonType = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dataset_id", sa.String(128), nullable=False, unique=True),
        sa.Column("name", sa.String(200)),
        sa.Column("path", sa.String(1000), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("recipe", JsonType),
        sa.Column("parents", JsonType),
        sa.Column("run_id", sa.String(128)),
        sa.Column("stats", JsonType),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("path", "sha256", name="uq_datasets_path_sha256"),
    )
    op.create_index("ix_datasets_name", "datasets", ["name"])
    op.create_index("ix_datasets_run_id", "datasets", ["run_id"])
    op.create_index("ix_datasets_created_at", "datasets", ["created_at"])


def downgrade() -> None:
    op.drop_table("datasets")
