"""Every RPC × every kind of caller → the expected answer, from one table.

Rules under test (docs/api.md): no, malformed, unknown, revoked or expired tokens, and the
token of an ended build, are unauthenticated;
a resource outside the caller's organizations is not_found (its existence is not disclosed);
a token whose kind cannot do the operation, or a project or build token naming another
project or build it is bound to, is permission_denied.

The "ci" caller is a CI job's OIDC token (a JWT of a local issuer on 127.0.0.1) whose
repository project A's trust policy names: it may create builds in project A, and do nothing
else (permission_denied).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from protobuf import Oneof

from depot_api.config import Settings
from depot_api.gen.depot.build.v1 import build_connect, build_pb
from depot_api.gen.depot.buildkit.v1 import buildkit_connect, buildkit_pb
from depot_api.gen.depot.cli.v1 import build_connect as cli_build_connect
from depot_api.gen.depot.cli.v1 import build_pb as cli_build_pb
from depot_api.gen.depot.cli.v1 import push_connect, push_pb
from depot_api.gen.depot.cli.v1beta1 import login_connect, login_pb, projects_pb
from depot_api.gen.depot.cli.v1beta1 import projects_connect as cli_projects_connect
from depot_api.gen.depot.core.v1 import build_connect as core_build_connect
from depot_api.gen.depot.core.v1 import build_pb as core_build_pb
from depot_api.gen.depot.core.v1 import (
    org_connect,
    org_pb,
    project_connect,
    project_pb,
    usage_connect,
    usage_pb,
)
from depot_api.gen.depotapi.insights.v1 import insights_connect, insights_pb
from depot_api.gen.depotapi.machine.v1 import machine_connect, machine_pb
from depot_api.gen.moby.buildkit.v1 import control_pb

from ..conftest import Clients, InProcessAPI
from ..oidc_issuer import LocalIssuer, local_issuer
from ..world import TRUSTED_REPOSITORY, WORLD_STEP, World, WorldCache

UNAUTHENTICATED_CALLERS = ("none", "malformed", "unknown", "revoked", "expired", "ended_build")
CALLERS = (
    *UNAUTHENTICATED_CALLERS,
    *("org", "member", "other_org", "outsider", "project", "build", "machine", "ci"),
)

Call = Callable[[Clients, World, dict[str, str]], Awaitable[Any]]


@dataclass
class Row:
    rpc: str  # "package.Service/Method"
    call: Call
    expected: dict[str, Code | None]  # None = succeeds
    variant: str = ""


def row(
    rpc: str,
    call: Call,
    *,
    ok: tuple[str, ...],
    denied: tuple[str, ...] = (),
    not_found: tuple[str, ...] = (),
    exhausted: tuple[str, ...] = (),
    unimplemented: tuple[str, ...] = (),
    variant: str = "",
) -> Row:
    """Expected answers; a machine token is refused everywhere but the machine service, a CI
    job's token everywhere but CreateBuild."""
    expected: dict[str, Code | None] = dict.fromkeys(UNAUTHENTICATED_CALLERS, Code.UNAUTHENTICATED)
    expected["machine"] = Code.PERMISSION_DENIED
    expected["ci"] = Code.PERMISSION_DENIED
    expected.update(dict.fromkeys(ok))
    expected.update(dict.fromkeys(exhausted, Code.RESOURCE_EXHAUSTED))
    expected.update(dict.fromkeys(unimplemented, Code.UNIMPLEMENTED))
    expected.update(dict.fromkeys(denied, Code.PERMISSION_DENIED))
    expected.update(dict.fromkeys(not_found, Code.NOT_FOUND))
    assert set(expected) == set(CALLERS), f"{rpc}: every caller needs an expectation"
    return Row(rpc, call, expected, variant)


MANAGERS = ("org", "member")
OUTSIDERS = ("other_org", "outsider")
NARROW = ("project", "build")
P = "depot.core.v1.ProjectService/"
B = "depot.build.v1.BuildService/"
CB = "depot.core.v1.BuildService/"


def managed(rpc: str, call: Call, variant: str = "") -> Row:
    """Project management of org A's resources."""
    return row(rpc, call, ok=MANAGERS, denied=NARROW, not_found=OUTSIDERS, variant=variant)


TABLE = [
    row(
        P + "ListProjects",
        lambda c, w, h: c.projects.list_projects(project_pb.ListProjectsRequest(), headers=h),
        ok=(*MANAGERS, *OUTSIDERS),
        denied=NARROW,
    ),
    managed(
        P + "GetProject",
        lambda c, w, h: c.projects.get_project(
            project_pb.GetProjectRequest(project_id=w.project_a), headers=h
        ),
    ),
    managed(
        P + "CreateProject",
        lambda c, w, h: c.projects.create_project(
            project_pb.CreateProjectRequest(
                name="new", region_id="us-east-1", organization_id=w.org_a
            ),
            headers=h,
        ),
    ),
    managed(
        P + "UpdateProject",
        lambda c, w, h: c.projects.update_project(
            project_pb.UpdateProjectRequest(project_id=w.project_a, name="renamed"), headers=h
        ),
    ),
    managed(
        P + "DeleteProject",
        lambda c, w, h: c.projects.delete_project(
            project_pb.DeleteProjectRequest(project_id=w.project_a2), headers=h
        ),
    ),
    managed(
        P + "ResetProject",
        lambda c, w, h: c.projects.reset_project(
            project_pb.ResetProjectRequest(project_id=w.project_a), headers=h
        ),
    ),
    managed(
        P + "ResetProjectCache",
        lambda c, w, h: c.projects.reset_project_cache(
            project_pb.ResetProjectRequest(project_id=w.project_a), headers=h
        ),
    ),
    managed(
        P + "ListTokens",
        lambda c, w, h: c.projects.list_tokens(
            project_pb.ListTokensRequest(project_id=w.project_a), headers=h
        ),
    ),
    managed(
        P + "ListProjectTokens",
        lambda c, w, h: c.projects.list_project_tokens(
            project_pb.ListTokensRequest(project_id=w.project_a), headers=h
        ),
    ),
    managed(
        P + "CreateToken",
        lambda c, w, h: c.projects.create_token(
            project_pb.CreateTokenRequest(project_id=w.project_a, description="x"), headers=h
        ),
    ),
    managed(
        P + "CreateProjectToken",
        lambda c, w, h: c.projects.create_project_token(
            project_pb.CreateTokenRequest(project_id=w.project_a, description="x"), headers=h
        ),
    ),
    managed(
        P + "UpdateToken",
        lambda c, w, h: c.projects.update_token(
            project_pb.UpdateTokenRequest(token_id=w.project_token_a_id, description="y"),
            headers=h,
        ),
    ),
    managed(
        P + "DeleteToken",
        lambda c, w, h: c.projects.delete_token(
            project_pb.DeleteTokenRequest(token_id=w.project_token_a_id), headers=h
        ),
    ),
    managed(
        P + "DeleteProjectToken",
        lambda c, w, h: c.projects.delete_project_token(
            project_pb.DeleteTokenRequest(token_id=w.project_token_a_id, project_id=w.project_a),
            headers=h,
        ),
    ),
    managed(
        P + "ListTrustPolicies",
        lambda c, w, h: c.projects.list_trust_policies(
            project_pb.ListTrustPoliciesRequest(project_id=w.project_a), headers=h
        ),
    ),
    managed(
        P + "AddTrustPolicy",
        lambda c, w, h: c.projects.add_trust_policy(
            project_pb.AddTrustPolicyRequest(
                project_id=w.project_a,
                provider=Oneof(
                    "buildkite",
                    project_pb.TrustPolicy.Buildkite(organization_slug="o", pipeline_slug="p"),
                ),
            ),
            headers=h,
        ),
    ),
    managed(
        P + "RemoveTrustPolicy",
        lambda c, w, h: c.projects.remove_trust_policy(
            project_pb.RemoveTrustPolicyRequest(
                project_id=w.project_a, trust_policy_id=w.trust_policy_a_id
            ),
            headers=h,
        ),
    ),
    row(
        B + "CreateBuild",
        lambda c, w, h: c.builds.create_build(
            build_pb.CreateBuildRequest(project_id=w.project_a), headers=h
        ),
        ok=(*MANAGERS, "project", "ci"),
        denied=("build",),
        not_found=OUTSIDERS,
    ),
    row(
        B + "CreateBuild",
        lambda c, w, h: c.builds.create_build(
            build_pb.CreateBuildRequest(project_id=w.project_a2), headers=h
        ),
        ok=MANAGERS,
        denied=NARROW,
        not_found=OUTSIDERS,
        variant="another project",
    ),
    row(
        B + "FinishBuild",
        lambda c, w, h: c.builds.finish_build(
            build_pb.FinishBuildRequest(build_id=w.build_a, outcome=_success()),
            headers=h,
        ),
        ok=(*MANAGERS, *NARROW),
        not_found=OUTSIDERS,
    ),
    row(
        B + "FinishBuild",
        lambda c, w, h: c.builds.finish_build(
            build_pb.FinishBuildRequest(build_id=w.build_a2, outcome=_success()), headers=h
        ),
        ok=MANAGERS,
        denied=("build",),
        not_found=(*OUTSIDERS, "project"),
        variant="another build",
    ),
    row(
        B + "GetBuild",
        lambda c, w, h: c.builds.get_build(build_pb.GetBuildRequest(build_id=w.build_a), headers=h),
        ok=(*MANAGERS, *NARROW),
        not_found=OUTSIDERS,
    ),
    row(
        B + "GetBuild",
        lambda c, w, h: c.builds.get_build(
            build_pb.GetBuildRequest(build_id=w.build_a2), headers=h
        ),
        ok=MANAGERS,
        denied=("build",),
        not_found=(*OUTSIDERS, "project"),
        variant="another build",
    ),
    row(
        B + "ListBuilds",
        lambda c, w, h: c.builds.list_builds(
            build_pb.ListBuildsRequest(project_id=w.project_a), headers=h
        ),
        ok=(*MANAGERS, "project"),
        denied=("build",),
        not_found=OUTSIDERS,
    ),
    row(
        B + "ListBuilds",
        lambda c, w, h: c.builds.list_builds(
            build_pb.ListBuildsRequest(project_id=w.project_a2), headers=h
        ),
        ok=MANAGERS,
        denied=NARROW,
        not_found=OUTSIDERS,
        variant="another project",
    ),
    row(
        CB + "GetBuild",
        lambda c, w, h: c.core_builds.get_build(
            core_build_pb.GetBuildRequest(build_id=w.build_a), headers=h
        ),
        ok=(*MANAGERS, *NARROW),
        not_found=OUTSIDERS,
    ),
    row(
        CB + "ShareBuild",
        lambda c, w, h: c.core_builds.share_build(
            core_build_pb.ShareBuildRequest(build_id=w.build_a), headers=h
        ),
        ok=(*MANAGERS, *NARROW),
        not_found=OUTSIDERS,
    ),
    row(
        CB + "StopSharingBuild",
        lambda c, w, h: c.core_builds.stop_sharing_build(
            core_build_pb.StopSharingBuildRequest(build_id=w.build_a), headers=h
        ),
        ok=(*MANAGERS, *NARROW),
        not_found=OUTSIDERS,
    ),
    row(
        CB + "ListBuilds",
        lambda c, w, h: c.core_builds.list_builds(
            core_build_pb.ListBuildsRequest(project_id=w.project_a), headers=h
        ),
        ok=(*MANAGERS, "project"),
        denied=("build",),
        not_found=OUTSIDERS,
    ),
    row(
        "depot.core.v1.OrganizationService/ListOrganizations",
        lambda c, w, h: c.organizations.list_organizations(
            org_pb.ListOrganizationsRequest(), headers=h
        ),
        ok=(*MANAGERS, *OUTSIDERS),
        denied=NARROW,
    ),
]


def machine_only(rpc: str, call: Call) -> Row:
    narrow_and_people = ("org", "member", "other_org", "outsider", "project", "build", "ci")
    r = row(rpc, call, ok=(), denied=narrow_and_people)
    r.expected["machine"] = None
    return r


async def _drain(stream: AsyncIterator[Any]) -> list[Any]:
    return [message async for message in stream]


async def _one(message: Any) -> AsyncIterator[Any]:
    yield message


K = "depot.buildkit.v1.BuildKitService/"
M = "depotapi.machine.v1.MachineService/"
AMD64 = buildkit_pb.Platform.AMD64

TABLE += [
    # No machines exist here and the wait is short: getting past authorization shows as
    # resource_exhausted.
    row(
        K + "GetEndpoint",
        lambda c, w, h: _drain(
            c.buildkit.get_endpoint(
                buildkit_pb.GetEndpointRequest(build_id=w.build_a, platform=AMD64), headers=h
            )
        ),
        ok=(),
        exhausted=(*MANAGERS, *NARROW),
        not_found=OUTSIDERS,
    ),
    row(
        K + "GetEndpoint",
        lambda c, w, h: _drain(
            c.buildkit.get_endpoint(
                buildkit_pb.GetEndpointRequest(build_id=w.build_a2, platform=AMD64), headers=h
            )
        ),
        ok=(),
        exhausted=MANAGERS,
        denied=("build",),
        not_found=(*OUTSIDERS, "project"),
        variant="another build",
    ),
    row(
        K + "ReportHealth",
        lambda c, w, h: c.buildkit.report_health(
            _one(buildkit_pb.ReportHealthRequest(build_id=w.build_a, platform=AMD64)), headers=h
        ),
        ok=(*MANAGERS, *NARROW),
        not_found=OUTSIDERS,
    ),
    row(
        K + "ReleaseEndpoint",
        lambda c, w, h: c.buildkit.release_endpoint(
            buildkit_pb.ReleaseEndpointRequest(build_id=w.build_a, platform=AMD64), headers=h
        ),
        ok=(*MANAGERS, *NARROW),
        not_found=OUTSIDERS,
    ),
    machine_only(
        M + "Register",
        lambda c, w, h: c.machines.register(
            machine_pb.RegisterRequest(
                platform=machine_pb.Platform.AMD64, endpoint="127.0.0.1:2345", capacity=1
            ),
            headers=h,
        ),
    ),
    machine_only(
        M + "Heartbeat",
        lambda c, w, h: c.machines.heartbeat(
            machine_pb.HeartbeatRequest(machine_id=w.machine_id), headers=h
        ),
    ),
    # The world's machine serves no project: getting past authorization shows as a refusal.
    machine_only(
        M + "AdmitConnection",
        lambda c, w, h: c.machines.admit_connection(
            machine_pb.AdmitConnectionRequest(
                machine_id=w.machine_id, binding_id="0123456789", build_id=w.build_a
            ),
            headers=h,
        ),
    ),
    machine_only(
        M + "ReportConnections",
        lambda c, w, h: c.machines.report_connections(
            machine_pb.ReportConnectionsRequest(machine_id=w.machine_id), headers=h
        ),
    ),
    machine_only(
        M + "ReportBuildStatus",
        lambda c, w, h: c.machines.report_build_status(
            machine_pb.ReportBuildStatusRequest(machine_id=w.machine_id), headers=h
        ),
    ),
]


CLI = "depot.cli.v1.BuildService/"
CLI_PROJECTS = "depot.cli.v1beta1.ProjectsService/"
CLI_PUSH = "depot.cli.v1.PushService/"
CLI_LOGIN = "depot.cli.v1beta1.LoginService/"
CLI_AMD64 = cli_build_pb.BuilderPlatform.AMD64
PEOPLE = (*MANAGERS, *OUTSIDERS, *NARROW)
# Refused by the guard before the RPC's own answer: a CI job's token only creates builds.
CI_REFUSED = {"ci": Code.PERMISSION_DENIED}


def _status_frame(build_id: str) -> cli_build_pb.ReportStatusStreamRequest:
    return cli_build_pb.ReportStatusStreamRequest(
        build_id=build_id,
        statuses=[control_pb.StatusResponse(vertexes=[control_pb.Vertex(digest="sha256:1")])],
    )


def build_scoped(
    rpc: str, call: Callable[[Clients, str, dict[str, str]], Awaitable[Any]]
) -> list[Row]:
    """A build's own callers may: on build A, and (variant) on build A2 of another project."""
    return [
        row(
            rpc,
            lambda c, w, h: call(c, w.build_a, h),
            ok=(*MANAGERS, *NARROW),
            not_found=OUTSIDERS,
        ),
        row(
            rpc,
            lambda c, w, h: call(c, w.build_a2, h),
            ok=MANAGERS,
            denied=("build",),
            not_found=(*OUTSIDERS, "project"),
            variant="another build",
        ),
    ]


U = "depot.core.v1.UsageService/"
INSIGHTS = "depotapi.insights.v1.BuildInsightsService/"


def unserved(rpc: str, call: Call) -> Row:
    r = row(rpc, call, ok=(), unimplemented=PEOPLE)
    r.expected.update(CI_REFUSED)
    return r


def unserved_without_token(rpc: str, call: Call) -> Row:
    """Login takes no token: every caller, with or without one, learns it is not served."""
    return Row(rpc, call, dict.fromkeys(CALLERS, Code.UNIMPLEMENTED))


TABLE += [
    row(
        CLI + "CreateBuild",
        lambda c, w, h: c.cli_builds.create_build(
            cli_build_pb.CreateBuildRequest(project_id=w.project_a), headers=h
        ),
        ok=(*MANAGERS, "project", "ci"),
        denied=("build",),
        not_found=OUTSIDERS,
    ),
    row(
        CLI + "CreateBuild",
        lambda c, w, h: c.cli_builds.create_build(
            cli_build_pb.CreateBuildRequest(project_id=w.project_a2), headers=h
        ),
        ok=MANAGERS,
        denied=NARROW,
        not_found=OUTSIDERS,
        variant="another project",
    ),
    *build_scoped(
        CLI + "GetBuild",
        lambda c, b, h: c.cli_builds.get_build(cli_build_pb.GetBuildRequest(build_id=b), headers=h),
    ),
    *build_scoped(
        CLI + "FinishBuild",
        lambda c, b, h: c.cli_builds.finish_build(
            cli_build_pb.FinishBuildRequest(
                build_id=b,
                result=Oneof("canceled", cli_build_pb.FinishBuildRequest.BuildCanceled()),
            ),
            headers=h,
        ),
    ),
    # No machine is ready here: getting past authorization shows as `pending`.
    *build_scoped(
        CLI + "GetBuildKitConnection",
        lambda c, b, h: c.cli_builds.get_build_kit_connection(
            cli_build_pb.GetBuildKitConnectionRequest(build_id=b, platform=CLI_AMD64), headers=h
        ),
    ),
    *build_scoped(
        CLI + "ReportBuildHealth",
        lambda c, b, h: c.cli_builds.report_build_health(
            cli_build_pb.ReportBuildHealthRequest(build_id=b, platform=CLI_AMD64), headers=h
        ),
    ),
    *build_scoped(
        CLI + "ReportStatusStream",
        lambda c, b, h: c.cli_builds.report_status_stream(_one(_status_frame(b)), headers=h),
    ),
    *build_scoped(
        CLI + "ReportStatus",
        lambda c, b, h: c.cli_builds.report_status(
            cli_build_pb.ReportStatusRequest(build_id=b), headers=h
        ),
    ),
    *build_scoped(
        CLI + "ReportTimings",
        lambda c, b, h: c.cli_builds.report_timings(
            cli_build_pb.ReportTimingsRequest(build_id=b), headers=h
        ),
    ),
    *build_scoped(
        CLI + "ReportBuildContext",
        lambda c, b, h: c.cli_builds.report_build_context(
            cli_build_pb.ReportBuildContextRequest(build_id=b), headers=h
        ),
    ),
    row(
        CLI + "ListBuilds",
        lambda c, w, h: c.cli_builds.list_builds(
            cli_build_pb.ListBuildsRequest(project_id=w.project_a), headers=h
        ),
        ok=(*MANAGERS, "project"),
        denied=("build",),
        not_found=OUTSIDERS,
    ),
    unserved(
        CLI + "GetPullInfo",
        lambda c, w, h: c.cli_builds.get_pull_info(
            cli_build_pb.GetPullInfoRequest(build_id=w.build_a), headers=h
        ),
    ),
    unserved(
        CLI + "GetPullToken",
        lambda c, w, h: c.cli_builds.get_pull_token(
            cli_build_pb.GetPullTokenRequest(project_id=w.project_a), headers=h
        ),
    ),
    unserved(
        CLI_PUSH + "StartPush",
        lambda c, w, h: c.cli_push.start_push(
            push_pb.StartPushRequest(tag="t", build_id=w.build_a), headers=h
        ),
    ),
    unserved(
        CLI_PUSH + "FinishPush",
        lambda c, w, h: c.cli_push.finish_push(
            push_pb.FinishPushRequest(push_id="p", build_id=w.build_a), headers=h
        ),
    ),
    row(
        CLI_PROJECTS + "ListProjects",
        lambda c, w, h: c.cli_projects.list_projects(projects_pb.ListProjectsRequest(), headers=h),
        ok=(*MANAGERS, *OUTSIDERS, "project"),
        denied=("build",),
    ),
    managed(
        CLI_PROJECTS + "ResetProjectCache",
        lambda c, w, h: c.cli_projects.reset_project_cache(
            projects_pb.ResetProjectCacheRequest(project_id=w.project_a), headers=h
        ),
    ),
    *build_scoped(
        B + "GetBuildSteps",
        lambda c, b, h: c.builds.get_build_steps(
            build_pb.GetBuildStepsRequest(build_id=b), headers=h
        ),
    ),
    *build_scoped(
        B + "GetBuildStepLogs",
        lambda c, b, h: c.builds.get_build_step_logs(
            build_pb.GetBuildStepLogsRequest(build_id=b, build_step_digest=WORLD_STEP), headers=h
        ),
    ),
    *build_scoped(
        INSIGHTS + "UploadBuildStatus",
        lambda c, b, h: c.insights.upload_build_status(
            insights_pb.UploadBuildStatusRequest(
                build_id=b,
                status_responses=[
                    control_pb.StatusResponse(
                        vertexes=[control_pb.Vertex(digest=WORLD_STEP, name="[1/1] RUN echo hi")]
                    ).to_binary()
                ],
            ),
            headers=h,
        ),
    ),
    row(
        U + "GetUsage",
        lambda c, w, h: c.usage.get_usage(usage_pb.GetUsageRequest(), headers=h),
        ok=(*MANAGERS, *OUTSIDERS),
        denied=NARROW,
    ),
    row(
        U + "ListProjectUsage",
        lambda c, w, h: c.usage.list_project_usage(usage_pb.ListProjectUsageRequest(), headers=h),
        ok=(*MANAGERS, *OUTSIDERS),
        denied=NARROW,
    ),
    managed(
        U + "GetProjectUsage",
        lambda c, w, h: c.usage.get_project_usage(
            usage_pb.GetProjectUsageRequest(project_id=w.project_a), headers=h
        ),
    ),
    unserved_without_token(
        CLI_LOGIN + "StartLogin",
        lambda c, w, h: c.cli_login.start_login(login_pb.StartLoginRequest(), headers=h),
    ),
    unserved_without_token(
        CLI_LOGIN + "FinishLogin",
        lambda c, w, h: _drain(
            c.cli_login.finish_login(login_pb.FinishLoginRequest(id="x"), headers=h)
        ),
    ),
]


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    with local_issuer() as running:
        yield running


@pytest.fixture
def settings(tmp_path: Path, database_url: str, issuer: LocalIssuer) -> Settings:
    # GetEndpoint gives up quickly here: no machine becomes ready. (The world's machine never
    # heartbeats; the builds wait for it all the same.)
    return Settings(
        data_dir=tmp_path / "data",
        database=database_url,
        wait_for_machines=True,
        acquire_timeout=timedelta(seconds=0.2),
        pending_interval=timedelta(seconds=0.1),
        # The "ended_build" caller's build has ended: with no grace, its token is dead.
        build_token_grace=timedelta(0),
        oidc_issuers=(("github", issuer.url),),
    )


def _success() -> Any:
    from protobuf import Oneof

    return Oneof("success", build_pb.FinishBuildRequest.BuildSuccess())


_worlds = WorldCache()

CASES = [pytest.param(r, id=f"{r.rpc}{'[' + r.variant + ']' if r.variant else ''}") for r in TABLE]


@pytest.mark.parametrize("entry", CASES)
async def test_authorization(api: InProcessAPI, issuer: LocalIssuer, entry: Row) -> None:
    """Every caller in turn against the same world. A call that succeeded may have changed
    the world, so it is restored before the next caller; a refused call must change nothing,
    and the next callers' answers are made in the world it left."""
    world = await _worlds.world(api)
    world.tokens["ci"] = issuer.github_token(*TRUSTED_REPOSITORY)
    clients = api.clients("connect-proto")
    wrong: list[str] = []
    for caller in CALLERS:
        expected = entry.expected[caller]
        try:
            response = await entry.call(clients, world, world.headers(caller))
        except ConnectError as e:
            if e.code != expected:
                wrong.append(f"{caller}: expected {_name(expected)}, got {e.code.name}: {e}")
            continue
        if expected is not None:
            wrong.append(f"{caller}: expected {expected.name}, but the call succeeded")
        _assert_no_foreign_data(response, world, caller)
        world = await _worlds.world(api)
        world.tokens["ci"] = issuer.github_token(*TRUSTED_REPOSITORY)
    assert not wrong, "\n".join(wrong)


def _name(code: Code | None) -> str:
    return "success" if code is None else code.name


def _assert_no_foreign_data(response: Any, world: World, caller: str) -> None:
    """Listings that succeed for callers outside org A must show nothing of org A."""
    if caller in OUTSIDERS:
        text = str(response)
        for foreign in (world.org_a, world.project_a, world.project_a2, world.build_a):
            assert foreign not in text


def test_every_rpc_has_rows() -> None:
    served = {
        f"{service.desc().type_name}/{method.name}"
        for service in (
            project_connect.ProjectService,
            build_connect.BuildService,
            core_build_connect.BuildService,
            org_connect.OrganizationService,
            buildkit_connect.BuildKitService,
            machine_connect.MachineService,
            cli_build_connect.BuildService,
            cli_projects_connect.ProjectsService,
            push_connect.PushService,
            login_connect.LoginService,
            usage_connect.UsageService,
            insights_connect.BuildInsightsService,
        )
        for method in service.desc().methods
    }
    assert served == {r.rpc for r in TABLE}
