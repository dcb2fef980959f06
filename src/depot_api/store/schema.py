"""Table definitions used by the queries. The migrations create the same tables; a test
compares the migrated database with this metadata, so the two cannot drift apart.

Times are BIGINT microseconds since the Unix epoch (UTC): exact, cheap to compare, and the
same on SQLite and PostgreSQL. Projects are deleted softly (deleted_at) so that a deleted
project's builds and tokens stay on record while nothing can reach them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

from depot_api.times import from_micros, to_micros

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
    Column("last_used_at", BigInteger, nullable=True),
    Index("ix_tokens_project", "project_id"),
)

# One row (id 1): a number moved by every change that could refuse a token or change what
# it reaches (a revocation, a project deleted, a membership added), in the same transaction.
# Servers keep principals only while it stays where it was (domain.auth).
auth_epoch = Table(
    "auth_epoch",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("value", BigInteger, nullable=False),
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
    # Set when the build first asks for a machine or reports health; from then on a build that
    # stops reporting is canceled after the liveness window.
    Column("last_health_at", BigInteger, nullable=True),
    # When the build's current wait for a machine began (polled GetBuildKitConnection): the
    # wait's deadline counts from here, in whichever process answers the next poll.
    Column("machine_wanted_since", BigInteger, nullable=True),
    # The trust policy that admitted the CI job which created the build; NULL for a build
    # created with a token. Not a foreign key: SQLite cannot add one to an existing table,
    # and policies are never deleted (only marked removed), so the reference stays good.
    Column("trust_policy_id", ID, nullable=True),
    # Keyset pagination walks this index newest first.
    Index("ix_builds_project_created", "project_id", "created_at", "id"),
    # The same walk over one status (the console's filter), without passing the others.
    Index("ix_builds_project_status_created", "project_id", "status", "created_at", "id"),
    Index("ix_builds_running_health", "status", "last_health_at"),
)

# Which CI identities may create builds in a project (OIDC trust policies). owner and name
# are the provider's two names: GitHub repository owner and repository, CircleCI organization
# and project UUIDs, Buildkite organization and pipeline slugs. Removing one marks it
# (removed_at): the builds it admitted keep naming it.
trust_policies = Table(
    "trust_policies",
    metadata,
    Column("id", ID, primary_key=True),
    Column("project_id", ID, ForeignKey("projects.id"), nullable=False),
    Column("provider", String(16), nullable=False),
    Column("owner", String(255), nullable=False),
    Column("name", String(255), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("removed_at", BigInteger, nullable=True),
    Index("ix_trust_policies_project", "project_id", "created_at", "id"),
)

# A BuildKit host, as its agent registered it. state: active, draining, gone. A machine serves
# at most one project at a time (project_id); binding_id changes whenever its daemon must
# restart. changed_at moves on every change that may let a waiting build proceed.
machines = Table(
    "machines",
    metadata,
    Column("id", ID, primary_key=True),
    Column("token_id", ID, ForeignKey("tokens.id"), nullable=False),
    Column("platform", String(16), nullable=False),
    Column("endpoint", String(255), nullable=False),
    Column("capacity", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("project_id", ID, ForeignKey("projects.id"), nullable=True),
    Column("last_project_id", ID, nullable=True),
    Column("binding_id", ID, nullable=True),
    Column("cache_generation", Integer, nullable=True),
    Column("server_name", String(255), nullable=True),
    Column("server_cert", Text, nullable=True),
    Column("server_key_sealed", Text, nullable=True),
    Column("ready_binding_id", ID, nullable=True),
    Column("disk_used_bytes", BigInteger, nullable=False),
    Column("buildkit_error", Text, nullable=True),
    Column("registered_at", BigInteger, nullable=False),
    Column("last_heartbeat_at", BigInteger, nullable=False),
    Column("last_used_at", BigInteger, nullable=True),
    Column("changed_at", BigInteger, nullable=False),
    Index("ix_machines_pick", "platform", "state", "project_id"),
    Index("ix_machines_changed", "changed_at"),
)

# Each project's certificate authority; its key is sealed (encrypted) before it is stored.
project_cas = Table(
    "project_cas",
    metadata,
    Column("project_id", ID, ForeignKey("projects.id"), primary_key=True),
    Column("cert_pem", Text, nullable=False),
    Column("key_sealed", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

# Which machine serves a build on a platform: the same one until the build ends or the
# machine is lost.
build_endpoints = Table(
    "build_endpoints",
    metadata,
    Column("build_id", ID, ForeignKey("builds.id"), primary_key=True),
    Column("platform", String(16), primary_key=True),
    Column("machine_id", ID, ForeignKey("machines.id"), nullable=False),
    Column("acquired_at", BigInteger, nullable=False),
    Column("released_at", BigInteger, nullable=True),
    Index("ix_build_endpoints_machine", "machine_id", "released_at"),
)

# Progress the depot CLI streams during a build (ReportStatusStream frames), kept as the
# serialized frame so that nothing it carried is lost before anything reads it.
build_status_reports = Table(
    "build_status_reports",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("build_id", ID, ForeignKey("builds.id"), nullable=False),
    Column("received_at", BigInteger, nullable=False),
    Column("report", LargeBinary, nullable=False),
    Index("ix_build_status_reports_build", "build_id", "id"),
)


# Client connections to machines' front doors, as the agents report them: who used a machine.
# One row per connection (an interim report and the final one update it); a machine's rows
# are kept for a week (store.connections).
machine_connections = Table(
    "machine_connections",
    metadata,
    Column("machine_id", ID, ForeignKey("machines.id"), primary_key=True),
    Column("connection_id", String(64), primary_key=True),
    # "" when the connection never named a build; not a foreign key: a refused connection
    # may name a build that does not exist.
    Column("build_id", String(64), nullable=False),
    Column("project_id", ID, nullable=True),
    Column("binding_id", String(64), nullable=False),
    Column("peer", String(255), nullable=False),
    Column("opened_at", BigInteger, nullable=False),
    Column("closed_at", BigInteger, nullable=True),
    Column("admitted", Boolean, nullable=False),
    Column("refusal", String(1024), nullable=False),
    Column("bytes_from_client", BigInteger, nullable=False),
    Column("bytes_to_client", BigInteger, nullable=False),
    Column("reported_at", BigInteger, nullable=False),
    # Listings newest first, by machine and by build; the week's bound walks the first.
    Index("ix_machine_connections_machine", "machine_id", "opened_at", "connection_id"),
    Index("ix_machine_connections_build", "build_id", "opened_at"),
)


# Build insights (store.insights): what BuildKit said about each build, as the agents at the
# machines' front doors (or `depot-api report-build`) reported it. One row per build that has
# any, with the counters that outlive its logs.
build_insights = Table(
    "build_insights",
    metadata,
    Column("build_id", ID, ForeignKey("builds.id"), primary_key=True),
    Column("project_id", ID, nullable=False),
    # The build's creation, copied here so that the retention sweep walks one index.
    Column("build_created_at", BigInteger, nullable=False),
    # Steps seen so far: the next step's position.
    Column("steps", Integer, nullable=False),
    # Log bytes kept, and bytes not kept once the build's cap was reached.
    Column("log_bytes", BigInteger, nullable=False),
    Column("log_bytes_cut", BigInteger, nullable=False),
    # The largest count of status messages a reporter said it dropped.
    Column("dropped", BigInteger, nullable=False),
    # A reporter listened from the side (the client never asked for status).
    Column("side_listener", Boolean, nullable=False),
    # The logs are past the retention and deleted; the steps and counters stay.
    Column("logs_expired", Boolean, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_build_insights_retention", "logs_expired", "build_created_at"),
)

# A build's steps (BuildKit vertexes), one row per (build, digest), merged field by field.
build_steps = Table(
    "build_steps",
    metadata,
    Column("build_id", ID, ForeignKey("builds.id"), primary_key=True),
    Column("digest", String(255), primary_key=True),
    Column("project_id", ID, nullable=False),
    # Order of first sight in the build: GetBuildSteps pages by it.
    Column("position", Integer, nullable=False),
    Column("name", Text, nullable=False),
    # The digests of the steps it depends on, one per line.
    Column("inputs", Text, nullable=False),
    Column("started_at", BigInteger, nullable=True),
    Column("completed_at", BigInteger, nullable=True),
    Column("cached", Boolean, nullable=False),
    Column("error", Text, nullable=True),
    # The step's log chunks so far: the next chunk's seq.
    Column("log_chunks", Integer, nullable=False),
    # The step's log was cut at the build's cap (its last chunk is the marker).
    Column("log_cut", Boolean, nullable=False),
    Index("ix_build_steps_position", "build_id", "position"),
    # Saved time: the latest uncached run of a digest in a project.
    Index("ix_build_steps_runs", "project_id", "digest", "completed_at"),
)

# A step's output in order, in chunks of at most 64 KiB.
build_step_logs = Table(
    "build_step_logs",
    metadata,
    Column("build_id", ID, ForeignKey("builds.id"), primary_key=True),
    Column("digest", String(255), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("at", BigInteger, nullable=False),
    Column("stream", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
)

# The status messages merged into a build, by a hash of their content: a message sent again
# (a retried batch, an upload repeated) is merged once.
build_status_seen = Table(
    "build_status_seen",
    metadata,
    Column("build_id", ID, ForeignKey("builds.id"), primary_key=True),
    Column("message_key", String(64), primary_key=True),
)


# Shared build links (ShareBuild): at most one per build. The link's secret is kept as its
# SHA-256 (what a page view looks up) and sealed with the server's secret key (so that ShareBuild
# again can give the same link back); the database alone never holds a usable link.
build_shares = Table(
    "build_shares",
    metadata,
    Column("build_id", ID, ForeignKey("builds.id"), primary_key=True),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("sealed_secret", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)


# Console sessions: the browser holds a random session ID, the store its SHA-256 and the hash
# of the token signed in with (never the token): every page checks that token as an API call
# would, so a revoked token ends its sessions at once, in every process.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("session_hash", String(64), primary_key=True),
    Column("token_hash", String(64), nullable=False, index=True),
    Column("token_kind", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),
)


def micros_or_none(at: datetime | None) -> int | None:
    """A column's value for an optional time."""
    return None if at is None else to_micros(at)


def at_or_none(value: int | None) -> datetime | None:
    """An optional time from its column's value."""
    return None if value is None else from_micros(value)
