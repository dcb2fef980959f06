"""Every RPC over Connect JSON, Connect binary, gRPC and gRPC-Web, in process."""

from __future__ import annotations

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from protobuf import Oneof

from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.core.v1 import build_pb as core_build_pb
from depot_api.gen.depot.core.v1 import org_pb, project_pb

from ..conftest import PROTOCOLS, InProcessAPI, bearer


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_every_rpc(api: InProcessAPI, protocol: str) -> None:
    c = api.clients(protocol)
    h = bearer(api.org_token)

    orgs = await c.organizations.list_organizations(org_pb.ListOrganizationsRequest(), headers=h)
    assert [o.name for o in orgs.organizations] == ["default"]

    created = await c.projects.create_project(
        project_pb.CreateProjectRequest(
            name="app",
            region_id="eu-central-1",
            cache_policy=project_pb.CachePolicy(keep_bytes=3 * 2**30 + 1, keep_days=7),
            hardware=project_pb.Hardware.HARDWARE_8X16,
        ),
        headers=h,
    )
    project = created.project
    assert (project.name, project.region_id, project.hardware) == (
        "app",
        "eu-central-1",
        project_pb.Hardware.HARDWARE_8X16,
    )
    assert project.cache_policy.keep_gb == 4  # rounded up from keep_bytes
    assert project.cache_policy.keep_bytes == 3 * 2**30 + 1
    assert project.organization_id == orgs.organizations[0].org_id
    pid = project.project_id

    got = await c.projects.get_project(project_pb.GetProjectRequest(project_id=pid), headers=h)
    assert got.project == project

    updated = await c.projects.update_project(
        project_pb.UpdateProjectRequest(
            project_id=pid, name="app2", cache_policy=project_pb.CachePolicy(keep_gb=9)
        ),
        headers=h,
    )
    assert (updated.project.name, updated.project.region_id) == ("app2", "eu-central-1")
    assert (updated.project.cache_policy.keep_gb, updated.project.cache_policy.keep_days) == (9, 0)

    listed = await c.projects.list_projects(project_pb.ListProjectsRequest(), headers=h)
    assert [p.project_id for p in listed.projects] == [pid]

    await c.projects.reset_project(project_pb.ResetProjectRequest(project_id=pid), headers=h)
    await c.projects.reset_project_cache(project_pb.ResetProjectRequest(project_id=pid), headers=h)

    token = await c.projects.create_token(
        project_pb.CreateTokenRequest(project_id=pid, description="ci"), headers=h
    )
    seed_token = await c.projects.create_project_token(
        project_pb.CreateTokenRequest(project_id=pid, description="seed"), headers=h
    )
    await c.projects.update_token(
        project_pb.UpdateTokenRequest(token_id=token.token_id, description="ci-2"), headers=h
    )
    tokens = await c.projects.list_tokens(project_pb.ListTokensRequest(project_id=pid), headers=h)
    assert [(t.token_id, t.description) for t in tokens.tokens] == [
        (token.token_id, "ci-2"),
        (seed_token.token_id, "seed"),
    ]

    # A project token drives builds of its project.
    build = await c.builds.create_build(
        build_pb.CreateBuildRequest(project_id=pid), headers=bearer(token.secret)
    )
    seed_view = await c.builds.get_build(
        build_pb.GetBuildRequest(build_id=build.build_id), headers=h
    )
    assert seed_view.status == build_pb.BuildStatus.RUNNING
    assert seed_view.project_id == pid
    assert not seed_view.has_field("build_duration_seconds")

    # The build token finishes its own build.
    await c.builds.finish_build(
        build_pb.FinishBuildRequest(
            build_id=build.build_id,
            outcome=Oneof("error", build_pb.FinishBuildRequest.BuildError(error="boom")),
        ),
        headers=bearer(build.build_token),
    )
    real_view = await c.core_builds.get_build(
        core_build_pb.GetBuildRequest(build_id=build.build_id), headers=h
    )
    assert real_view.build.status == core_build_pb.Build.Status.FAILED
    assert real_view.build.has_field("finished_at")
    assert real_view.build.build_duration_seconds >= 0

    builds = await c.builds.list_builds(build_pb.ListBuildsRequest(project_id=pid), headers=h)
    assert [(b.build_id, b.status) for b in builds.builds] == [
        (build.build_id, build_pb.BuildStatus.FAILED)
    ]
    core_builds = await c.core_builds.list_builds(
        core_build_pb.ListBuildsRequest(project_id=pid), headers=h
    )
    assert [b.build_id for b in core_builds.builds] == [build.build_id]
    assert core_builds.next_page_token == ""

    await c.projects.delete_token(project_pb.DeleteTokenRequest(token_id=token.token_id), headers=h)
    await c.projects.delete_project_token(
        project_pb.DeleteTokenRequest(token_id=seed_token.token_id, project_id=pid), headers=h
    )
    left = await c.projects.list_project_tokens(
        project_pb.ListTokensRequest(project_id=pid), headers=h
    )
    assert list(left.tokens) == []

    await c.projects.delete_project(project_pb.DeleteProjectRequest(project_id=pid), headers=h)
    with pytest.raises(ConnectError) as gone:
        await c.projects.get_project(project_pb.GetProjectRequest(project_id=pid), headers=h)
    assert gone.value.code == Code.NOT_FOUND
    with pytest.raises(ConnectError) as build_gone:
        await c.core_builds.get_build(
            core_build_pb.GetBuildRequest(build_id=build.build_id), headers=h
        )
    assert build_gone.value.code == Code.NOT_FOUND


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_errors_carry_code_and_message(api: InProcessAPI, protocol: str) -> None:
    c = api.clients(protocol)
    with pytest.raises(ConnectError) as raised:
        await c.projects.get_project(
            project_pb.GetProjectRequest(project_id="0123456789"), headers=bearer(api.org_token)
        )
    assert raised.value.code == Code.NOT_FOUND
    assert raised.value.message == "project 0123456789 not found"
