"""Organizations, users, projects, tokens and builds.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("id", sa.String(10), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.String(10), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "memberships",
        sa.Column("user_id", sa.String(10), sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("org_id", sa.String(10), sa.ForeignKey("organizations.id"), primary_key=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "projects",
        sa.Column("id", sa.String(10), primary_key=True),
        sa.Column("org_id", sa.String(10), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("region_id", sa.String(64), nullable=False),
        sa.Column("hardware", sa.Integer, nullable=False),
        sa.Column("keep_gb", sa.Integer, nullable=False),
        sa.Column("keep_days", sa.Integer, nullable=False),
        sa.Column("keep_bytes", sa.BigInteger, nullable=True),
        sa.Column("cache_generation", sa.Integer, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("deleted_at", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_projects_org_created", "projects", ["org_id", "created_at", "id"])
    op.create_index(
        "uq_projects_org_name_live",
        "projects",
        ["org_id", "name"],
        unique=True,
        sqlite_where=sa.text("deleted_at IS NULL"),
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(10), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("description", sa.String(256), nullable=False),
        sa.Column("org_id", sa.String(10), sa.ForeignKey("organizations.id"), nullable=True),
        sa.Column("user_id", sa.String(10), sa.ForeignKey("users.id"), nullable=True),
        sa.Column("project_id", sa.String(10), sa.ForeignKey("projects.id"), nullable=True),
        sa.Column("build_id", sa.String(10), nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=True),
        sa.Column("revoked_at", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_tokens_project", "tokens", ["project_id"])
    op.create_table(
        "builds",
        sa.Column("id", sa.String(10), primary_key=True),
        sa.Column("project_id", sa.String(10), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("org_id", sa.String(10), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("started_at", sa.BigInteger, nullable=True),
        sa.Column("finished_at", sa.BigInteger, nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
    )
    op.create_index("ix_builds_project_created", "builds", ["project_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_table("builds")
    op.drop_table("tokens")
    op.drop_table("projects")
    op.drop_table("memberships")
    op.drop_table("users")
    op.drop_table("organizations")
