"""The records every layer speaks of: plain values, no behaviour, no I/O.

The domain decides what they may contain; the store persists them; the transport maps them
to protobuf messages. Times are UTC datetimes; the store keeps them as epoch microseconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, NamedTuple, TypeVar

from depot_api.times import from_micros

T = TypeVar("T")


class TokenKind(enum.StrEnum):
    """Who a token speaks for. The value is what the store keeps."""

    ORG = "org"
    USER = "user"
    PROJECT = "project"
    BUILD = "build"
    MACHINE = "machine"  # an agent on a BuildKit host; valid for the machine service only
    # A CI job's OIDC token (a JWT from GitHub Actions, CircleCI or Buildkite), admitted by a
    # project's trust policy to create builds there. Verified at each call, never stored.
    CI = "ci"


class CiProvider(enum.StrEnum):
    """The CI providers whose OIDC tokens trust policies name. The value is what the store
    keeps and what `--oidc-issuer PROVIDER=URL` calls them."""

    GITHUB = "github"
    CIRCLECI = "circleci"
    BUILDKITE = "buildkite"


class BuildStatus(enum.StrEnum):
    """A build's lifecycle: RUNNING, then exactly one of the others."""

    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELED = "canceled"
    ERROR = "error"  # an infrastructure fault, set by the server, never by a client


class Platform(enum.StrEnum):
    AMD64 = "amd64"
    ARM64 = "arm64"


class MachineState(enum.StrEnum):
    ACTIVE = "active"  # heartbeating; idle or bound to one project
    DRAINING = "draining"  # takes no new project; told to stop once unbound
    GONE = "gone"  # missed its heartbeats; unbound; comes back if it heartbeats again


class Hardware(enum.IntEnum):
    """Machine size of a project's builders. Numbers match depot.core.v1.Hardware."""

    UNSPECIFIED = 0
    HW_16X32 = 1
    HW_4X4 = 2
    HW_8X8 = 3
    HW_8X16 = 4
    HW_32X64 = 5
    HW_64X128 = 6
    HW_96X192 = 7
    HW_192X384 = 8


@dataclass(frozen=True, slots=True)
class Organization:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """keep_bytes is the deprecated size limit: kept as given (or None) so it can be echoed."""

    keep_gb: int
    keep_days: int
    keep_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    org_id: str
    name: str
    region_id: str
    hardware: Hardware
    cache_policy: CachePolicy
    cache_generation: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Token:
    """A stored token. The secret itself is never stored: only its SHA-256 hash."""

    id: str
    kind: TokenKind
    secret_hash: str
    description: str
    created_at: datetime
    org_id: str | None = None
    user_id: str | None = None
    project_id: str | None = None
    build_id: str | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class BuildShare:
    """A build's share link as stored: its secret's SHA-256 (hex), and the secret sealed."""

    secret_hash: str
    sealed_secret: str


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A console session as stored: its ID's SHA-256 (hex), and the signed-in token's secret
    hash and kind (the token itself is never stored)."""

    session_hash: str
    token_hash: str
    token_kind: TokenKind
    created_us: int
    expires_us: int


class Build(NamedTuple):
    """A build. Its times are kept as epoch microseconds, as stored and as sent (a listing
    turns hundreds of them into messages; a datetime for each would double its cost); the
    `_at` properties give them as datetimes.

    A NamedTuple rather than a frozen dataclass: as immutable, and made in half the time."""

    id: str
    project_id: str
    org_id: str
    status: BuildStatus
    created_us: int
    started_us: int | None = None
    finished_us: int | None = None
    error_message: str | None = None
    # The trust policy that admitted the CI job which created the build (an OIDC token);
    # None for a build created with a depot-api token.
    trust_policy_id: str | None = None

    @property
    def created_at(self) -> datetime:
        return from_micros(self.created_us)

    @property
    def started_at(self) -> datetime | None:
        return None if self.started_us is None else from_micros(self.started_us)

    @property
    def finished_at(self) -> datetime | None:
        return None if self.finished_us is None else from_micros(self.finished_us)


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """Lets one CI identity create builds in a project. owner and name are the provider's
    two names for it: GitHub's repository owner and repository, CircleCI's organization and
    project UUIDs, Buildkite's organization and pipeline slugs. A removed policy is kept (with
    removed_at) so that the builds it admitted still say which it was."""

    id: str
    project_id: str
    provider: CiProvider
    owner: str
    name: str
    created_at: datetime
    removed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """One progress report a client sent during a build: a serialized
    depot.cli.v1.ReportStatusStreamRequest, as it arrived (the unary ReportStatusRequest of
    older CLIs has the same fields and numbers, so its bytes read the same way)."""

    build_id: str
    received_at: datetime
    report: bytes


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a keyset-paged listing; next_page_token is empty on the last page."""

    items: list[T]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class Machine:
    id: str
    token_id: str
    platform: Platform
    endpoint: str
    capacity: int
    state: MachineState
    registered_at: datetime
    last_heartbeat_at: datetime
    changed_at: datetime
    disk_used_bytes: int = 0
    buildkit_error: str | None = None
    project_id: str | None = None
    binding_id: str | None = None
    cache_generation: int | None = None
    server_name: str | None = None
    server_cert: str | None = None
    server_key_sealed: str | None = None
    ready_binding_id: str | None = None
    last_used_at: datetime | None = None

    @property
    def ready(self) -> bool:
        """Its daemon runs the current binding and accepts connections."""
        return self.binding_id is not None and self.ready_binding_id == self.binding_id


@dataclass(frozen=True, slots=True)
class Binding:
    """What the domain decides before an idle machine is claimed for a project: the new
    binding's ID and the TLS server name its daemon will answer to. The server certificate
    is minted for that name once the claim is stored, outside the claim's transaction."""

    binding_id: str
    server_name: str


@dataclass(frozen=True, slots=True)
class ProjectCA:
    project_id: str
    cert_pem: str
    key_sealed: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AdmissionFacts:
    """What admitting a client connection to a machine depends on, read together: the machine
    as it is bound now, and the build the client certificate names."""

    machine_token_id: str
    machine_project_id: str | None
    machine_binding_id: str | None
    # None when there is no such build, or its project was deleted.
    build: Build | None
    # The build holds an endpoint on this machine that has not been released.
    endpoint_held: bool


@dataclass(frozen=True, slots=True)
class MachineConnection:
    """One client connection to a machine's front door, as its agent reported it."""

    machine_id: str
    # Chosen by the agent, unique per machine.
    connection_id: str
    # "" when the connection never named a build (no certificate, not TLS, another CA's).
    build_id: str
    binding_id: str
    peer: str
    opened_at: datetime
    # None while the connection is open.
    closed_at: datetime | None
    admitted: bool
    refusal: str
    bytes_from_client: int
    bytes_to_client: int
    reported_at: datetime
    # The build's project, when the build is known; filled in by the store.
    project_id: str | None = None


# Build insights: the steps, logs and cache hits of a build, as BuildKit reported them.


@dataclass(frozen=True, slots=True)
class VertexUpdate:
    """One BuildKit vertex (a build step) as one status message carried it. BuildKit resends
    a vertex whole whenever it changes; an empty field is one the message did not set."""

    digest: str
    name: str
    inputs: tuple[str, ...]
    started_us: int | None
    completed_us: int | None
    cached: bool
    error: str


@dataclass(frozen=True, slots=True)
class LogPiece:
    """Output a step printed, as one status message carried it (at most one chunk's bytes:
    the domain cuts longer output into pieces)."""

    digest: str
    at_us: int
    stream: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """One BuildKit status message, decoded: key identifies its content (a message sent twice
    has the same key, so it is merged once)."""

    key: str
    vertexes: tuple[VertexUpdate, ...]
    logs: tuple[LogPiece, ...]


@dataclass(frozen=True, slots=True)
class InsightsFlags:
    """What a reporter says about its own view of a build: messages it had to drop, and
    whether it listened from the side (so it may have missed the start)."""

    dropped: int = 0
    side_listener: bool = False


@dataclass(frozen=True, slots=True)
class MergeLimits:
    """The per-build log cap and the marker put in a step's log where it is cut."""

    max_log_bytes: int
    cut_marker: bytes


@dataclass(frozen=True, slots=True)
class BuildStep:
    build_id: str
    digest: str
    position: int
    name: str
    inputs: tuple[str, ...]
    started_us: int | None
    completed_us: int | None
    cached: bool
    error: str | None
    has_logs: bool


@dataclass(frozen=True, slots=True)
class LogChunk:
    """A stored piece of one step's log: seq orders a step's chunks."""

    seq: int
    at_us: int
    stream: int
    data: bytes


@dataclass(frozen=True, slots=True)
class BuildInsights:
    """A build's counters and what is known about the completeness of its insights."""

    build_id: str
    total_steps: int
    cached_steps: int
    saved_us: int
    log_bytes: int
    log_bytes_cut: int
    dropped: int
    side_listener: bool
    logs_expired: bool

    @property
    def incomplete(self) -> bool:
        """A reporter dropped status messages: some steps or logs may be missing."""
        return self.dropped > 0


@dataclass(frozen=True, slots=True)
class ProjectUsage:
    project_id: str
    project_name: str
    build_count: int
    build_seconds: float
    saved_seconds: float
    cache_bytes: int
