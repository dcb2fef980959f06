"""BuildKit machines, project certificate authorities, build endpoints, build liveness.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.String(10)


def upgrade() -> None:
    with op.batch_alter_table("builds") as batch:
        batch.add_column(sa.Column("last_health_at", sa.BigInteger, nullable=True))
    op.create_index("ix_builds_running_health", "builds", ["status", "last_health_at"])
    op.create_table(
        "machines",
        sa.Column("id", ID, primary_key=True),
        sa.Column("token_id", ID, sa.ForeignKey("tokens.id"), nullable=False),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("endpoint", sa.String(255), nullable=False),
        sa.Column("capacity", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("project_id", ID, sa.ForeignKey("projects.id"), nullable=True),
        sa.Column("last_project_id", ID, nullable=True),
        sa.Column("binding_id", ID, nullable=True),
        sa.Column("cache_generation", sa.Integer, nullable=True),
        sa.Column("server_name", sa.String(255), nullable=True),
        sa.Column("server_cert", sa.Text, nullable=True),
        sa.Column("server_key_sealed", sa.Text, nullable=True),
        sa.Column("ready_binding_id", ID, nullable=True),
        sa.Column("disk_used_bytes", sa.BigInteger, nullable=False),
        sa.Column("buildkit_error", sa.Text, nullable=True),
        sa.Column("registered_at", sa.BigInteger, nullable=False),
        sa.Column("last_heartbeat_at", sa.BigInteger, nullable=False),
        sa.Column("last_used_at", sa.BigInteger, nullable=True),
        sa.Column("changed_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_machines_pick", "machines", ["platform", "state", "project_id"])
    op.create_index("ix_machines_changed", "machines", ["changed_at"])
    op.create_table(
        "project_cas",
        sa.Column("project_id", ID, sa.ForeignKey("projects.id"), primary_key=True),
        sa.Column("cert_pem", sa.Text, nullable=False),
        sa.Column("key_sealed", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "build_endpoints",
        sa.Column("build_id", ID, sa.ForeignKey("builds.id"), primary_key=True),
        sa.Column("platform", sa.String(16), primary_key=True),
        sa.Column("machine_id", ID, sa.ForeignKey("machines.id"), nullable=False),
        sa.Column("acquired_at", sa.BigInteger, nullable=False),
        sa.Column("released_at", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_build_endpoints_machine", "build_endpoints", ["machine_id", "released_at"])


def downgrade() -> None:
    op.drop_table("build_endpoints")
    op.drop_table("project_cas")
    op.drop_table("machines")
    op.drop_index("ix_builds_running_health", "builds")
    with op.batch_alter_table("builds") as batch:
        batch.drop_column("last_health_at")
