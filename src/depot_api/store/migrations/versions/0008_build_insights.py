"""Build insights: the steps, logs and counters of builds, as BuildKit reported them.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ID = sa.String(10)


def upgrade() -> None:
    op.create_table(
        "build_insights",
        sa.Column("build_id", ID, sa.ForeignKey("builds.id"), primary_key=True),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("build_created_at", sa.BigInteger, nullable=False),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("log_bytes", sa.BigInteger, nullable=False),
        sa.Column("log_bytes_cut", sa.BigInteger, nullable=False),
        sa.Column("dropped", sa.BigInteger, nullable=False),
        sa.Column("side_listener", sa.Boolean, nullable=False),
        sa.Column("logs_expired", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_build_insights_retention", "build_insights", ["logs_expired", "build_created_at"]
    )
    op.create_table(
        "build_steps",
        sa.Column("build_id", ID, sa.ForeignKey("builds.id"), primary_key=True),
        sa.Column("digest", sa.String(255), primary_key=True),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("inputs", sa.Text, nullable=False),
        sa.Column("started_at", sa.BigInteger, nullable=True),
        sa.Column("completed_at", sa.BigInteger, nullable=True),
        sa.Column("cached", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("log_chunks", sa.Integer, nullable=False),
        sa.Column("log_cut", sa.Boolean, nullable=False),
    )
    op.create_index("ix_build_steps_position", "build_steps", ["build_id", "position"])
    op.create_index("ix_build_steps_runs", "build_steps", ["project_id", "digest", "completed_at"])
    op.create_table(
        "build_step_logs",
        sa.Column("build_id", ID, sa.ForeignKey("builds.id"), primary_key=True),
        sa.Column("digest", sa.String(255), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("stream", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "build_status_seen",
        sa.Column("build_id", ID, sa.ForeignKey("builds.id"), primary_key=True),
        sa.Column("message_key", sa.String(64), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("build_status_seen")
    op.drop_table("build_step_logs")
    op.drop_table("build_steps")
    op.drop_table("build_insights")
