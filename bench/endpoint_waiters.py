"""Many builds waiting in GetEndpoint for a machine that is not there yet.

One server (SQLite, one process per core), one project, N builds, N GetEndpoint streams open
over HTTP/2 (100 streams per connection). While they wait, the server's CPU is measured over
a fixed window; then an agent starts with the stand-in BuildKit daemon, and the time from the
agent's start to the last stream's `active` answer is measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pyqwest import Client, HTTPTransport, HTTPVersion

from bench import servers
from depot_api.gen.depot.buildkit.v1 import buildkit_pb
from depot_api.gen.depot.buildkit.v1.buildkit_connect import BuildKitServiceClient

STANDIN = servers.ROOT / "tests" / "standin_buildkitd.py"
STREAMS_PER_CONNECTION = 100
WAIT_WINDOW_SECONDS = 10.0


@dataclass
class Waiting:
    streams: int
    waiting_cores: float
    served: int
    # From the agent's start, and from the first `active` answer (the machine was ready), to
    # the last stream's `active` answer.
    served_after_agent_start: float
    served_after_machine_ready: float
    rss_mb: float

    def describe(self) -> str:
        return (
            f"GetEndpoint: {self.streams} streams waiting for a machine used "
            f"{self.waiting_cores * 100:.1f}% of one core over {WAIT_WINDOW_SECONDS:g} s.\n"
            f"{self.served} of them were served: the last {self.served_after_agent_start:.2f} s "
            f"after the agent started, {self.served_after_machine_ready:.2f} s after the first "
            f"(when the machine was ready). Peak RSS {self.rss_mb:.0f} MB per process."
        )


async def waiting_streams(count: int) -> Waiting:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        env = {
            "DEPOT_API_ACQUIRE_TIMEOUT": "600",
            "DEPOT_API_LIVENESS_WINDOW": "600",
            # The streams wait before any agent exists (the agent starts later).
            "DEPOT_API_WAIT_FOR_MACHINES": "true",
        }
        with servers.depot_api(root / "data", 0, None, env=env) as server:
            builds = await asyncio.to_thread(_create_builds, server, count)
            clients = [
                BuildKitServiceClient(
                    server.url,
                    http_client=Client(HTTPTransport(http_version=HTTPVersion.HTTP2)),
                )
                for _ in range(0, count, STREAMS_PER_CONNECTION)
            ]
            first_pending = [asyncio.Event() for _ in builds]
            tasks = [
                asyncio.create_task(
                    _wait(clients[i // STREAMS_PER_CONNECTION], build, first_pending[i])
                )
                for i, build in enumerate(builds)
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first_pending)), 120)
            usage = servers.Usage(server)
            await asyncio.sleep(WAIT_WINDOW_SECONDS)
            usage.stop()
            started = time.monotonic()
            agent = _start_agent(server, root)
            try:
                done, _ = await asyncio.wait(tasks, timeout=120)
                served_at = [t.result() for t in done if t.exception() is None]
            finally:
                agent.terminate()
                agent.wait(15)
            last = max(served_at, default=started)
            first = min(served_at, default=started)
            for task in tasks:
                task.cancel()
            return Waiting(
                count, usage.cores, len(served_at), last - started, last - first, usage.max_rss_mb
            )


async def _wait(
    client: BuildKitServiceClient, build: tuple[str, str], pending: asyncio.Event
) -> float:
    """Read the stream to its active answer; when it came (monotonic clock)."""
    build_id, token = build
    request = buildkit_pb.GetEndpointRequest(build_id=build_id, platform=buildkit_pb.Platform.AMD64)
    async for message in client.get_endpoint(
        request, headers={"authorization": f"Bearer {token}"}, timeout_ms=600_000
    ):
        assert message.connection is not None
        if message.connection.field == "active":
            return time.monotonic()
        pending.set()
    raise RuntimeError(f"build {build_id}: the stream ended without an active answer")


def _create_builds(server: servers.Server, count: int) -> list[tuple[str, str]]:
    def call(path: str, body: dict[str, object], token: str) -> dict[str, str]:
        request = urllib.request.Request(
            f"{server.url}/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            parsed: dict[str, str] = json.load(answer)
            return parsed

    org = server.org_token
    project = call(
        "depot.core.v1.ProjectService/CreateProject", {"name": "wait", "regionId": "us-east-1"}, org
    )["project"]
    project_id = project["projectId"]  # type: ignore[index]
    builds = []
    for _ in range(count):
        created = call("depot.build.v1.BuildService/CreateBuild", {"projectId": project_id}, org)
        builds.append((created["buildId"], created["buildToken"]))
    return builds


def _start_agent(server: servers.Server, root: Path) -> subprocess.Popen[bytes]:
    assert server.data_dir is not None
    made = subprocess.run(
        [str(servers.BIN / "depot-api"), "admin", "create-machine-token", "--data-dir",
         str(server.data_dir)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    token = made.stdout.strip().splitlines()[-1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return subprocess.Popen(
        [
            str(servers.BIN / "depot-api"), "agent", "--server", server.url,
            "--platform", "amd64", "--advertise", f"127.0.0.1:{port}",
            "--listen", f"127.0.0.1:{port}", "--buildkitd", str(STANDIN),
            "--state-dir", str(root / "agent"),
        ],
        env={
            **os.environ,
            "DEPOT_API_AGENT_TOKEN": token,
            "PATH": f"{servers.BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
