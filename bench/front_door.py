"""The machine's front door on a real BuildKit: build throughput through it against straight to
the daemon, and the time from CreateBuild to the first answered BuildKit call.

Everything runs privately: a Docker Engine of its own (the tests' fixture, tests/docker_engine.py,
with the busybox base image imported), `depot-api serve` on SQLite in a temporary directory, a
machine token, and `depot-api agent --docker-socket` fronting that engine on 127.0.0.1.

1. **Throughput**: a Dockerfile `FROM` the base image, `COPY big /big`, `RUN wc -c /big`, with
   `big` a file of new random bytes for every build, exported with `--output type=local`.
   Through the front door: the real depot CLI against the server. Straight to the daemon:
   Debian's docker CLI (20.10, `DOCKER_BUILDKIT=1`) on the engine's socket. The engine's build
   cache is pruned before every build, so both start from the same state. MB/s of context is the
   context's size over the build's wall time; the agent's CPU is read around each depot build.
2. **Latency**: with a warm machine (one build done, so the project is bound and the daemon
   ready), per build: CreateBuild, GetEndpoint's active answer (a server stream: it is pushed,
   no client poll), then mutual TLS to the returned endpoint and BuildKit's ListWorkers over
   HTTP/2, answered by the daemon past the front door's admission; then FinishBuild.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
from protobuf import Oneof
from pyqwest import Client, HTTPTransport, HTTPVersion

from bench import servers
from depot_api.agent.splice import splice
from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.build.v1.build_connect import BuildServiceClient
from depot_api.gen.depot.buildkit.v1 import buildkit_pb
from depot_api.gen.depot.buildkit.v1.buildkit_connect import BuildKitServiceClient
from tests.docker_engine import DOCKER, DockerEngine, running_engine
from tests.grpc_probe import grpc_unary_over

THROUGHPUT = "front door throughput"
LATENCY = "front door latency"
SCENARIOS = (THROUGHPUT, LATENCY)

DEPOT = servers.ROOT / "tests/e2e/node/node_modules/@depot/cli-linux-x64/bin/depot"
LIST_WORKERS = "/moby.buildkit.v1.Control/ListWorkers"
BUILD_TIMEOUT = 600.0
MB = 10**6


@dataclass(frozen=True)
class Plan:
    context_mb: int
    builds_each_way: int
    latency_builds: int


FULL = Plan(context_mb=200, builds_each_way=5, latency_builds=50)
QUICK = Plan(context_mb=20, builds_each_way=2, latency_builds=5)


@dataclass
class Throughput:
    context_bytes: int
    front_door_seconds: list[float]
    direct_seconds: list[float]
    forwarded_seconds: list[float]
    agent_cpu_seconds: list[float]
    forwarder_cpu_seconds: list[float]

    @property
    def front_door_mb_s(self) -> float:
        return self.context_bytes / MB / statistics.median(self.front_door_seconds)

    @property
    def direct_mb_s(self) -> float:
        return self.context_bytes / MB / statistics.median(self.direct_seconds)

    @property
    def forwarded_mb_s(self) -> float:
        return self.context_bytes / MB / statistics.median(self.forwarded_seconds)

    def describe(self) -> str:
        def seconds(values: list[float]) -> str:
            return ", ".join(f"{v:.2f}" for v in values)

        return (
            f"Front door throughput: a {self.context_bytes / MB:.0f} MB context, "
            f"{len(self.direct_seconds)} builds each way (median):\n"
            f"  through the front door (depot CLI): {self.front_door_mb_s:.1f} MB/s "
            f"(builds of {seconds(self.front_door_seconds)} s)\n"
            f"  straight to the daemon (docker CLI): {self.direct_mb_s:.1f} MB/s "
            f"(builds of {seconds(self.direct_seconds)} s)\n"
            f"  front door / direct: {self.front_door_mb_s / self.direct_mb_s:.0%}; the agent "
            f"used {statistics.median(self.agent_cpu_seconds):.2f} CPU seconds per build "
            f"({seconds(self.agent_cpu_seconds)})\n"
            f"  the docker CLI through a plain forwarder (the agent's splice, no TLS): "
            f"{self.forwarded_mb_s:.1f} MB/s (builds of {seconds(self.forwarded_seconds)} s), "
            f"{self.forwarded_mb_s / self.direct_mb_s:.0%} of direct; the forwarder used "
            f"{statistics.median(self.forwarder_cpu_seconds):.2f} CPU seconds per build"
        )


@dataclass
class Latency:
    create_build: list[float]
    get_endpoint: list[float]
    tls: list[float]
    first_call: list[float]  # admission and ListWorkers, after the handshake

    @property
    def totals(self) -> list[float]:
        return [sum(parts) for parts in zip(*self._phases().values(), strict=True)]

    def _phases(self) -> dict[str, list[float]]:
        return {
            "CreateBuild": self.create_build,
            "GetEndpoint": self.get_endpoint,
            "TLS handshake": self.tls,
            "admission + ListWorkers": self.first_call,
        }

    def describe(self) -> str:
        lines = [
            f"Front door latency: CreateBuild to the first answered BuildKit call, "
            f"{len(self.totals)} builds on a warm machine: p50 {_ms(self.totals, 50)}, "
            f"p99 {_ms(self.totals, 99)}"
        ]
        for name, values in self._phases().items():
            lines.append(f"  {name:<24} p50 {_ms(values, 50)}, p99 {_ms(values, 99)}")
        return "\n".join(lines)


def _ms(values: list[float], percentile: int) -> str:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(percentile / 100 * len(ordered) + 0.5) - 1))
    return f"{ordered[index] * 1000:.1f} ms"


@dataclass
class Stage:
    """What the scenarios share: the engine, the server, a project and the agent."""

    engine: DockerEngine
    server: servers.Server
    project_id: str
    agent: subprocess.Popen[bytes]
    scratch: Path


def run(plan: Plan, only: list[str] | None) -> list[str]:
    """Run the front door scenarios that `only` selects (all without it); their descriptions."""
    wanted = [s for s in SCENARIOS if not only or any(text in s for text in only)]
    if not wanted:
        return []
    if not DEPOT.exists():
        raise RuntimeError(f"the depot CLI is not installed at {DEPOT}: run `make install`")
    described = []
    with _stage() as stage:
        if THROUGHPUT in wanted:
            described.append(throughput(stage, plan).describe())
        if LATENCY in wanted:
            described.append(asyncio.run(latency(stage, plan)).describe())
    return described


@contextmanager
def _stage() -> Iterator[Stage]:
    with running_engine() as engine, tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        # GetEndpoint waits for the machine while the agent is still starting.
        env = {"DEPOT_API_WAIT_FOR_MACHINES": "true", "DEPOT_API_ACQUIRE_TIMEOUT": "120"}
        with servers.depot_api(scratch / "data", 1, None, env=env) as server:
            project_id = _call(
                server,
                "depot.core.v1.ProjectService/CreateProject",
                {"name": "front-door", "regionId": "us-east-1"},
            )["project"]["projectId"]
            agent = _start_agent(server, engine, scratch)
            try:
                yield Stage(engine, server, project_id, agent, scratch)
            finally:
                agent.terminate()
                try:
                    agent.wait(15)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait(15)


def throughput(stage: Stage, plan: Plan) -> Throughput:
    context = stage.scratch / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {stage.engine.base_image}\nCOPY big /big\nRUN wc -c /big > /size\n"
    )
    size = plan.context_mb * MB
    agent = psutil.Process(stage.agent.pid)
    result = Throughput(size + (context / "Dockerfile").stat().st_size, [], [], [], [], [])
    # One warm-up build by each path (the machine binding, the base image's first use), then
    # the paths in turn, so that a drift in the machine's speed touches all of them.
    with _forwarder(stage.engine.socket) as forwarder:
        for index in range(plan.builds_each_way + 1):
            for path in ("front door", "direct", "forwarded"):
                _new_content(context / "big", size)
                _prune(stage.engine)
                output = stage.scratch / f"out-{path.replace(' ', '-')}-{index}"
                agent_before = _cpu_seconds(agent)
                forwarder_before = forwarder.cpu_seconds()
                started = time.monotonic()
                if path == "front door":
                    _depot_build(stage, context, output)
                elif path == "direct":
                    _docker_build(stage.engine, stage.engine.host, context, output)
                else:
                    _docker_build(stage.engine, forwarder.host, context, output)
                elapsed = time.monotonic() - started
                written = (output / "size").read_text().split()[0]
                if int(written) != size:
                    raise RuntimeError(f"the {path} build saw {written} bytes of {size}")
                if index == 0:
                    continue
                if path == "front door":
                    result.front_door_seconds.append(elapsed)
                    result.agent_cpu_seconds.append(_cpu_seconds(agent) - agent_before)
                elif path == "direct":
                    result.direct_seconds.append(elapsed)
                else:
                    result.forwarded_seconds.append(elapsed)
                    result.forwarder_cpu_seconds.append(forwarder.cpu_seconds() - forwarder_before)
    return result


async def latency(stage: Stage, plan: Plan) -> Latency:
    http = Client(HTTPTransport(http_version=HTTPVersion.HTTP2))
    builds = BuildServiceClient(stage.server.url, http_client=http)
    buildkit = BuildKitServiceClient(stage.server.url, http_client=http)
    org = {"authorization": f"Bearer {stage.server.org_token}"}
    result = Latency([], [], [], [])
    for index in range(plan.latency_builds + 1):
        started = time.monotonic()
        created = await builds.create_build(
            build_pb.CreateBuildRequest(project_id=stage.project_id), headers=org
        )
        created_at = time.monotonic()
        mine = {"authorization": f"Bearer {created.build_token}"}
        active = await _active_endpoint(buildkit, created.build_id, mine)
        active_at = time.monotonic()
        handshake, answered = await asyncio.to_thread(_first_call, active)
        await builds.finish_build(
            build_pb.FinishBuildRequest(
                build_id=created.build_id,
                outcome=Oneof("success", build_pb.FinishBuildRequest.BuildSuccess()),
            ),
            headers=mine,
        )
        if index == 0:  # the warm-up: the machine's binding to the project is made here
            continue
        result.create_build.append(created_at - started)
        result.get_endpoint.append(active_at - created_at)
        result.tls.append(handshake)
        result.first_call.append(answered)
    return result


async def _active_endpoint(
    client: BuildKitServiceClient, build_id: str, headers: dict[str, str]
) -> buildkit_pb.GetEndpointResponse.ActiveConnection:
    request = buildkit_pb.GetEndpointRequest(build_id=build_id, platform=buildkit_pb.Platform.AMD64)
    async for message in client.get_endpoint(request, headers=headers, timeout_ms=120_000):
        if message.connection is not None and message.connection.field == "active":
            active: buildkit_pb.GetEndpointResponse.ActiveConnection = message.connection.value
            return active
    raise RuntimeError(f"build {build_id}: GetEndpoint ended without an active answer")


def _first_call(active: buildkit_pb.GetEndpointResponse.ActiveConnection) -> tuple[float, float]:
    """Mutual TLS to the front door with the build's material, then ListWorkers; the seconds
    of the handshake (with making the client's TLS context) and of the call after it."""
    started = time.monotonic()
    assert active.ca_cert is not None
    assert active.cert is not None
    assert active.cert.cert is not None
    assert active.cert.key is not None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=active.ca_cert.cert)
    context.set_alpn_protocols(["h2"])
    # ssl loads a client certificate from files only.
    with tempfile.TemporaryDirectory() as scratch:
        cert, key = Path(scratch) / "cert.pem", Path(scratch) / "key.pem"
        cert.write_text(active.cert.cert.cert)
        key.write_text(active.cert.key.key)
        context.load_cert_chain(cert, key)
    host, port = active.endpoint.removeprefix("tcp://").rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=active.server_name) as tls,
    ):
        handshaken = time.monotonic()
        grpc_unary_over(tls, active.server_name, LIST_WORKERS)
        answered = time.monotonic()
    return handshaken - started, answered - handshaken


def _depot_build(stage: Stage, context: Path, output: Path) -> None:
    home = stage.scratch / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "DEPOT_API_URL": stage.server.url,
        "DEPOT_TOKEN": stage.server.org_token,
        "DEPOT_NO_UPDATE_NOTIFIER": "1",
    }
    args = [str(DEPOT), "build", "--project", stage.project_id, "--network", "none"]
    args += ["--progress", "plain", "--output", f"type=local,dest={output}", str(context)]
    _run(args, env, "depot build")


def _docker_build(engine: DockerEngine, host: str, context: Path, output: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env |= {"DOCKER_BUILDKIT": "1", "DOCKER_CONFIG": str(engine.directory / "client")}
    args = [str(DOCKER), "-H", host, "build", "--network", "none"]
    args += ["--progress", "plain", "--output", f"type=local,dest={output}", str(context)]
    _run(args, env, "docker build")


def _run(args: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{what} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")


class Forwarder:
    """TCP on 127.0.0.1 to the engine's unix socket, byte for byte with the agent's own splice,
    without TLS or admission: the docker CLI through it shows what one more hop costs."""

    def __init__(self, target: Path) -> None:
        self._target = target
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.host = f"tcp://127.0.0.1:{started}"

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        daemon = await asyncio.open_unix_connection(str(self._target))
        await splice((reader, writer), daemon)

    def cpu_seconds(self) -> float:
        """CPU time of the forwarder's thread so far (its loop runs every connection)."""
        return asyncio.run_coroutine_threadsafe(self._thread_cpu(), self._loop).result(10)

    async def _thread_cpu(self) -> float:
        return time.thread_time()

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@contextmanager
def _forwarder(target: Path) -> Iterator[Forwarder]:
    forwarder = Forwarder(target)
    try:
        yield forwarder
    finally:
        forwarder.close()


def _new_content(path: Path, size: int) -> None:
    """New random bytes, so no build finds the context in a cache."""
    with path.open("wb") as file:
        for _ in range(0, size, 1 << 22):
            file.write(os.urandom(min(1 << 22, size - file.tell())))


def _prune(engine: DockerEngine) -> None:
    engine.docker("builder", "prune", "--all", "--force", timeout=BUILD_TIMEOUT)


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _call(server: servers.Server, path: str, body: dict[str, object]) -> dict[str, dict[str, str]]:
    request = urllib.request.Request(
        f"{server.url}/{path}",
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {server.org_token}",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        parsed: dict[str, dict[str, str]] = json.load(answer)
        return parsed


def _start_agent(
    server: servers.Server, engine: DockerEngine, scratch: Path
) -> subprocess.Popen[bytes]:
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
    with (scratch / "agent.log").open("wb") as log:
        return subprocess.Popen(
            [
                str(servers.BIN / "depot-api"), "agent", "--server", server.url,
                "--platform", "amd64", "--advertise", f"127.0.0.1:{port}",
                "--listen", f"127.0.0.1:{port}", "--docker-socket", str(engine.socket),
                "--state-dir", str(scratch / "agent"),
            ],
            env={**os.environ, "DEPOT_API_AGENT_TOKEN": token},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small numbers")
    parser.add_argument("--only", metavar="TEXT", action="append")
    args = parser.parse_args()
    for text in run(QUICK if args.quick else FULL, args.only):
        print(text, flush=True)


if __name__ == "__main__":
    main()
