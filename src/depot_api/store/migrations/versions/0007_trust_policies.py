"""OIDC trust policies, and which one admitted a build.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

ID = sa.String(10)


def upgrade() -> None:
    op.create_table(
        "trust_policies",
        sa.Column("id", ID, primary_key=True),
        sa.Column("project_id", ID, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("removed_at", sa.BigInteger, nullable=True),
    )
    op.create_index(
        "ix_trust_policies_project", "trust_policies", ["project_id", "created_at", "id"]
    )
    op.add_column("builds", sa.Column("trust_policy_id", ID, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("builds") as batch:
        batch.drop_column("trust_policy_id")
    op.drop_table("trust_policies")
