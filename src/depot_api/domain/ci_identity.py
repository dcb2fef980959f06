"""Who a CI job is, as its provider's OIDC token says, and whether a trust policy names it.

Each provider names a job's origin with two names, and a trust policy holds the same two
(models.TrustPolicy: owner and name):

    GitHub Actions   repository_owner           repository ("owner/name")
    CircleCI         organization UUID (iss)    project UUID (oidc.circleci.com/project-id)
    Buildkite        organization_slug          pipeline_slug

Names are compared without regard to case: GitHub's and Buildkite's are case-insensitive, and
a UUID is the same in either case.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from depot_api.domain.errors import Unauthenticated
from depot_api.models import CiProvider, TrustPolicy

CIRCLECI_PROJECT_CLAIM = "oidc.circleci.com/project-id"


@dataclass(frozen=True, slots=True)
class CiIdentity:
    provider: CiProvider
    issuer: str
    subject: str
    owner: str
    name: str

    def admitted_by(self, policy: TrustPolicy) -> bool:
        return (
            policy.provider is self.provider
            and policy.owner.casefold() == self.owner.casefold()
            and policy.name.casefold() == self.name.casefold()
        )

    @property
    def caller_id(self) -> str:
        """What the call limits count this caller as: one CI origin (a repository, project
        or pipeline), however many jobs and tokens it has."""
        return f"ci:{self.provider.value}:{self.owner}/{self.name}"

    def describe(self) -> str:
        """The identity as a person reads it, for refusals."""
        match self.provider:
            case CiProvider.GITHUB:
                return f"GitHub repository {self.owner}/{self.name}"
            case CiProvider.CIRCLECI:
                return f"CircleCI project {self.name} of organization {self.owner}"
            case CiProvider.BUILDKITE:
                return f"Buildkite pipeline {self.owner}/{self.name}"


def identity_from_claims(
    provider: CiProvider, issuer: str, circleci_org: str | None, claims: Mapping[str, Any]
) -> CiIdentity:
    """The identity verified claims describe; Unauthenticated when a claim the provider
    always sets is missing."""
    subject = _claim(claims, "sub")
    match provider:
        case CiProvider.GITHUB:
            owner = _claim(claims, "repository_owner")
            repository = _claim(claims, "repository")
            prefix = f"{owner}/"
            if not repository.casefold().startswith(prefix.casefold()):
                raise Unauthenticated(
                    f"the OIDC token's repository {repository!r} is not owned by its "
                    f"repository_owner {owner!r}"
                )
            return CiIdentity(provider, issuer, subject, owner, repository[len(prefix) :])
        case CiProvider.CIRCLECI:
            assert circleci_org is not None
            project = _claim(claims, CIRCLECI_PROJECT_CLAIM)
            return CiIdentity(provider, issuer, subject, circleci_org, project)
        case CiProvider.BUILDKITE:
            organization = _claim(claims, "organization_slug")
            pipeline = _claim(claims, "pipeline_slug")
            return CiIdentity(provider, issuer, subject, organization, pipeline)


def _claim(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise Unauthenticated(f"the OIDC token has no {name} claim")
    return value
