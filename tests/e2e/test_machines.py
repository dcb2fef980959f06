"""BuildKit machines end to end: a real server, real agents, the stand-in BuildKit daemon,
and mutual TLS with exactly what GetEndpoint handed out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.buildkit.v1 import buildkit_pb
from depot_api.gen.depot.core.v1 import build_pb as core_build_pb
from depot_api.gen.depot.core.v1 import project_pb
from tests.helpers import ServerProcess, running_server

from .machines import (
    AMD64,
    QUICK,
    STANDIN_WORKER,
    Api,
    Cluster,
    agent,
    api,
    api_for,
    bearer,
    cluster,
    get_endpoint,
    list_workers,
    mtls_list_workers,
    wait_for,
)
from .test_agent_failures import admin_lines

__all__ = ["api", "cluster"]  # fixtures, imported for pytest to find


@pytest.mark.parametrize("protocol", ["connect-proto", "connect-json", "grpc"])
async def test_get_endpoint_opens_mutual_tls(api: Api, cluster: Cluster, protocol: str) -> None:
    client = {
        "connect-proto": api.buildkit,
        "connect-json": api.json_buildkit,
        "grpc": api.grpc_buildkit,
    }[protocol]
    project = await api.project("app")
    build = await api.build(project)
    _, active = await get_endpoint(client, build)
    assert active.endpoint in {a.endpoint for a in cluster.agents}
    assert active.server_name.endswith(".machines.depot-api.internal")
    assert "BEGIN CERTIFICATE" in active.ca_cert.cert
    assert "PRIVATE KEY" in active.cert.key.key
    assert await asyncio.to_thread(list_workers, active) == [STANDIN_WORKER]
    # The server's certificate names server_name and nothing else.
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.to_thread(list_workers, active, "someone-else.example")
    # The machine's start sets the build's start.
    seen = await api.core_builds.get_build(
        core_build_pb.GetBuildRequest(build_id=build.build_id), headers=api.org
    )
    assert seen.build.has_field("started_at")
    await api.finish(build.build_id)


async def test_plain_json_view_answers_one_object(api: Api) -> None:
    project = await api.project("seed")
    build = await api.build(project)
    response = await api.http.post(
        f"{api.url}/depot.buildkit.v1.BuildKitService/GetEndpoint",
        headers={"content-type": "application/json", **bearer(build.build_token)},
        content=json.dumps({"buildId": build.build_id, "platform": "PLATFORM_AMD64"}).encode(),
    )
    assert response.status == 200, response.content
    body = json.loads(response.content)
    assert sorted(body) == ["caCert", "cert", "endpoint", "serverName"]
    assert sorted(body["cert"]) == ["cert", "key"]
    workers = await asyncio.to_thread(
        mtls_list_workers,
        body["endpoint"],
        body["serverName"],
        body["cert"]["cert"],
        body["cert"]["key"],
        body["caCert"]["cert"],
    )
    assert workers == [STANDIN_WORKER]
    await api.finish(build.build_id)


async def test_plain_json_errors_are_connect_errors(api: Api) -> None:
    project = await api.project("seed-errors")
    build = await api.build(project)
    other = await api.build(project)
    response = await api.http.post(
        f"{api.url}/depot.buildkit.v1.BuildKitService/GetEndpoint",
        headers={"content-type": "application/json", **bearer(build.build_token)},
        content=json.dumps({"buildId": other.build_id}).encode(),
    )
    assert response.status == 403
    assert json.loads(response.content)["code"] == "permission_denied"
    response = await api.http.post(
        f"{api.url}/depot.buildkit.v1.BuildKitService/GetEndpoint",
        headers={"content-type": "application/json", **bearer(build.build_token)},
        content=b"{not json",
    )
    assert (response.status, json.loads(response.content)["code"]) == (400, "invalid_argument")


async def test_same_build_same_machine(api: Api) -> None:
    project = await api.project("same")
    build = await api.build(project)
    _, first = await get_endpoint(api.buildkit, build)
    _, again = await get_endpoint(api.grpc_buildkit, build)
    assert again.endpoint == first.endpoint
    # A second build of the project shares the project's machine.
    second = await api.build(project)
    _, shared = await get_endpoint(api.buildkit, second)
    assert shared.endpoint == first.endpoint
    await api.finish(build.build_id)
    await api.finish(second.build_id)


async def test_projects_are_isolated(api: Api) -> None:
    build_a = await api.build(await api.project("iso-a"))
    build_b = await api.build(await api.project("iso-b"))
    _, a = await get_endpoint(api.buildkit, build_a)
    _, b = await get_endpoint(api.buildkit, build_b)
    assert a.endpoint != b.endpoint  # one machine never serves two projects
    assert a.ca_cert.cert != b.ca_cert.cert  # one CA per project
    # Project A's client certificate is refused by project B's machine.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.to_thread(
            mtls_list_workers,
            b.endpoint,
            b.server_name,
            a.cert.cert.cert,
            a.cert.key.key,
            b.ca_cert.cert,
        )
    await api.finish(build_a.build_id)
    await api.finish(build_b.build_id)


async def test_build_token_of_another_build_is_denied(api: Api) -> None:
    project = await api.project("denied")
    mine = await api.build(project)
    other = await api.build(project)
    with pytest.raises(ConnectError) as raised:
        async for _ in api.buildkit.get_endpoint(
            buildkit_pb.GetEndpointRequest(build_id=other.build_id, platform=AMD64),
            headers=bearer(mine.build_token),
        ):
            pass
    assert raised.value.code == Code.PERMISSION_DENIED


async def test_no_machine_for_the_platform_ends_at_once_saying_what_to_do(api: Api) -> None:
    """Only amd64 agents run here: a build asking for arm64 has nothing to wait for, and is
    told so rather than kept waiting for the acquire timeout (the amd64 machines do not
    count)."""
    build = await api.build(await api.project("arm"))

    async def wait_for_arm() -> None:
        async for _ in api.buildkit.get_endpoint(
            buildkit_pb.GetEndpointRequest(
                build_id=build.build_id, platform=buildkit_pb.Platform.ARM64
            ),
            headers=bearer(build.build_token),
        ):
            pass

    with pytest.raises(ConnectError) as raised:
        await asyncio.wait_for(wait_for_arm(), 30)  # it ends: no endless stream
    assert raised.value.code == Code.FAILED_PRECONDITION
    assert raised.value.message.startswith("no arm64 BuildKit machine to wait for")
    assert "depot-api agent --platform arm64" in raised.value.message


async def test_release_then_the_machine_goes_idle(api: Api, cluster: Cluster) -> None:
    project = await api.project("idle")
    build = await api.build(project)
    _, active = await get_endpoint(api.buildkit, build)
    (machine,) = [a for a in cluster.agents if a.endpoint == active.endpoint]
    await api.buildkit.release_endpoint(
        buildkit_pb.ReleaseEndpointRequest(build_id=build.build_id, platform=AMD64),
        headers=bearer(build.build_token),
    )
    # After the idle period the agent is told Idle and stops the daemon cleanly.
    await asyncio.to_thread(
        wait_for, lambda: "stopped" in machine.events(project), 10, "the daemon to stop"
    )


async def test_reset_restarts_the_machine_with_an_empty_cache(api: Api, cluster: Cluster) -> None:
    project = await api.project("reset")
    build = await api.build(project)
    _, active = await get_endpoint(api.buildkit, build)
    (machine,) = [a for a in cluster.agents if a.endpoint == active.endpoint]
    cache = machine.state_dir / "cache" / project
    (cache / "layer").write_text("cached data")
    await api.projects.reset_project(
        project_pb.ResetProjectRequest(project_id=project), headers=api.org
    )
    await asyncio.to_thread(
        wait_for, lambda: not (cache / "layer").exists(), 10, "the old cache to be deleted"
    )
    assert (cache / ".generation").read_text().strip() == "1"
    _, again = await get_endpoint(api.buildkit, build)
    assert await asyncio.to_thread(list_workers, again) == [STANDIN_WORKER]
    await api.finish(build.build_id)


async def test_a_silent_build_is_canceled_and_a_reporting_one_is_not(api: Api) -> None:
    project = await api.project("liveness")
    silent = await api.build(project)
    talking = await api.build(project)
    await get_endpoint(api.buildkit, silent)
    await get_endpoint(api.buildkit, talking)

    async def reports() -> AsyncIterator[buildkit_pb.ReportHealthRequest]:
        for _ in range(16):
            yield buildkit_pb.ReportHealthRequest(build_id=talking.build_id, platform=AMD64)
            await asyncio.sleep(1)

    await api.buildkit.report_health(reports(), headers=bearer(talking.build_token))

    async def status(build: build_pb.CreateBuildResponse) -> int:
        seen = await api.core_builds.get_build(
            core_build_pb.GetBuildRequest(build_id=build.build_id), headers=api.org
        )
        return int(seen.build.status)

    assert await status(silent) == core_build_pb.Build.Status.CANCELED
    assert await status(talking) == core_build_pb.Build.Status.RUNNING
    await api.finish(talking.build_id)


async def test_many_builds_fewer_machines_than_projects(api: Api) -> None:
    """Six projects, two machines: every build is served or told to retry, none hangs, and
    no machine ever serves two projects at once."""
    projects = [await api.project(f"crowd-{i}") for i in range(6)]
    builds = [(p, await api.build(p)) for p in projects for _ in range(2)]
    held: list[tuple[str, str, float, float]] = []  # endpoint, project, from, to

    async def one(project: str, build: build_pb.CreateBuildResponse) -> str:
        try:
            _, active = await get_endpoint(api.buildkit, build)
        except ConnectError as e:
            return "retry" if e.code == Code.RESOURCE_EXHAUSTED else f"error: {e.code}"
        start = time.monotonic()
        await asyncio.sleep(0.3)  # "build"
        end = time.monotonic()
        await api.finish(build.build_id)
        held.append((active.endpoint, project, start, end))
        return "served"

    outcomes = await asyncio.wait_for(asyncio.gather(*(one(p, b) for p, b in builds)), 60)
    assert set(outcomes) <= {"served", "retry"}
    assert outcomes.count("served") >= 2
    for i, (endpoint, project, start, end) in enumerate(held):
        for other_endpoint, other_project, other_start, other_end in held[i + 1 :]:
            if endpoint == other_endpoint and project != other_project:
                assert end <= other_start or other_end <= start, "a machine served two projects"


async def test_deleting_a_project_releases_its_machine(api: Api, cluster: Cluster) -> None:
    project = await api.project("deleted")
    build = await api.build(project)
    _, active = await get_endpoint(api.buildkit, build)
    (machine,) = [a for a in cluster.agents if a.endpoint == active.endpoint]
    await api.projects.delete_project(
        project_pb.DeleteProjectRequest(project_id=project), headers=api.org
    )
    await asyncio.to_thread(
        wait_for, lambda: "stopped" in machine.events(project), 10, "the daemon to stop"
    )
    with pytest.raises(ConnectError) as raised:
        await get_endpoint(api.buildkit, build)
    assert raised.value.code == Code.UNAUTHENTICATED  # its build token died with it


def test_machine_tokens_work_on_the_machine_service_only(cluster: Cluster) -> None:
    assert cluster.machine_token.startswith("dpm_")


async def test_machine_token_is_refused_elsewhere(api: Api, cluster: Cluster) -> None:
    with pytest.raises(ConnectError) as raised:
        await api.projects.list_projects(
            project_pb.ListProjectsRequest(), headers=bearer(cluster.machine_token)
        )
    assert raised.value.code == Code.PERMISSION_DENIED


def test_agents_stop_cleanly(tmp_path: Path, cluster: Cluster) -> None:
    with agent(cluster.server.url, cluster.machine_token, tmp_path / "agent") as extra:
        wait_for(extra.state_dir.exists, 20, "the agent to start")
        assert extra.process.poll() is None
    assert extra.process.returncode == 0


async def test_waiting_streams_do_not_spin(tmp_path: Path) -> None:
    """A stream that waits costs (almost) nothing: a busy loop here once burned a core per
    stream. Measured in CPU seconds of the server process, not in wall-clock time. (No agent
    runs here: the server waits for machines anyway, as with an autoscaler.)"""
    with running_server(tmp_path / "data", "--wait-for-machines", env=QUICK) as server:
        api = api_for(server, server.org_token)
        await _streams_wait_cheaply(api, server)


async def _streams_wait_cheaply(api: Api, server: ServerProcess) -> None:
    builds = [await api.build(await api.project(f"spin-{i}")) for i in range(5)]

    def cpu_seconds() -> float:
        fields = Path(f"/proc/{_envoy_of(server.process.pid)}/stat").read_text()
        utime, stime = fields.rsplit(")", 1)[1].split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    async def wait_for_arm(build: build_pb.CreateBuildResponse) -> None:
        with contextlib.suppress(ConnectError):
            async for _ in api.buildkit.get_endpoint(
                buildkit_pb.GetEndpointRequest(
                    build_id=build.build_id, platform=buildkit_pb.Platform.ARM64
                ),
                headers=bearer(build.build_token),
            ):
                pass

    before, started = cpu_seconds(), time.monotonic()
    await asyncio.gather(*(wait_for_arm(b) for b in builds))
    used, elapsed = cpu_seconds() - before, time.monotonic() - started
    assert elapsed >= 9  # they really waited (the acquire timeout is 10 s)
    assert used < 0.5 * elapsed, f"{used:.1f} CPU seconds in {elapsed:.1f} s"


def _envoy_of(server_pid: int) -> int:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == server_pid and "envoy" in stat:
                return int(entry)
    raise AssertionError("the server's worker process was not found")


async def test_heartbeats_carry_the_daemons_readiness_and_cache_size(
    api: Api, cluster: Cluster
) -> None:
    """Readiness is BuildKit's ListWorkers, the cache size its DiskUsage: the stand-in names
    one worker and one cache record of 1 MiB, which the machine's listing shows."""
    build = await api.build(await api.project("heartbeat"))
    _, active = await get_endpoint(api.buildkit, build)

    def bound_line() -> str:
        lines = admin_lines(cluster.server, "list-machines")
        return next(line for line in lines if active.endpoint.removeprefix("tcp://") in line)

    await asyncio.to_thread(
        wait_for, lambda: "disk-used=1048576" in bound_line(), 10, "the cache size"
    )
    assert "ready=yes" in bound_line()
    await api.finish(build.build_id)
