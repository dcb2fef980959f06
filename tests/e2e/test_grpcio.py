"""A grpcio client (the reference gRPC implementation, over h2c) against the real server process,
with the generated protobuf-py message classes and the Authorization header as metadata."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from protobuf import Oneof

from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.core.v1 import build_pb as core_build_pb
from depot_api.gen.depot.core.v1 import org_pb, project_pb
from tests.helpers import ServerProcess

from .conftest import Org
from .wire import ID, bearer, rpc_error, unary

SUCCESS = Oneof("success", build_pb.FinishBuildRequest.BuildSuccess())


def failure(message: str) -> Oneof[str, build_pb.FinishBuildRequest.BuildError]:
    return Oneof("error", build_pb.FinishBuildRequest.BuildError(error=message))


class Stubs:
    """grpcio callables for the methods these tests use."""

    def __init__(self, channel: grpc.Channel) -> None:
        projects = "/depot.core.v1.ProjectService"
        builds = "/depot.build.v1.BuildService"
        core_builds = "/depot.core.v1.BuildService"
        self.list_organizations = unary(
            channel,
            "/depot.core.v1.OrganizationService/ListOrganizations",
            org_pb.ListOrganizationsResponse,
        )
        self.create_project = unary(
            channel, f"{projects}/CreateProject", project_pb.CreateProjectResponse
        )
        self.get_project = unary(channel, f"{projects}/GetProject", project_pb.GetProjectResponse)
        self.list_projects = unary(
            channel, f"{projects}/ListProjects", project_pb.ListProjectsResponse
        )
        self.create_token = unary(
            channel, f"{projects}/CreateProjectToken", project_pb.CreateTokenResponse
        )
        self.create_build = unary(channel, f"{builds}/CreateBuild", build_pb.CreateBuildResponse)
        self.finish_build = unary(channel, f"{builds}/FinishBuild", build_pb.FinishBuildResponse)
        self.get_seed_build = unary(channel, f"{builds}/GetBuild", build_pb.Build)
        self.get_build = unary(channel, f"{core_builds}/GetBuild", core_build_pb.GetBuildResponse)
        self.list_builds = unary(
            channel, f"{core_builds}/ListBuilds", core_build_pb.ListBuildsResponse
        )


@pytest.fixture
def stubs(server: ServerProcess) -> Iterator[Stubs]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield Stubs(channel)


def new_project(stubs: Stubs, org: Org, name: str) -> project_pb.Project:
    response = stubs.create_project(
        project_pb.CreateProjectRequest(name=name, region_id="us-east-1"),
        metadata=bearer(org.token),
        timeout=10,
    )
    assert response.project is not None
    return response.project


def test_project_and_build_lifecycle(stubs: Stubs, org: Org) -> None:
    auth = bearer(org.token)
    before = datetime.now(UTC)
    project = new_project(stubs, org, "grpcio")
    assert ID.fullmatch(project.project_id)
    assert project.organization_id == org.id
    assert (project.name, project.region_id) == ("grpcio", "us-east-1")
    assert project.cache_policy == project_pb.CachePolicy(keep_days=14, keep_gb=50)
    assert project.created_at is not None
    created = project.created_at.to_datetime()
    assert abs(created - before) < timedelta(minutes=5)

    got = stubs.get_project(
        project_pb.GetProjectRequest(project_id=project.project_id), metadata=auth, timeout=10
    )
    assert got == project_pb.GetProjectResponse(project=project)
    listed = stubs.list_projects(project_pb.ListProjectsRequest(), metadata=auth, timeout=10)
    assert listed == project_pb.ListProjectsResponse(projects=[project])

    build = stubs.create_build(
        build_pb.CreateBuildRequest(project_id=project.project_id), metadata=auth, timeout=10
    )
    assert ID.fullmatch(build.build_id)
    assert build.build_token

    seed_view = stubs.get_seed_build(
        build_pb.GetBuildRequest(build_id=build.build_id), metadata=auth, timeout=10
    )
    assert seed_view.build_id == build.build_id
    assert seed_view.project_id == project.project_id
    assert seed_view.status == build_pb.BuildStatus.RUNNING
    assert not seed_view.has_field("build_duration_seconds")
    assert not seed_view.has_field("finished_at")

    finished = stubs.finish_build(
        build_pb.FinishBuildRequest(build_id=build.build_id, outcome=SUCCESS),
        metadata=bearer(build.build_token),
        timeout=10,
    )
    assert finished == build_pb.FinishBuildResponse()

    response = stubs.get_build(
        core_build_pb.GetBuildRequest(build_id=build.build_id), metadata=auth, timeout=10
    )
    real = response.build
    assert real is not None
    assert real.build_id == build.build_id
    assert real.status == core_build_pb.Build.Status.SUCCESS
    assert real.created_at == seed_view.created_at
    assert real.finished_at is not None
    assert real.created_at is not None
    assert real.finished_at.to_datetime() >= real.created_at.to_datetime()
    assert real.has_field("build_duration_seconds")
    elapsed = real.finished_at.to_datetime() - real.created_at.to_datetime()
    assert real.build_duration_seconds == round(elapsed.total_seconds())

    seed_view = stubs.get_seed_build(
        build_pb.GetBuildRequest(build_id=build.build_id), metadata=auth, timeout=10
    )
    assert seed_view.status == build_pb.BuildStatus.FINISHED
    assert seed_view.finished_at == real.finished_at
    assert seed_view.build_duration_seconds == pytest.approx(elapsed.total_seconds(), abs=1e-3)

    # A second build that fails, finished with the seed's `result` wrapper.
    failed = stubs.create_build(
        build_pb.CreateBuildRequest(project_id=project.project_id), metadata=auth, timeout=10
    )
    stubs.finish_build(
        build_pb.FinishBuildRequest(
            build_id=failed.build_id,
            result=build_pb.FinishBuildRequest.Result(outcome=failure("boom")),
        ),
        metadata=auth,
        timeout=10,
    )
    listed_builds = stubs.list_builds(
        core_build_pb.ListBuildsRequest(project_id=project.project_id), metadata=auth, timeout=10
    )
    assert [(b.build_id, b.status) for b in listed_builds.builds] == [
        (failed.build_id, core_build_pb.Build.Status.FAILED),
        (build.build_id, core_build_pb.Build.Status.SUCCESS),
    ]
    assert listed_builds.next_page_token == ""


def test_project_token_over_grpc(stubs: Stubs, org: Org) -> None:
    project = new_project(stubs, org, "grpcio-token")
    token = stubs.create_token(
        project_pb.CreateTokenRequest(project_id=project.project_id, description="grpc"),
        metadata=bearer(org.token),
        timeout=10,
    )
    assert ID.fullmatch(token.token_id)
    build = stubs.create_build(
        build_pb.CreateBuildRequest(project_id=project.project_id),
        metadata=bearer(token.secret),
        timeout=10,
    )
    assert ID.fullmatch(build.build_id)
    error = rpc_error(
        stubs.list_projects, project_pb.ListProjectsRequest(), metadata=bearer(token.secret)
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_error_codes(stubs: Stubs, org: Org) -> None:
    auth = bearer(org.token)

    # No token, a malformed token, a token that is not a Bearer credential.
    error = rpc_error(stubs.list_projects, project_pb.ListProjectsRequest())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "missing token: send the header 'Authorization: Bearer <token>'"
    error = rpc_error(
        stubs.list_projects, project_pb.ListProjectsRequest(), metadata=bearer("dpo_nonsense")
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = rpc_error(
        stubs.list_projects,
        project_pb.ListProjectsRequest(),
        metadata=[("authorization", f"Basic {org.token}")],
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    # Unknown IDs of the right shape.
    missing = "0000000000"
    error = rpc_error(
        stubs.get_project, project_pb.GetProjectRequest(project_id=missing), metadata=auth
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"project {missing} not found"
    error = rpc_error(
        stubs.get_build, core_build_pb.GetBuildRequest(build_id=missing), metadata=auth
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"build {missing} not found"

    # Bad input.
    error = rpc_error(
        stubs.get_project, project_pb.GetProjectRequest(project_id="Not An ID"), metadata=auth
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "project_id" in error.details()
    error = rpc_error(
        stubs.create_project,
        project_pb.CreateProjectRequest(name="x", region_id="antarctica-1"),
        metadata=auth,
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "region_id" in error.details()

    project = new_project(stubs, org, "grpcio-errors")
    error = rpc_error(
        stubs.create_project,
        project_pb.CreateProjectRequest(name="grpcio-errors", region_id="eu-central-1"),
        metadata=auth,
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS

    # FinishBuild: no outcome is invalid; the same outcome twice is fine; a different one
    # afterwards is a failed precondition, and the build keeps its first outcome.
    build = stubs.create_build(
        build_pb.CreateBuildRequest(project_id=project.project_id), metadata=auth, timeout=10
    )
    error = rpc_error(
        stubs.finish_build, build_pb.FinishBuildRequest(build_id=build.build_id), metadata=auth
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    finish = build_pb.FinishBuildRequest(build_id=build.build_id, outcome=SUCCESS)
    stubs.finish_build(finish, metadata=auth, timeout=10)
    stubs.finish_build(finish, metadata=auth, timeout=10)
    error = rpc_error(
        stubs.finish_build,
        build_pb.FinishBuildRequest(build_id=build.build_id, outcome=failure("late")),
        metadata=auth,
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert build.build_id in error.details()
    status = stubs.get_build(
        core_build_pb.GetBuildRequest(build_id=build.build_id), metadata=auth, timeout=10
    )
    assert status.build is not None
    assert status.build.status == core_build_pb.Build.Status.SUCCESS

    # A build token reaches its own build only.
    other = stubs.create_build(
        build_pb.CreateBuildRequest(project_id=project.project_id), metadata=auth, timeout=10
    )
    error = rpc_error(
        stubs.get_build,
        core_build_pb.GetBuildRequest(build_id=other.build_id),
        metadata=bearer(build.build_token),
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_initial_org_token_lists_its_organization(stubs: Stubs, server: ServerProcess) -> None:
    response = stubs.list_organizations(
        org_pb.ListOrganizationsRequest(), metadata=bearer(server.org_token), timeout=10
    )
    assert [o.name for o in response.organizations] == ["default"]
    assert ID.fullmatch(response.organizations[0].org_id)
