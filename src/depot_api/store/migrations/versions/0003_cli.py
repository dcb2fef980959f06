"""What the depot CLI's build protocol needs: when a build began waiting for a machine (the
polled GetBuildKitConnection's deadline), and the progress reports it streams.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ID = sa.String(10)


def upgrade() -> None:
    with op.batch_alter_table("builds") as batch:
        batch.add_column(sa.Column("machine_wanted_since", sa.BigInteger, nullable=True))
    op.create_table(
        "build_status_reports",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("build_id", ID, sa.ForeignKey("builds.id"), nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        sa.Column("report", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_build_status_reports_build", "build_status_reports", ["build_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_build_status_reports_build", "build_status_reports")
    op.drop_table("build_status_reports")
    with op.batch_alter_table("builds") as batch:
        batch.drop_column("machine_wanted_since")
