"""What the domain may ask of persistence: one interface per aggregate, with its contract.

The domain depends on these Protocols (and store.errors) only; store.orgs, store.projects,
store.builds, store.machines and store.connections implement them over SQL, and store.opening
puts them together as the Store.

Contract for every method of every aggregate:
- It is one transaction: it happens whole or not at all.
- Reads of projects, and of builds through their project, never return a deleted project's
  data.
- Conditional writes (a build's finish, a token's last use, claiming a machine, a machine's
  server certificate) are decided inside the database, so concurrent callers in any number
  of processes see exactly one winner.
- Listings are in keyset order: by (created_at, id), so a Position from a page's last item
  continues after it however many rows are added meanwhile.
- Everything a write needs comes in its arguments: no call reaches back into the domain (so
  no domain work, such as minting a certificate, ever runs while the store holds a lock).
- Failures are store.errors only; a caller may retry StoreUnavailable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from depot_api.models import (
    AdmissionFacts,
    Binding,
    Build,
    BuildInsights,
    BuildShare,
    BuildStatus,
    BuildStep,
    CachePolicy,
    ConsoleSession,
    Hardware,
    InsightsFlags,
    LogChunk,
    Machine,
    MachineConnection,
    MachineState,
    MergeLimits,
    Organization,
    Platform,
    Project,
    ProjectCA,
    ProjectUsage,
    StatusMessage,
    StatusReport,
    Token,
    TrustPolicy,
    User,
)

# A keyset position: (created_at in epoch microseconds, id).
Position = tuple[int, str]


class Reachable(Protocol):
    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database is reachable and migrated."""


class OrgStore(Protocol):
    """Organizations, users, their memberships, and tokens of every kind."""

    async def insert_organization(self, org: Organization) -> None:
        """Raises DuplicateKey on an ID clash."""

    async def count_organizations(self) -> int:
        """How many organizations exist (0: the database is new)."""

    async def get_organizations(self, org_ids: list[str]) -> list[Organization]:
        """The named organizations that exist, oldest first."""

    async def list_organizations(self) -> list[Organization]:
        """Every organization, oldest first."""

    async def insert_user(self, user: User) -> None:
        """Raises DuplicateKey on an ID clash."""

    async def get_user(self, user_id: str) -> User | None:
        """The user, or None when there is none."""

    async def add_membership(self, user_id: str, org_id: str, at: datetime) -> bool:
        """Make the user a member; False when they already were. Moves the auth epoch."""

    async def org_ids_of_user(self, user_id: str) -> list[str]:
        """The organizations the user is a member of, by ID."""

    async def insert_token(self, token: Token) -> None:
        """Raises DuplicateKey on an ID or secret-hash clash."""

    async def find_token(self, secret_hash: str) -> Token | None:
        """The token with this hash, revoked or not."""

    async def get_token(self, token_id: str) -> Token | None:
        """The token with this ID, revoked or not; None when there is none."""

    async def list_project_tokens(self, project_id: str) -> list[Token]:
        """The project's live (unrevoked) project tokens, oldest first."""

    async def list_standing_tokens(self) -> list[Token]:
        """Every unrevoked token that is not a build token, oldest first."""

    async def set_token_description(self, token_id: str, description: str) -> bool:
        """False when the token does not exist or is revoked."""

    async def record_token_use(self, token_id: str, at: datetime, unless_since: datetime) -> None:
        """Set the token's last use to at, unless it was already recorded at or after
        unless_since (so a busy token costs one write per interval, not one per call)."""

    async def revoke_token(self, token_id: str, at: datetime) -> bool:
        """False when the token does not exist or was already revoked. Moves the auth epoch."""

    async def auth_epoch(self) -> int:
        """The auth epoch: it moves, in the same transaction, with every change that could
        refuse a token or change what it reaches (revoke_token, add_membership,
        ProjectStore.delete_project). Kept principals are good while it stays put."""


class ProjectStore(Protocol):
    """Projects, their cache generations, and their certificate authorities."""

    async def insert_project(self, project: Project) -> None:
        """Raises NameTaken when the organization has a live project of that name, and
        DuplicateKey on an ID clash."""

    async def get_project(self, project_id: str) -> Project | None:
        """The project, unless it does not exist or was deleted."""

    async def list_projects(
        self, org_ids: list[str], after: Position | None, limit: int
    ) -> list[Project]:
        """Live projects of these organizations, oldest first, strictly after `after`."""

    async def get_projects(self, project_ids: list[str]) -> list[Project]:
        """The live projects among these IDs, in no particular order."""

    async def update_project(
        self,
        project_id: str,
        *,
        name: str | None = None,
        region_id: str | None = None,
        hardware: Hardware | None = None,
        cache_policy: CachePolicy | None = None,
    ) -> Project | None:
        """Change the given fields; None when there is no live project. Raises NameTaken."""

    async def delete_project(self, project_id: str, at: datetime) -> bool:
        """Mark the project deleted and revoke its tokens; False when it was not live. Moves
        the auth epoch (OrgStore.auth_epoch)."""

    async def bump_cache_generation(self, project_id: str) -> int | None:
        """Start a new cache generation; returns it, or None when there is no live project."""

    async def get_project_ca(self, project_id: str) -> ProjectCA | None:
        """The project's CA; None until one is stored."""

    async def insert_project_ca(self, ca: ProjectCA) -> ProjectCA:
        """Store the CA unless the project has one; returns the stored one either way (of
        concurrent callers, the first to store wins)."""


class TrustPolicyStore(Protocol):
    """Which CI identities may create builds in a project."""

    async def insert_trust_policy(self, policy: TrustPolicy) -> None:
        """Raises DuplicateKey on an ID clash."""

    async def list_trust_policies(self, project_id: str) -> list[TrustPolicy]:
        """The project's policies that are not removed, oldest first; none for a deleted
        project."""

    async def get_trust_policy(self, policy_id: str) -> TrustPolicy | None:
        """The policy, removed or not."""

    async def remove_trust_policy(self, project_id: str, policy_id: str, at: datetime) -> bool:
        """Mark the project's policy removed; False when it has no such live policy."""


class BuildStore(Protocol):
    """Builds: their lifecycle, their health and machine waits, and their status reports."""

    async def insert_build(self, build: Build, token: Token) -> None:
        """Store a new build with its build token. Raises DuplicateKey on a clash."""

    async def get_build(self, build_id: str) -> Build | None:
        """The build, unless it does not exist or its project was deleted."""

    async def list_builds(
        self,
        project_id: str,
        before: Position | None,
        limit: int,
        status: BuildStatus | None = None,
    ) -> list[Build]:
        """The project's builds, newest first, strictly before `before`; only those in
        `status` when one is given."""

    async def finish_build(
        self, build_id: str, status: BuildStatus, at: datetime, error_message: str | None
    ) -> Build | None:
        """Move a RUNNING build to `status`; if it had already ended, change nothing.

        Returns the build as it is afterwards (whichever finish won), or None when the build
        does not exist.
        """

    async def touch_build_health(self, build_id: str, now: datetime) -> bool:
        """Record a sign of life of a running build; False when it is not running."""

    async def note_machine_wait(self, build_id: str, now: datetime) -> datetime | None:
        """Touch a running build's health and start its machine wait if none is under way;
        returns when the wait began, or None if the build is not running."""

    async def mark_build_started(self, build_id: str, at: datetime) -> None:
        """Record the build's start (its first machine; a later one changes nothing) and end
        its machine wait (a later wait starts afresh)."""

    async def cancel_silent_builds(self, *, silent_since: datetime, now: datetime) -> list[str]:
        """Cancel running builds whose clients reported last before silent_since (builds that
        never reported are left alone); returns their IDs."""

    async def insert_status_report(
        self, build_id: str, received_at: datetime, report: bytes, *, max_total_bytes: int
    ) -> bool:
        """Keep one progress report; False (and nothing kept) once the build's reports would
        exceed max_total_bytes."""

    async def list_status_reports(self, build_id: str) -> list[StatusReport]:
        """The build's reports in the order they were kept."""


class MachineStore(Protocol):
    """BuildKit machines as their agents registered them, their bindings to projects, and the
    endpoints that say which machine serves which build (see store.machines for how binding
    stays exclusive across processes)."""

    async def insert_machine(self, machine: Machine) -> None:
        """Raises DuplicateKey on an ID clash."""

    async def get_machine(self, machine_id: str) -> Machine | None:
        """The machine in any state; None when none was registered with this ID."""

    async def list_machines(self) -> list[Machine]:
        """Every machine ever registered, oldest first."""

    async def machine_stamp(
        self, lost_before: datetime, stale_before: datetime
    ) -> tuple[int, int, int]:
        """(last change of any machine, machines silent since lost_before, machines silent
        since stale_before): it moves whenever a waiting build may be able to proceed."""

    async def last_heard_from(self, platform: Platform, project_id: str) -> datetime | None:
        """The latest heartbeat of any machine of the platform that could take the project: an
        active one (idle or bound to any project), or a draining one already bound to it. None
        when there is no such machine."""

    async def record_heartbeat(
        self,
        machine_id: str,
        *,
        running_binding_id: str,
        ready: bool,
        disk_used_bytes: int,
        error: str | None,
        now: datetime,
    ) -> Machine | None:
        """Store the agent's report and return the machine afterwards (None: no such
        machine); a machine declared lost becomes active again."""

    async def set_machine_state(self, machine_id: str, state: MachineState, now: datetime) -> bool:
        """False when there is no such machine."""

    async def acquire_machine(
        self,
        *,
        build_id: str,
        project_id: str,
        platform: Platform,
        now: datetime,
        lost_before: datetime,
        binding: Binding,
    ) -> Machine | None:
        """The machine serving the build on the platform, claiming an idle one if need be.

        In order: the build's own machine while it still serves the project; else the
        project's machine for the platform; else an idle active machine (one that served the
        project before first, for its cache), claimed for the project under `binding` (used
        only then) with no server certificate yet: see set_server_certificate. The build's
        endpoint records the machine. None when no machine can be had or the project is not
        live. Machines silent since lost_before are declared gone first, and their endpoints
        released. No machine is ever bound to two projects; builds of one project and platform
        share its machine.
        """

    async def set_server_certificate(
        self, machine_id: str, *, binding_id: str, cert_pem: str, key_sealed: str
    ) -> bool:
        """Store the server certificate (and its sealed key) of the machine's binding, only
        while binding_id is still the machine's binding and it has no certificate yet: of
        concurrent callers one stores, and a certificate is never stored for a binding that
        has been replaced or released. False when nothing was stored."""

    async def release_endpoint(self, build_id: str, platform: Platform, now: datetime) -> bool:
        """The build lets go of its machine of the platform; False when it held none."""

    async def release_idle_machine(
        self, machine_id: str, *, idle_before: datetime, now: datetime
    ) -> bool:
        """Unbind the machine when no running build holds it and it was last used before
        idle_before; False when it stays bound."""

    async def rebind_project_machines(
        self, project_id: str, *, binding_id: str, generation: int, now: datetime
    ) -> int:
        """Give the project's machines a new binding and cache generation (their daemons
        restart clean; server name and certificate stay); returns how many."""

    async def unbind_project_machines(self, project_id: str, now: datetime) -> int:
        """Release the project's machines and their endpoints; returns how many."""


class ConnectionStore(Protocol):
    """Client connections to machines' front doors: what admitting one depends on, and the
    agents' reports of them."""

    async def admission_facts(self, machine_id: str, build_id: str) -> AdmissionFacts | None:
        """The machine's binding and the build as they are now, read by one statement (it is
        asked before every client connection); None when there is no such machine."""

    async def record_connections(
        self, machine_id: str, connections: list[MachineConnection], *, keep_since: datetime
    ) -> None:
        """Store the machine's reports, one row per (machine, connection ID): a report of a
        connection already stored updates it (closed_at once set stays; byte counts only
        grow; the rest stays as first reported), so a batch sent twice is stored once. Each
        row takes the project of its build, when the build exists. Then the machine's rows of
        connections opened before keep_since, and closed or last reported before it, are
        deleted. The machine must exist (a broken constraint otherwise)."""

    async def list_connections(
        self, *, machine_id: str | None, build_id: str | None, limit: int
    ) -> list[MachineConnection]:
        """At most limit connections, newest opened first, of the machine and/or the build
        when given (of every machine otherwise)."""


@dataclass(frozen=True, slots=True)
class MergeResult:
    # Messages merged now, and messages skipped because they had been merged before.
    merged: int
    repeated: int


class ShareStore(Protocol):
    """Shared build links: at most one per build, found by the hash of its secret."""

    async def share(self, build_id: str, new: BuildShare, now_us: int) -> BuildShare:
        """The build's share: the one it has, else `new`, stored. Of concurrent callers in any
        process, all get the same one."""

    async def stop(self, build_id: str) -> bool:
        """Remove the build's share; False when it had none."""

    async def is_shared(self, build_id: str) -> bool:
        """Whether the build has a share now (one read by its key; no secret read)."""

    async def shared_build(self, secret_hash: str) -> Build | None:
        """The build shared under this secret hash, unless it is not shared (any more) or its
        project was deleted."""


class SessionStore(Protocol):
    """Console sessions, found by the hash of their ID."""

    async def create(self, session: ConsoleSession) -> None:
        """Store a new session."""

    async def find(self, session_hash: str, now_us: int) -> ConsoleSession | None:
        """The session, unless it has ended or expired by now_us."""

    async def end(self, session_hash: str) -> bool:
        """Delete the session; False when there was none."""

    async def purge_expired(self, now_us: int) -> int:
        """Delete the sessions expired by now_us; how many."""


class InsightStore(Protocol):
    """Build insights: steps, step logs and counters, as BuildKit's status messages said."""

    async def merge(
        self,
        build_id: str,
        *,
        project_id: str,
        build_created_us: int,
        messages: Sequence[StatusMessage],
        flags: InsightsFlags,
        limits: MergeLimits,
        now_us: int,
    ) -> MergeResult:
        """Merge the messages not merged before (by their key) into the build's steps, in
        order: each vertex into its step (by digest; see store.insights for how fields
        combine), each log piece appended to its step's log while the build's kept log bytes
        stay within limits.max_log_bytes; the piece that crosses the cap is cut there and the
        step's log ends with limits.cut_marker; later pieces are only counted. A log piece of
        a step never seen makes the step (with no name yet). The flags only grow: dropped
        keeps its largest value, side_listener once set stays. The build must exist."""

    async def build_served_by(self, build_id: str, machine_id: str) -> Build | None:
        """The build, if its project is live and it held an endpoint on the machine at some
        time (released or not: the end of a build is reported after it lets go)."""

    async def list_steps(self, build_id: str, *, after: int, limit: int) -> list[BuildStep]:
        """At most limit steps with a position above after, in position order."""

    async def get_step(self, build_id: str, digest: str) -> BuildStep | None:
        """The step, or None when the build has no step of that digest."""

    async def read_log(
        self, build_id: str, digest: str, *, from_seq: int, limit: int
    ) -> list[LogChunk]:
        """At most limit chunks of the step's log from seq from_seq on, in order."""

    async def insights(self, build_ids: list[str]) -> dict[str, BuildInsights]:
        """The counters of the builds that have insights, by build ID."""

    async def expire_logs(self, *, keep_since_us: int, limit: int) -> list[str]:
        """Delete the logs of at most limit builds created before keep_since_us (oldest
        first), keeping their steps and counters; returns their IDs."""


class UsageStore(Protocol):
    """Usage figures over builds and machines."""

    async def project_usage(
        self, project_ids: list[str], *, start_us: int, end_us: int
    ) -> list[ProjectUsage]:
        """For each live project named: its builds created in [start_us, end_us), their
        seconds (of those that finished), the seconds their cached steps saved, and the cache
        its machines hold now (the disk use the agents last reported of machines whose cache
        is the project's). In the order of project_ids."""
