"""Artifacts of convert / merge jobs: quantization, status and details (parents, verify figures).

- ``artifacts.quant``: fp32 | fp16 | bf16 | q8 | q4 for exports (null otherwise).
- ``artifacts.status``: verified | failed | unverified for convert/merge outputs (null otherwise).
- ``artifacts.details``: JSON — the sources (``run:<id>``, paths, Hub ids) and the round-trip verify report.
- ``ix_artifacts_created``: ``halo-forge artifacts list`` reads newest first across runs.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    json_type = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
    with op.batch_alter_table("artifacts") as batch:
        batch.add_column(sa.Column("quant", sa.String(16)))
        batch.add_column(sa.Column("status", sa.String(16)))
        batch.add_column(sa.Column("details", json_type))
    op.create_index("ix_artifacts_created", "artifacts", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_artifacts_created", table_name="artifacts")
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_column("details")
        batch.drop_column("status")
        batch.drop_column("quant")
