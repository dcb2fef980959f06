"""Client connections to machines' front doors, as their agents report them.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ID = sa.String(10)


def upgrade() -> None:
    op.create_table(
        "machine_connections",
        sa.Column("machine_id", ID, sa.ForeignKey("machines.id"), primary_key=True),
        sa.Column("connection_id", sa.String(64), primary_key=True),
        sa.Column("build_id", sa.String(64), nullable=False),
        sa.Column("project_id", ID, nullable=True),
        sa.Column("binding_id", sa.String(64), nullable=False),
        sa.Column("peer", sa.String(255), nullable=False),
        sa.Column("opened_at", sa.BigInteger, nullable=False),
        sa.Column("closed_at", sa.BigInteger, nullable=True),
        sa.Column("admitted", sa.Boolean, nullable=False),
        sa.Column("refusal", sa.String(1024), nullable=False),
        sa.Column("bytes_from_client", sa.BigInteger, nullable=False),
        sa.Column("bytes_to_client", sa.BigInteger, nullable=False),
        sa.Column("reported_at", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_machine_connections_machine",
        "machine_connections",
        ["machine_id", "opened_at", "connection_id"],
    )
    op.create_index(
        "ix_machine_connections_build", "machine_connections", ["build_id", "opened_at"]
    )


def downgrade() -> None:
    op.drop_table("machine_connections")
