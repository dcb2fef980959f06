"""Shared build links: one per shared build, its secret kept hashed and sealed.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ID = sa.String(10)


def upgrade() -> None:
    op.create_table(
        "build_shares",
        sa.Column("build_id", ID, sa.ForeignKey("builds.id"), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("sealed_secret", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("build_shares")
