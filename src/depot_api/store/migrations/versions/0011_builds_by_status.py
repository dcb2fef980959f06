"""An index for listing a project's builds of one status, newest first (the console's
status filter).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_builds_project_status_created",
        "builds",
        ["project_id", "status", "created_at", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_builds_project_status_created", table_name="builds")
