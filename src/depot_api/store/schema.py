"""Table definitions used by the queries. The migrations create the same tables; a test
compares the migrated database with this metadata, so the two cannot drift apart.

Times are BIGINT microseconds since the Unix epoch (UTC): exact, cheap to compare, and the
same on SQLite and PostgreSQL. Projects are deleted softly (deleted_at) so that a deleted
project's builds and tokens stay on record while nothing can reach them.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

ID = String(10)

organizations = Table(
    "organizations",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(128), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(128), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

memberships = Table(
    "memberships",
    metadata,
    Column("user_id", ID, ForeignKey("users.id"), primary_key=True),
    Column("org_id", ID, ForeignKey("organizations.id"), primary_key=True),
    Column("created_at", BigInteger, nullable=False),
)

projects = Table(
    "projects",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("organizations.id"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("region_id", String(64), nullable=False),
    Column("hardware", Integer, nullable=False),
    Column("keep_gb", Integer, nullable=False),
    Column("keep_days", Integer, nullable=False),
    Column("keep_bytes", BigInteger, nullable=True),
    Column("cache_generation", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("deleted_at", BigInteger, nullable=True),
    Index("ix_projects_org_created", "org_id", "created_at", "id"),
    # Names are unique among an organization's live projects.
    Index(
        "uq_projects_org_name_live",
        "org_id",
        "name",
        unique=True,
        sqlite_where=text("deleted_at IS NULL"),
        postgresql_where=text("deleted_at IS NULL"),
    ),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", ID, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("description", String(256), nullable=False),
    Column("org_id", ID, ForeignKey("organizations.id"), nullable=True),
    Column("user_id", ID, ForeignKey("users.id"), nullable=True),
    Column("project_id", ID, ForeignKey("projects.id"), nullable=True),
    Column("build_id", ID, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=True),
    Column("revoked_at", BigInteger, nullable=True),
    Index("ix_tokens_project", "project_id"),
)

builds = Table(
    "builds",
    metadata,
    Column("id", ID, primary_key=True),
    Column("project_id", ID, ForeignKey("projects.id"), nullable=False),
    Column("org_id", ID, ForeignKey("organizations.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("started_at", BigInteger, nullable=True),
    Column("finished_at", BigInteger, nullable=True),
    Column("error_message", Text, nullable=True),
    # Keyset pagination walks this index newest first.
    Index("ix_builds_project_created", "project_id", "created_at", "id"),
)
