"""Stopping a real server: open streams end with `unavailable`, then it exits cleanly, whether
the signal goes to the server's main process or to all its processes at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
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
from tests.helpers import ServerProcess, running_server

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_drains_and_ends_streams_with_unavailable(
    tmp_path: Path, workers: int
) -> None:
    # No agent: the builds wait for a machine all the same, until the server stops.
    args = ("--workers", str(workers), "--wait-for-machines")
    with running_server(tmp_path / "data", *args) as server:
        waiting = await open_waiting_streams(server, 3)
        server.process.send_signal(signal.SIGTERM)
        codes = await asyncio.wait_for(asyncio.gather(*(end_of(s) for s in waiting)), 30)
        assert codes == [Code.UNAVAILABLE] * 3
        assert await asyncio.to_thread(server.process.wait, 30) == 0
    output = "".join(server.output)
    assert output.count("drained: no call in flight") == workers, output
    assert "Traceback" not in output and "error occurred" not in output, output


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_a_signal_to_the_whole_process_group_drains_the_same(
    tmp_path: Path, sig: signal.Signals, workers: int
) -> None:
    """As Ctrl-C, `timeout` and systemd do: every process of the server gets the signal."""
    grace = 60  # a server that waits out the grace period fails the wait below
    with running_server(
        tmp_path / "data",
        "--workers",
        str(workers),
        "--shutdown-grace",
        str(grace),
        "--wait-for-machines",  # no agent: the builds wait all the same
        new_session=True,
    ) as server:
        waiting = await open_waiting_streams(server, 3)
        os.killpg(server.process.pid, sig)  # the group this test made for the server
        codes = await asyncio.wait_for(asyncio.gather(*(end_of(s) for s in waiting)), 30)
        assert codes == [Code.UNAVAILABLE] * 3
        assert await asyncio.to_thread(server.process.wait, grace / 2) == 0
    output = "".join(server.output)
    assert output.count("drained: no call in flight") == workers, output
    for wrong in ("Traceback", "error occurred", "aclose()", "still in flight"):
        assert wrong not in output, output


def test_a_supervisor_killed_outright_leaves_no_worker_behind(tmp_path: Path) -> None:
    with running_server(tmp_path / "data", "--workers", "2") as server:
        workers = psutil.Process(server.process.pid).children()
        assert len(workers) == 2
        server.process.kill()
        server.process.wait()
        try:
            deadline = time.monotonic() + 20
            while any(_running(w) for w in workers) and time.monotonic() < deadline:
                time.sleep(0.1)
            alive = [w for w in workers if _running(w)]
            assert alive == [], f"workers outlived their supervisor: {alive}"
        finally:
            for worker in workers:  # on failure: they are this test's to stop
                with contextlib.suppress(psutil.NoSuchProcess):
                    worker.kill()


def _running(process: psutil.Process) -> bool:
    """Running: one that exited but is not yet reaped (a zombie) is gone."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def open_waiting_streams(
    server: ServerProcess, count: int
) -> list[AsyncIterator[buildkit_pb.GetEndpointResponse]]:
    """count GetEndpoint streams, each open and waiting for a machine (none is registered)."""
    http = Client(HTTPTransport(http_version=HTTPVersion.HTTP2))
    org = {"authorization": f"Bearer {server.org_token}"}
    created = await ProjectServiceClient(server.url, http_client=http).create_project(
        project_pb.CreateProjectRequest(name="p", region_id="us-east-1"), headers=org
    )
    assert created.project is not None
    builds = BuildServiceClient(server.url, http_client=http)
    buildkit = BuildKitServiceClient(server.url, http_client=http)
    waiting = []
    for _ in range(count):  # spread over the workers, each waiting for a machine
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
    return waiting


async def end_of(stream: AsyncIterator[buildkit_pb.GetEndpointResponse]) -> Code | None:
    """How the stream ended: its error code, or None if it ended without one (wrong here)."""
    try:
        async for _ in stream:
            pass
    except ConnectError as e:
        return e.code
    return None


def test_a_killed_supervisors_run_directories_are_cleaned_up(tmp_path: Path) -> None:
    """The drain and metrics directories of a run (supervisor.py)."""
    data = tmp_path / "data"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    # As a supervisor killed outright leaves them.
    stale = [data / "run" / f"{kind}-{gone.pid}" for kind in ("drain", "metrics")]
    for directory in stale:
        directory.mkdir(parents=True)
    with running_server(data) as server:
        assert not any(directory.exists() for directory in stale)
        mine = sorted(p.name for p in (data / "run").iterdir())
        assert mine == [f"drain-{server.process.pid}", f"metrics-{server.process.pid}"]
    assert list((data / "run").iterdir()) == []  # a clean stop removes its own
