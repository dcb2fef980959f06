"""The depot CLI's services (depot.cli.v1, depot.cli.v1beta1) in process, on every protocol."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from protobuf import Oneof

from depot_api.config import Settings
from depot_api.gen.depot.cli.v1 import build_pb as cli
from depot_api.gen.depot.cli.v1 import push_pb
from depot_api.gen.depot.cli.v1beta1 import login_pb, projects_pb
from depot_api.gen.depot.core.v1 import org_pb, project_pb
from depot_api.gen.moby.buildkit.v1 import control_pb

from ..conftest import PROTOCOLS, Clients, InProcessAPI, bearer

AMD64 = cli.BuilderPlatform.AMD64
URL_TEMPLATE = "https://ci.example.com/depot/{project_id}/{build_id}"


ACQUIRE_TIMEOUT = timedelta(seconds=0.5)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database=database_url,
        build_url=URL_TEMPLATE,
        acquire_timeout=ACQUIRE_TIMEOUT,
        # No machine is registered here; polls wait for one anyway, to the acquire timeout.
        wait_for_machines=True,
    )


async def _project(c: Clients, h: dict[str, str], name: str = "app") -> str:
    created = await c.projects.create_project(
        project_pb.CreateProjectRequest(name=name, region_id="us-east-1"), headers=h
    )
    return created.project.project_id


def _frame(build_id: str, vertex: str) -> cli.ReportStatusStreamRequest:
    return cli.ReportStatusStreamRequest(
        build_id=build_id,
        statuses=[control_pb.StatusResponse(vertexes=[control_pb.Vertex(name=vertex)])],
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_build_as_the_cli_drives_it(api: InProcessAPI, protocol: str) -> None:
    c = api.clients(protocol)
    h = bearer(api.org_token)
    project_id = await _project(c, h)

    created = await c.cli_builds.create_build(
        cli.CreateBuildRequest(
            project_id=project_id, options=[cli.BuildOptions(command=cli.Command.BUILD)]
        ),
        headers=h,
    )
    assert created.project_id == project_id
    assert created.build_url == f"https://ci.example.com/depot/{project_id}/{created.build_id}"
    assert created.build_token.startswith("dpb_")
    b = bearer(created.build_token)

    got = await c.cli_builds.get_build(cli.GetBuildRequest(build_id=created.build_id), headers=b)
    assert (got.build_id, got.project_id, got.build_url) == (
        created.build_id,
        project_id,
        created.build_url,
    )

    health = await c.cli_builds.report_build_health(
        cli.ReportBuildHealthRequest(build_id=created.build_id, platform=AMD64), headers=b
    )
    assert not health.has_field("cancels_at")  # running: keep going

    # No machine is registered: the answer is `pending`, with a wait (never 0: the CLI would
    # ask again at once).
    connection = await c.cli_builds.get_build_kit_connection(
        cli.GetBuildKitConnectionRequest(build_id=created.build_id, platform=AMD64), headers=b
    )
    assert connection.connection is not None
    assert connection.connection.field == "pending"
    assert isinstance(
        connection.connection.value, cli.GetBuildKitConnectionResponse.PendingConnection
    )
    assert connection.connection.value.wait_ms == 1000

    async def frames():  # type: ignore[no-untyped-def]
        yield _frame(created.build_id, "[depot] launching amd64 machine")
        yield _frame(created.build_id, "[depot] connecting to amd64 machine")

    await c.cli_builds.report_status_stream(frames(), headers=b)
    await c.cli_builds.report_status(
        cli.ReportStatusRequest(
            build_id=created.build_id,
            statuses=[control_pb.StatusResponse(vertexes=[control_pb.Vertex(name="legacy")])],
        ),
        headers=b,
    )
    kept = await api.app.domain.store.builds.list_status_reports(created.build_id)
    assert [r.report for r in kept[:2]] == [
        _frame(created.build_id, "[depot] launching amd64 machine").to_binary(),
        _frame(created.build_id, "[depot] connecting to amd64 machine").to_binary(),
    ]
    assert len(kept) == 3

    await c.cli_builds.report_timings(
        cli.ReportTimingsRequest(build_id=created.build_id), headers=b
    )
    await c.cli_builds.report_build_context(
        cli.ReportBuildContextRequest(build_id=created.build_id), headers=b
    )

    await c.cli_builds.finish_build(
        cli.FinishBuildRequest(
            build_id=created.build_id,
            result=Oneof("canceled", cli.FinishBuildRequest.BuildCanceled()),
        ),
        headers=b,
    )
    # Pings go on after the end: they are answered, with the moment the build ended.
    health = await c.cli_builds.report_build_health(
        cli.ReportBuildHealthRequest(build_id=created.build_id, platform=AMD64), headers=b
    )
    assert health.has_field("cancels_at")

    listed = await c.cli_builds.list_builds(cli.ListBuildsRequest(project_id=project_id), headers=h)
    assert [(x.id, x.status) for x in listed.builds] == [
        (created.build_id, cli.BuildStatus.CANCELED)
    ]
    assert listed.builds[0].finished_at.to_datetime() == health.cancels_at.to_datetime()

    projects = await c.cli_projects.list_projects(projects_pb.ListProjectsRequest(), headers=h)
    orgs = await c.organizations.list_organizations(org_pb.ListOrganizationsRequest(), headers=h)
    org = orgs.organizations[0]
    assert [(p.id, p.name, p.org_id, p.org_name) for p in projects.projects] == [
        (project_id, "app", org.org_id, org.name)
    ]

    reset = await c.cli_projects.reset_project_cache(
        projects_pb.ResetProjectCacheRequest(project_id=project_id), headers=h
    )
    assert (reset.name, reset.org_name) == ("app", org.name)


async def test_list_builds_maps_every_status(api: InProcessAPI) -> None:
    c, h = api.clients("connect-proto"), bearer(api.org_token)
    project_id = await _project(c, h)
    results = {
        cli.BuildStatus.FINISHED: Oneof("success", cli.FinishBuildRequest.BuildSuccess()),
        cli.BuildStatus.FAILED: Oneof("error", cli.FinishBuildRequest.BuildError(error="boom")),
        cli.BuildStatus.CANCELED: Oneof("canceled", cli.FinishBuildRequest.BuildCanceled()),
    }
    expected = []
    for status, result in results.items():
        build = await c.cli_builds.create_build(
            cli.CreateBuildRequest(project_id=project_id), headers=h
        )
        await c.cli_builds.finish_build(
            cli.FinishBuildRequest(build_id=build.build_id, result=result), headers=h
        )
        expected.append((build.build_id, status))
    running = await c.cli_builds.create_build(
        cli.CreateBuildRequest(project_id=project_id), headers=h
    )
    expected.append((running.build_id, cli.BuildStatus.RUNNING))

    listed = await c.cli_builds.list_builds(cli.ListBuildsRequest(project_id=project_id), headers=h)
    assert [(x.id, x.status) for x in listed.builds] == list(reversed(expected))
    assert [x.has_field("finished_at") for x in listed.builds] == [False, True, True, True]


@pytest.mark.parametrize(
    ("project_id", "message"),
    [
        ("", "no project given"),
        ("zzzzzzzzzz", "project zzzzzzzzzz not found"),
        ("not an id!", 'project "not an id!" not found'),
    ],
)
async def test_create_build_without_a_known_project_is_not_found(
    api: InProcessAPI, project_id: str, message: str
) -> None:
    """not_found is what starts the CLI's project picker."""
    c = api.clients("connect-proto")
    with pytest.raises(ConnectError) as raised:
        await c.cli_builds.create_build(
            cli.CreateBuildRequest(project_id=project_id), headers=bearer(api.org_token)
        )
    assert raised.value.code == Code.NOT_FOUND
    assert message in raised.value.message


async def test_a_dagger_engine_is_unimplemented(api: InProcessAPI) -> None:
    c, h = api.clients("connect-proto"), bearer(api.org_token)
    project_id = await _project(c, h)
    engine = cli.CreateBuildRequest.RequiredEngine(
        engine=Oneof("dagger", cli.CreateBuildRequest.RequiredEngine.DaggerEngine(version="0.9"))
    )
    with pytest.raises(ConnectError) as raised:
        await c.cli_builds.create_build(
            cli.CreateBuildRequest(project_id=project_id, required_engine=engine), headers=h
        )
    assert raised.value.code == Code.UNIMPLEMENTED
    assert "not Dagger" in raised.value.message
    listed = await c.cli_builds.list_builds(cli.ListBuildsRequest(project_id=project_id), headers=h)
    assert list(listed.builds) == []  # nothing was registered


async def test_finish_needs_a_result_and_cannot_change_it(api: InProcessAPI) -> None:
    c, h = api.clients("connect-proto"), bearer(api.org_token)
    build = await c.cli_builds.create_build(
        cli.CreateBuildRequest(project_id=await _project(c, h)), headers=h
    )
    with pytest.raises(ConnectError) as raised:
        await c.cli_builds.finish_build(cli.FinishBuildRequest(build_id=build.build_id), headers=h)
    assert raised.value.code == Code.INVALID_ARGUMENT

    canceled = Oneof("canceled", cli.FinishBuildRequest.BuildCanceled())
    await c.cli_builds.finish_build(
        cli.FinishBuildRequest(build_id=build.build_id, result=canceled), headers=h
    )
    # The CLI may repeat its finish: the same outcome again succeeds, another one does not.
    await c.cli_builds.finish_build(
        cli.FinishBuildRequest(build_id=build.build_id, result=canceled), headers=h
    )
    with pytest.raises(ConnectError) as raised:
        await c.cli_builds.finish_build(
            cli.FinishBuildRequest(
                build_id=build.build_id,
                result=Oneof("success", cli.FinishBuildRequest.BuildSuccess()),
            ),
            headers=h,
        )
    assert raised.value.code == Code.FAILED_PRECONDITION


async def test_an_unknown_platform_is_invalid(api: InProcessAPI) -> None:
    c, h = api.clients("connect-proto"), bearer(api.org_token)
    build = await c.cli_builds.create_build(
        cli.CreateBuildRequest(project_id=await _project(c, h)), headers=h
    )
    with pytest.raises(ConnectError) as raised:
        await c.cli_builds.get_build_kit_connection(
            cli.GetBuildKitConnectionRequest(build_id=build.build_id, platform=7),  # type: ignore[arg-type]
            headers=h,
        )
    assert raised.value.code == Code.INVALID_ARGUMENT
    assert "platform 7" in raised.value.message


async def test_a_project_token_lists_its_own_project(api: InProcessAPI) -> None:
    c, h = api.clients("connect-proto"), bearer(api.org_token)
    mine = await _project(c, h, "mine")
    await _project(c, h, "other")
    token = await c.projects.create_token(
        project_pb.CreateTokenRequest(project_id=mine, description="ci"), headers=h
    )
    listed = await c.cli_projects.list_projects(
        projects_pb.ListProjectsRequest(), headers=bearer(token.secret)
    )
    assert [p.id for p in listed.projects] == [mine]


async def test_login_and_push_explain_what_to_do_instead(api: InProcessAPI) -> None:
    c = api.clients("connect-proto")
    with pytest.raises(ConnectError) as raised:
        await c.cli_login.start_login(login_pb.StartLoginRequest())  # no token, as the CLI
    assert raised.value.code == Code.UNIMPLEMENTED
    assert "depot-api admin create-user-token" in raised.value.message

    with pytest.raises(ConnectError) as raised:
        await c.cli_push.start_push(
            push_pb.StartPushRequest(tag="x"), headers=bearer(api.org_token)
        )
    assert raised.value.code == Code.UNIMPLEMENTED
    assert "no image registry" in raised.value.message


async def test_the_polled_wait_ends_in_resource_exhausted(api: InProcessAPI) -> None:
    c, h = api.clients("connect-proto"), bearer(api.org_token)
    build = await c.cli_builds.create_build(
        cli.CreateBuildRequest(project_id=await _project(c, h)), headers=h
    )
    poll = cli.GetBuildKitConnectionRequest(build_id=build.build_id, platform=AMD64)
    first = await c.cli_builds.get_build_kit_connection(poll, headers=h)
    assert first.connection is not None
    assert first.connection.field == "pending"
    await asyncio.sleep(ACQUIRE_TIMEOUT.total_seconds() + 0.1)
    with pytest.raises(ConnectError) as raised:
        await c.cli_builds.get_build_kit_connection(poll, headers=h)
    assert raised.value.code == Code.RESOURCE_EXHAUSTED
    assert "no amd64 BuildKit machine became ready" in raised.value.message
