"""depot.core.v1.ProjectService: the real RPCs and the seed's names for the same operations."""

from __future__ import annotations

from typing import Literal

from protobuf import Oneof

from depot_api.api.convert import optional_timestamp, timestamp
from depot_api.api.guard import Context, current_principal
from depot_api.domain.projects import CachePolicyInput, Projects
from depot_api.domain.tokens import Tokens, lifetime_of
from depot_api.domain.trust_policies import PolicyInput, TrustPolicies
from depot_api.gen.depot.core.v1 import project_connect
from depot_api.gen.depot.core.v1 import project_pb as pb
from depot_api.models import CiProvider, Project, Token, TrustPolicy


class ProjectServiceImpl(project_connect.ProjectService):
    def __init__(self, projects: Projects, tokens: Tokens, trust_policies: TrustPolicies) -> None:
        self._projects = projects
        self._tokens = tokens
        self._trust_policies = trust_policies

    async def list_projects(
        self, request: pb.ListProjectsRequest, ctx: Context
    ) -> pb.ListProjectsResponse:
        page = await self._projects.list(
            current_principal(),
            request.page_size if request.has_field("page_size") else None,
            request.page_token or None,
        )
        return pb.ListProjectsResponse(
            projects=[project_message(p) for p in page.items],
            next_page_token=page.next_page_token,
        )

    async def get_project(
        self, request: pb.GetProjectRequest, ctx: Context
    ) -> pb.GetProjectResponse:
        project = await self._projects.get(current_principal(), request.project_id)
        return pb.GetProjectResponse(project=project_message(project))

    async def create_project(
        self, request: pb.CreateProjectRequest, ctx: Context
    ) -> pb.CreateProjectResponse:
        project = await self._projects.create(
            current_principal(),
            name=request.name,
            region_id=request.region_id,
            organization_id=request.organization_id or None,
            cache_policy=_policy_input(request.cache_policy),
            hardware=int(request.hardware) if request.has_field("hardware") else None,
        )
        return pb.CreateProjectResponse(project=project_message(project))

    async def update_project(
        self, request: pb.UpdateProjectRequest, ctx: Context
    ) -> pb.UpdateProjectResponse:
        project = await self._projects.update(
            current_principal(),
            request.project_id,
            name=request.name if request.has_field("name") else None,
            region_id=request.region_id if request.has_field("region_id") else None,
            cache_policy=_policy_input(request.cache_policy),
            hardware=int(request.hardware) if request.has_field("hardware") else None,
        )
        return pb.UpdateProjectResponse(project=project_message(project))

    async def delete_project(
        self, request: pb.DeleteProjectRequest, ctx: Context
    ) -> pb.DeleteProjectResponse:
        await self._projects.delete(current_principal(), request.project_id)
        return pb.DeleteProjectResponse()

    async def reset_project(
        self, request: pb.ResetProjectRequest, ctx: Context
    ) -> pb.ResetProjectResponse:
        await self._projects.reset(current_principal(), request.project_id)
        return pb.ResetProjectResponse()

    async def list_trust_policies(
        self, request: pb.ListTrustPoliciesRequest, ctx: Context
    ) -> pb.ListTrustPoliciesResponse:
        policies = await self._trust_policies.list(current_principal(), request.project_id)
        return pb.ListTrustPoliciesResponse(trust_policies=[_policy_message(p) for p in policies])

    async def add_trust_policy(
        self, request: pb.AddTrustPolicyRequest, ctx: Context
    ) -> pb.AddTrustPolicyResponse:
        policy = await self._trust_policies.add(
            current_principal(), request.project_id, _trust_policy_input(request)
        )
        return pb.AddTrustPolicyResponse(trust_policy=_policy_message(policy))

    async def remove_trust_policy(
        self, request: pb.RemoveTrustPolicyRequest, ctx: Context
    ) -> pb.RemoveTrustPolicyResponse:
        await self._trust_policies.remove(
            current_principal(), request.project_id, request.trust_policy_id
        )
        return pb.RemoveTrustPolicyResponse()

    async def list_tokens(
        self, request: pb.ListTokensRequest, ctx: Context
    ) -> pb.ListTokensResponse:
        tokens = await self._tokens.list_project_tokens(current_principal(), request.project_id)
        return pb.ListTokensResponse(tokens=[_token_message(t) for t in tokens])

    async def create_token(
        self, request: pb.CreateTokenRequest, ctx: Context
    ) -> pb.CreateTokenResponse:
        token, secret = await self._tokens.create_project_token(
            current_principal(),
            request.project_id,
            request.description,
            lifetime_of(request.expires_in_seconds, "expires_in_seconds"),
        )
        return pb.CreateTokenResponse(
            token_id=token.id, secret=secret, expires_at=optional_timestamp(token.expires_at)
        )

    async def update_token(
        self, request: pb.UpdateTokenRequest, ctx: Context
    ) -> pb.UpdateTokenResponse:
        await self._tokens.update_project_token(
            current_principal(), request.token_id, request.description
        )
        return pb.UpdateTokenResponse()

    async def delete_token(
        self, request: pb.DeleteTokenRequest, ctx: Context
    ) -> pb.DeleteTokenResponse:
        await self._tokens.delete_project_token(
            current_principal(), request.token_id, request.project_id
        )
        return pb.DeleteTokenResponse()

    # The seed's names for the same operations.

    async def reset_project_cache(
        self, request: pb.ResetProjectRequest, ctx: Context
    ) -> pb.ResetProjectResponse:
        return await self.reset_project(request, ctx)

    async def list_project_tokens(
        self, request: pb.ListTokensRequest, ctx: Context
    ) -> pb.ListTokensResponse:
        return await self.list_tokens(request, ctx)

    async def create_project_token(
        self, request: pb.CreateTokenRequest, ctx: Context
    ) -> pb.CreateTokenResponse:
        return await self.create_token(request, ctx)

    async def delete_project_token(
        self, request: pb.DeleteTokenRequest, ctx: Context
    ) -> pb.DeleteTokenResponse:
        return await self.delete_token(request, ctx)


def project_message(project: Project) -> pb.Project:
    policy = project.cache_policy
    return pb.Project(
        project_id=project.id,
        organization_id=project.org_id,
        name=project.name,
        region_id=project.region_id,
        created_at=timestamp(project.created_at),
        cache_policy=pb.CachePolicy(
            keep_bytes=policy.keep_bytes, keep_days=policy.keep_days, keep_gb=policy.keep_gb
        ),
        hardware=pb.Hardware(int(project.hardware)),
    )


def _policy_input(policy: pb.CachePolicy | None) -> CachePolicyInput | None:
    if policy is None:
        return None
    return CachePolicyInput(
        keep_gb=policy.keep_gb,
        keep_days=policy.keep_days,
        keep_bytes=policy.keep_bytes if policy.has_field("keep_bytes") else None,
    )


def _token_message(token: Token) -> pb.ListTokensResponse.Token:
    return pb.ListTokensResponse.Token(
        token_id=token.id,
        description=token.description,
        created_at=timestamp(token.created_at),
        expires_at=optional_timestamp(token.expires_at),
        last_used_at=optional_timestamp(token.last_used_at),
    )


def _trust_policy_input(request: pb.AddTrustPolicyRequest) -> PolicyInput | None:
    """The oneof `provider` as the domain takes it; None when none is set."""
    chosen = request.provider
    if chosen is None:
        return None
    value = chosen.value
    if isinstance(value, pb.TrustPolicy.GitHub):
        return PolicyInput(
            CiProvider.GITHUB,
            value.repository_owner,
            value.repository,
            "github.repository_owner",
            "github.repository",
        )
    if isinstance(value, pb.TrustPolicy.CircleCI):
        return PolicyInput(
            CiProvider.CIRCLECI,
            value.organization_uuid,
            value.project_uuid,
            "circleci.organization_uuid",
            "circleci.project_uuid",
        )
    return PolicyInput(
        CiProvider.BUILDKITE,
        value.organization_slug,
        value.pipeline_slug,
        "buildkite.organization_slug",
        "buildkite.pipeline_slug",
    )


def _policy_message(policy: TrustPolicy) -> pb.TrustPolicy:
    match policy.provider:
        case CiProvider.GITHUB:
            github: Oneof[Literal["github"], pb.TrustPolicy.GitHub] = Oneof(
                "github",
                pb.TrustPolicy.GitHub(repository_owner=policy.owner, repository=policy.name),
            )
            return pb.TrustPolicy(trust_policy_id=policy.id, provider=github)
        case CiProvider.CIRCLECI:
            circleci: Oneof[Literal["circleci"], pb.TrustPolicy.CircleCI] = Oneof(
                "circleci",
                pb.TrustPolicy.CircleCI(organization_uuid=policy.owner, project_uuid=policy.name),
            )
            return pb.TrustPolicy(trust_policy_id=policy.id, provider=circleci)
        case CiProvider.BUILDKITE:
            buildkite: Oneof[Literal["buildkite"], pb.TrustPolicy.Buildkite] = Oneof(
                "buildkite",
                pb.TrustPolicy.Buildkite(organization_slug=policy.owner, pipeline_slug=policy.name),
            )
            return pb.TrustPolicy(trust_policy_id=policy.id, provider=buildkite)
