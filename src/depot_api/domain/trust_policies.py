"""Trust policies: which CI jobs may create builds in a project without a stored token.

Managers (organization and user tokens) list, add and remove a project's policies. A CI job's
verified OIDC identity (ci_identity) is admitted to a project by a policy that names it; the
build it then creates records that policy. Policies are read at each admission, so a policy
removed a moment ago admits nothing more, in every server process.

A CI caller learns the same thing for a project that does not exist as for one none of whose
policies names it: permission_denied, naming the identity it presented. So its token tells it
nothing about other organizations' projects.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from depot_api.domain.ci_identity import CiIdentity
from depot_api.domain.errors import (
    AlreadyExists,
    InvalidArgument,
    InvalidField,
    NotFound,
    PermissionDenied,
)
from depot_api.domain.ids import new_id, quoted, require_id, with_fresh_ids
from depot_api.domain.principal import Principal
from depot_api.domain.projects import Projects
from depot_api.models import CiProvider, Project, TrustPolicy
from depot_api.store.interface import ProjectStore, TrustPolicyStore

# GitHub: an account name is at most 39 letters, digits and hyphens; a repository name at
# most 100 letters, digits, '.', '_' and '-'. Buildkite slugs are of the same alphabet.
_GITHUB_OWNER = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
_SLUG = re.compile(r"[A-Za-z0-9._-]{1,100}")
MAX_POLICIES_PER_PROJECT = 100


@dataclass(frozen=True, slots=True)
class PolicyInput:
    """A policy as a caller sends it: the provider, its two names, and how the request names
    the fields that hold them (for errors)."""

    provider: CiProvider
    owner: str
    name: str
    owner_field: str
    name_field: str


class TrustPolicies:
    def __init__(
        self,
        *,
        policy_store: TrustPolicyStore,
        project_store: ProjectStore,
        projects: Projects,
        now: Callable[[], datetime],
    ) -> None:
        self._policy_store = policy_store
        self._project_store = project_store
        self._projects = projects
        self._now = now

    async def list(self, principal: Principal, project_id: str) -> list[TrustPolicy]:
        project = await self._projects.get_managed(principal, project_id, "list trust policies")
        return await self._policy_store.list_trust_policies(project.id)

    async def add(
        self, principal: Principal, project_id: str, given: PolicyInput | None
    ) -> TrustPolicy:
        principal.require_manager("add trust policies")
        require_id(project_id, "project_id")
        if given is None:
            raise InvalidArgument("a provider is required: one of github, circleci, buildkite")
        owner, name = _validated(given)
        project = await self._projects.get_managed(principal, project_id, "add trust policies")
        existing = await self._policy_store.list_trust_policies(project.id)
        for policy in existing:
            # Names compare as CI identities do: without regard to case.
            if (policy.provider, policy.owner.casefold(), policy.name.casefold()) == (
                given.provider,
                owner.casefold(),
                name.casefold(),
            ):
                raise AlreadyExists(
                    f"project {project.id} already has this trust policy: {policy.id}"
                )
        if len(existing) >= MAX_POLICIES_PER_PROJECT:
            raise InvalidArgument(
                f"project {project.id} has {len(existing)} trust policies, the most it may "
                "have; remove one first"
            )

        async def insert() -> TrustPolicy:
            policy = TrustPolicy(
                id=new_id(),
                project_id=project.id,
                provider=given.provider,
                owner=owner,
                name=name,
                created_at=self._now(),
            )
            await self._policy_store.insert_trust_policy(policy)
            return policy

        return await with_fresh_ids(insert)

    async def remove(self, principal: Principal, project_id: str, policy_id: str) -> None:
        principal.require_manager("remove trust policies")
        require_id(project_id, "project_id")
        require_id(policy_id, "trust_policy_id")
        project = await self._projects.get_managed(principal, project_id, "remove trust policies")
        if not await self._policy_store.remove_trust_policy(project.id, policy_id, self._now()):
            raise NotFound(f"trust policy {policy_id} not found in project {project.id}")

    async def admit(self, identity: CiIdentity, project_id: str) -> tuple[Project, TrustPolicy]:
        """The project, and the policy of it that admits this CI identity; PermissionDenied
        naming the identity when none does (or there is no such project)."""
        require_id(project_id, "project_id")
        project = await self._project_store.get_project(project_id)
        if project is not None:
            for policy in await self._policy_store.list_trust_policies(project.id):
                if identity.admitted_by(policy):
                    return project, policy
        raise PermissionDenied(
            f"no trust policy of project {quoted(project_id)} admits {identity.describe()}; "
            "add one with AddTrustPolicy"
        )


def _validated(given: PolicyInput) -> tuple[str, str]:
    """The policy's two names as kept: checked for their provider's shape; a GitHub
    repository may be given as owner/name."""
    owner, name = given.owner.strip(), given.name.strip()
    match given.provider:
        case CiProvider.GITHUB:
            if not _GITHUB_OWNER.fullmatch(owner):
                raise InvalidField(
                    given.owner_field,
                    f"{_shown(owner)} is not a GitHub account name (up to 39 letters, digits "
                    "and hyphens)",
                )
            if "/" in name:
                named_owner, _, name = name.partition("/")
                if named_owner.casefold() != owner.casefold():
                    raise InvalidField(
                        given.name_field,
                        f"names the owner {quoted(named_owner)}, not {quoted(owner)}; give the "
                        "repository's name, or owner/name",
                    )
            if not _SLUG.fullmatch(name) or name in (".", ".."):
                raise InvalidField(
                    given.name_field,
                    f"{_shown(name)} is not a GitHub repository name (up to 100 letters, "
                    "digits, '.', '_' and '-')",
                )
            return owner, name
        case CiProvider.CIRCLECI:
            return (_uuid(owner, given.owner_field), _uuid(name, given.name_field))
        case CiProvider.BUILDKITE:
            for value, field in ((owner, given.owner_field), (name, given.name_field)):
                if not _SLUG.fullmatch(value):
                    raise InvalidField(
                        field,
                        f"{_shown(value)} is not a Buildkite slug (up to 100 letters, digits, "
                        "'.', '_' and '-')",
                    )
            return owner.lower(), name.lower()


def _uuid(value: str, field: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidField(
            field,
            f"{_shown(value)} is not a UUID; CircleCI shows the organization's and project's "
            "IDs in their settings",
        ) from None


def _shown(value: str) -> str:
    return quoted(value) if value else "an empty value"
