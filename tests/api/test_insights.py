"""Build insights through the in-process server, on every protocol: the agent's
ReportBuildStatus, the readers (GetBuildSteps, GetBuildStepLogs, the Build counters of both
GetBuilds and ListBuilds), the build token's UploadBuildStatus, and UsageService."""

from __future__ import annotations

import secrets

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.core.v1 import build_pb as core_pb
from depot_api.gen.depot.core.v1 import project_pb, usage_pb
from depot_api.gen.depotapi.insights.v1 import insights_pb
from depot_api.gen.depotapi.machine.v1 import machine_pb as pb
from depot_api.gen.moby.buildkit.v1 import control_pb as c

from ..buildkit_status import record_build
from ..conftest import PROTOCOLS, InProcessAPI, bearer
from ..docker_engine import DockerEngine
from .test_machine_connections import _serving

BASE, RUN, CACHED = (f"sha256:{n * 64}" for n in "abc")
T0 = 1_767_225_600


def ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=T0 + seconds)


FIRST_BUILD = [
    c.StatusResponse(
        vertexes=[
            c.Vertex(digest=BASE, name="[stage-0 1/2] FROM base", started=ts(0), completed=ts(1)),
            c.Vertex(digest=RUN, name="[stage-1 2/3] RUN make", inputs=[BASE], started=ts(1)),
        ]
    ),
    c.StatusResponse(
        logs=[
            c.VertexLog(vertex=RUN, msg=b"line one\nline two\n", stream=1, timestamp=ts(2)),
            c.VertexLog(vertex=RUN, msg=b"warning: three\n", stream=2, timestamp=ts(3)),
        ]
    ),
    c.StatusResponse(
        vertexes=[
            c.Vertex(
                digest=RUN,
                name="[stage-1 2/3] RUN make",
                inputs=[BASE],
                started=ts(1),
                completed=ts(9),
            ),
            c.Vertex(
                digest=CACHED,
                name="[stage-1 3/3] RUN false",
                started=ts(9),
                completed=ts(10),
                error='process "/bin/sh -c false" did not complete successfully: exit code: 1',
            ),
        ]
    ),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_agents_report_is_read_back_step_by_step_and_line_by_line(
    api: InProcessAPI, protocol: str
) -> None:
    machine = await _serving(api, protocol)
    batch = pb.BuildStatusBatch(
        build_id=machine.build_id, status_responses=[m.to_binary() for m in FIRST_BUILD]
    )
    for _ in range(2):  # a retried batch changes nothing
        await machine.clients.machines.report_build_status(
            pb.ReportBuildStatusRequest(machine_id=machine.machine_id, builds=[batch]),
            headers=machine.headers,
        )
    org = bearer(api.org_token)
    steps = await machine.clients.builds.get_build_steps(
        build_pb.GetBuildStepsRequest(build_id=machine.build_id, page_size=2), headers=org
    )
    assert [(s.name, s.has_logs) for s in steps.build_steps] == [
        ("[stage-0 1/2] FROM base", False),
        ("[stage-1 2/3] RUN make", True),
    ]
    assert steps.build_steps[1].started_at == ts(1)
    assert steps.build_steps[1].completed_at == ts(9)
    Cache = build_pb.GetBuildStepsResponse.BuildStep.CacheState
    assert steps.build_steps[1].cache_state == Cache.UNCACHED
    assert steps.next_page_token
    rest = await machine.clients.builds.get_build_steps(
        build_pb.GetBuildStepsRequest(build_id=machine.build_id, page_token=steps.next_page_token),
        headers=org,
    )
    (failed,) = rest.build_steps
    assert failed.error is not None and "exit code: 1" in failed.error
    assert not rest.next_page_token
    logs = await machine.clients.builds.get_build_step_logs(
        build_pb.GetBuildStepLogsRequest(
            build_id=machine.build_id, build_step_digest=RUN, page_size=2
        ),
        headers=org,
    )
    assert [(x.message, x.timestamp) for x in logs.logs] == [
        ("line one", ts(2)),
        ("line two", ts(2)),
    ]
    more = await machine.clients.builds.get_build_step_logs(
        build_pb.GetBuildStepLogsRequest(
            build_id=machine.build_id, build_step_digest=RUN, page_token=logs.next_page_token
        ),
        headers=org,
    )
    assert [x.message for x in more.logs] == ["warning: three"]
    assert not more.next_page_token
    got = await machine.clients.core_builds.get_build(
        core_pb.GetBuildRequest(build_id=machine.build_id), headers=org
    )
    assert (got.build.total_steps, got.build.cached_steps, got.build.saved_duration_seconds) == (
        3,
        0,
        0,
    )
    seed = await machine.clients.builds.get_build(
        build_pb.GetBuildRequest(build_id=machine.build_id), headers=org
    )
    assert (seed.total_steps, seed.cached_steps) == (3, 0)
    listed = await machine.clients.core_builds.list_builds(
        core_pb.ListBuildsRequest(project_id=seed.project_id), headers=org
    )
    (row,) = listed.builds
    assert (row.total_steps, row.cached_steps) == (3, 0)


async def test_malformed_status_bytes_are_invalid_argument_naming_the_message(
    api: InProcessAPI,
) -> None:
    machine = await _serving(api, "connect-proto")
    with pytest.raises(ConnectError) as caught:
        await machine.clients.machines.report_build_status(
            pb.ReportBuildStatusRequest(
                machine_id=machine.machine_id,
                builds=[
                    pb.BuildStatusBatch(
                        build_id=machine.build_id,
                        status_responses=[FIRST_BUILD[0].to_binary(), b"\x0a\xff"],
                    )
                ],
            ),
            headers=machine.headers,
        )
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert "builds[0].status_responses[1] is not a moby.buildkit.v1.StatusResponse" in str(
        caught.value
    )
    steps = await machine.clients.builds.get_build_steps(
        build_pb.GetBuildStepsRequest(build_id=machine.build_id), headers=bearer(api.org_token)
    )
    assert steps.build_steps == []


@pytest.mark.parametrize("protocol", ["connect-json", "grpc"])
async def test_an_upload_with_the_build_token_and_usage(api: InProcessAPI, protocol: str) -> None:
    clients = api.clients(protocol)
    org = bearer(api.org_token)
    project = await clients.projects.create_project(
        project_pb.CreateProjectRequest(name="ci", region_id="us-east-1"),
        headers=org,
    )
    project_id = project.project.project_id
    created = await clients.builds.create_build(
        build_pb.CreateBuildRequest(project_id=project_id), headers=org
    )
    upload = insights_pb.UploadBuildStatusRequest(
        build_id=created.build_id, status_responses=[m.to_binary() for m in FIRST_BUILD]
    )
    token = bearer(created.build_token)
    first = await clients.insights.upload_build_status(upload, headers=token)
    again = await clients.insights.upload_build_status(upload, headers=token)
    assert (first.merged, first.repeated, again.merged, again.repeated) == (3, 0, 0, 3)
    steps = await clients.builds.get_build_steps(
        build_pb.GetBuildStepsRequest(project_id=project_id, build_id=created.build_id),
        headers=token,
    )
    assert len(steps.build_steps) == 3
    usage = await clients.usage.get_project_usage(
        usage_pb.GetProjectUsageRequest(project_id=project_id), headers=org
    )
    assert (usage.usage.project_id, usage.usage.build_count) == (project_id, 1)
    listed = await clients.usage.list_project_usage(usage_pb.ListProjectUsageRequest(), headers=org)
    assert project_id in [u.project_id for u in listed.usage]
    overall = await clients.usage.get_usage(usage_pb.GetUsageRequest(), headers=org)
    assert ("ci", 1) in [(u.project_name, u.build_count) for u in overall.container_build]
    with pytest.raises(ConnectError) as caught:
        await clients.usage.get_usage(
            usage_pb.GetUsageRequest(start_at=ts(10), end_at=ts(5)), headers=org
        )
    assert caught.value.code is Code.INVALID_ARGUMENT


@pytest.mark.buildkit
async def test_status_bytes_recorded_from_a_real_buildkit_merge_as_the_agent_sends_them(
    api: InProcessAPI, docker_engine: DockerEngine
) -> None:
    marker = secrets.token_hex(6)
    recorded = record_build(
        docker_engine,
        f"FROM depot-api-test-base:latest\nRUN echo one {marker} && echo two {marker}\n",
    )
    assert not recorded.error, recorded.error
    machine = await _serving(api, "grpc")
    # In two batches, the second sent twice (a retry), as the front door's reader would.
    half = len(recorded.status_responses) // 2
    for part in (recorded.status_responses[:half], *[recorded.status_responses[half:]] * 2):
        await machine.clients.machines.report_build_status(
            pb.ReportBuildStatusRequest(
                machine_id=machine.machine_id,
                builds=[pb.BuildStatusBatch(build_id=machine.build_id, status_responses=part)],
            ),
            headers=machine.headers,
        )
    org = bearer(api.org_token)
    steps = await machine.clients.builds.get_build_steps(
        build_pb.GetBuildStepsRequest(build_id=machine.build_id), headers=org
    )
    (run,) = [
        s
        for s in steps.build_steps
        if s.name == f"[2/2] RUN echo one {marker} && echo two {marker}"
    ]
    assert run.has_logs and run.completed_at is not None
    logs = await machine.clients.builds.get_build_step_logs(
        build_pb.GetBuildStepLogsRequest(build_id=machine.build_id, build_step_digest=run.digest),
        headers=org,
    )
    assert [line.message for line in logs.logs] == [f"one {marker}", f"two {marker}"]
    got = await machine.clients.core_builds.get_build(
        core_pb.GetBuildRequest(build_id=machine.build_id), headers=org
    )
    assert got.build.total_steps == len(steps.build_steps)
