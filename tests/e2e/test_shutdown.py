"""SIGTERM to a real server: open streams end with `unavailable`, then it exits cleanly."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from pyqwest import Client, HTTPTransport, HTTPVersion

from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.build.v1.build_connect import BuildServiceClient
from depot_api.gen.depot.buildkit.v1 import buildkit_pb
from depot_api.gen.depot.buildkit.v1.buildkit_connect import BuildKitServiceClient
from depot_api.gen.depot.core.v1 import project_pb
from depot_api.gen.depot.core.v1.project_connect import ProjectServiceClient
from tests.helpers import running_server

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_drains_and_ends_streams_with_unavailable(
    tmp_path: Path, workers: int
) -> None:
    # No agent: the builds wait for a machine all the same, until the server stops.
    args = ("--workers", str(workers), "--wait-for-machines")
    with running_server(tmp_path / "data", *args) as server:
        http = Client(HTTPTransport(http_version=HTTPVersion.HTTP2))
        org = {"authorization": f"Bearer {server.org_token}"}
        created = await ProjectServiceClient(server.url, http_client=http).create_project(
            project_pb.CreateProjectRequest(name="p", region_id="us-east-1"), headers=org
        )
        assert created.project is not None
        builds = BuildServiceClient(server.url, http_client=http)
        buildkit = BuildKitServiceClient(server.url, http_client=http)
        waiting = []
        for _ in range(3):  # spread over the workers, each waiting for a machine
            build = await builds.create_build(
                build_pb.CreateBuildRequest(project_id=created.project.project_id), headers=org
            )
            stream = buildkit.get_endpoint(
                buildkit_pb.GetEndpointRequest(
                    build_id=build.build_id, platform=buildkit_pb.Platform.AMD64
                ),
                headers={"authorization": f"Bearer {build.build_token}"},
            )
            first = await anext(stream)  # `pending`: the stream is open
            assert first.connection is not None and first.connection.field == "pending"
            waiting.append(stream)

        server.process.send_signal(signal.SIGTERM)

        async def end_of(stream: AsyncIterator[buildkit_pb.GetEndpointResponse]) -> Code | None:
            try:
                async for _ in stream:
                    pass
            except ConnectError as e:
                return e.code
            return None  # ended without an error: wrong

        codes = await asyncio.wait_for(asyncio.gather(*(end_of(s) for s in waiting)), 30)
        assert codes == [Code.UNAVAILABLE] * 3
        assert await asyncio.to_thread(server.process.wait, 30) == 0
    output = "".join(server.output)
    assert output.count("drained: no call in flight") == workers, output
    assert "Traceback" not in output and "error occurred" not in output, output


def test_a_killed_supervisors_drain_directory_is_cleaned_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = data / "run" / f"drain-{gone.pid}"  # as a supervisor killed outright leaves it
    stale.mkdir(parents=True)
    with running_server(data) as server:
        assert not stale.exists()
        [mine] = (data / "run").iterdir()
        assert mine.name == f"drain-{server.process.pid}"
    assert list((data / "run").iterdir()) == []  # a clean stop removes its own
