"""Builds: registration, the one-way state machine, and who may drive or read a build.

    RUNNING ──► SUCCESS | FAILED | CANCELED   (by the client, through FinishBuild)
            └─► ERROR                         (by the server, for infrastructure faults)

Exactly one transition leaves RUNNING. Repeating the finish that won is a no-op that
succeeds (clients retry); asking for a different outcome afterwards is failed_precondition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from depot_api.domain.errors import FailedPrecondition, InvalidField, NotFound, PermissionDenied
from depot_api.domain.ids import new_id, require_id, with_fresh_ids
from depot_api.domain.paging import decode_page_token, page_of, resolve_page_size
from depot_api.domain.principal import Principal
from depot_api.domain.projects import Projects
from depot_api.domain.tokens import Tokens
from depot_api.domain.trust_policies import TrustPolicies
from depot_api.metrics import observe_build_finished
from depot_api.models import Build, BuildStatus, Page, Project, TokenKind
from depot_api.store.interface import BuildStore
from depot_api.times import to_micros

BUILD_PAGE_DEFAULT = 100
BUILD_PAGE_MAX = 1000
ERROR_MESSAGE_MAX = 65_536


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a client says its build ended."""

    status: BuildStatus
    error_message: str | None = None

    @staticmethod
    def success() -> Outcome:
        return Outcome(BuildStatus.SUCCESS)

    @staticmethod
    def failed(message: str) -> Outcome:
        if len(message) > ERROR_MESSAGE_MAX:
            raise InvalidField(
                "error.error",
                f"is too long: {len(message)} characters, at most {ERROR_MESSAGE_MAX}",
            )
        return Outcome(BuildStatus.FAILED, message)

    @staticmethod
    def canceled() -> Outcome:
        return Outcome(BuildStatus.CANCELED)


class Builds:
    def __init__(
        self,
        build_store: BuildStore,
        projects: Projects,
        tokens: Tokens,
        trust_policies: TrustPolicies,
        *,
        now: Callable[[], datetime],
    ) -> None:
        self._trust_policies = trust_policies
        self._build_store = build_store
        self._projects = projects
        self._tokens = tokens
        self._now = now

    async def create(self, principal: Principal, project_id: str) -> tuple[Build, str]:
        """Register a RUNNING build; returns it with its build token's secret. A CI job (an
        OIDC token) needs a trust policy of the project that names it; the build records it."""
        policy_id = None
        if principal.ci is not None:
            project, policy = await self._trust_policies.admit(principal.ci, project_id)
            policy_id = policy.id
        else:
            project = await self._projects.get_for_builds(principal, project_id)
        return await with_fresh_ids(lambda: self._insert(project, policy_id))

    async def _insert(self, project: Project, trust_policy_id: str | None) -> tuple[Build, str]:
        build = Build(
            id=new_id(),
            project_id=project.id,
            org_id=project.org_id,
            status=BuildStatus.RUNNING,
            created_us=to_micros(self._now()),
            trust_policy_id=trust_policy_id,
        )
        token, secret = self._tokens.new_token(
            TokenKind.BUILD,
            f"build {build.id}",
            org_id=project.org_id,
            project_id=project.id,
            build_id=build.id,
        )
        await self._build_store.insert_build(build, token)
        return build, secret

    async def finish(self, principal: Principal, build_id: str, outcome: Outcome) -> Build:
        build = await self._reachable(principal, build_id)
        now = self._now()
        after = await self._build_store.finish_build(
            build.id, outcome.status, now, outcome.error_message
        )
        if after is None:
            raise NotFound(f"build {build_id} not found")
        if after.status is not outcome.status:
            raise FailedPrecondition(
                f"build {build_id} has already finished as {after.status.value}; "
                f"it cannot finish again as {outcome.status.value}"
            )
        if after.finished_us == to_micros(
            now
        ):  # this call ended it (a repeated finish is not counted)
            observe_build_finished(after.status, (now - after.created_at).total_seconds())
        return after

    async def get(self, principal: Principal, build_id: str) -> Build:
        return await self._reachable(principal, build_id)

    async def list(
        self,
        principal: Principal,
        project_id: str,
        page_size: int | None,
        page_token: str | None,
        status: BuildStatus | None = None,
    ) -> Page[Build]:
        """The project's builds, newest first; only those in `status` when one is given (the
        store filters, so a page is full whatever the mix). A page token is a position, so
        the same filter must come with it for the next page to continue the same listing."""
        limit = resolve_page_size(page_size, default=BUILD_PAGE_DEFAULT, maximum=BUILD_PAGE_MAX)
        before = decode_page_token(page_token)
        if principal.kind is TokenKind.BUILD:
            raise PermissionDenied("a build token can only drive its own build")
        project = await self._projects.get_for_builds(principal, project_id)
        rows = await self._build_store.list_builds(project.id, before, limit + 1, status)
        return page_of(rows, limit, lambda b: (b.created_us, b.id))

    async def _reachable(self, principal: Principal, build_id: str) -> Build:
        require_id(build_id, "build_id")
        if principal.kind is TokenKind.BUILD and principal.build_id != build_id:
            raise PermissionDenied(
                f"this build token belongs to build {principal.build_id}, not {build_id}"
            )
        build = await self._build_store.get_build(build_id)
        # Builds outside the caller's reach are reported exactly like missing ones.
        if (
            build is None
            or build.org_id not in principal.org_ids
            or (principal.kind is TokenKind.PROJECT and build.project_id != principal.project_id)
        ):
            raise NotFound(f"build {build_id} not found")
        return build


def duration_seconds(build: Build) -> float | None:
    """Seconds from the build's start (machine acquired, else creation) to its end."""
    if build.finished_us is None:
        return None
    start = build.started_us if build.started_us is not None else build.created_us
    return max((build.finished_us - start) / 1_000_000, 0.0)
