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
import contextlib
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import psutil
from protobuf import Oneof
from pyqwest import Client, HTTPTransport, HTTPVersion

from bench import servers
from depot_api.agent.docker_engine import HEAD_END, UPGRADE_REQUEST
from depot_api.agent.front_door import tls_context
from depot_api.agent.splice import splice
from depot_api.domain import pki
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
SUCCESS: Oneof[Literal["success"], build_pb.FinishBuildRequest.BuildSuccess] = Oneof(
    "success", build_pb.FinishBuildRequest.BuildSuccess()
)


@dataclass(frozen=True)
class Plan:
    context_mb: int
    builds_each_way: int
    latency_builds: int


FULL = Plan(context_mb=200, builds_each_way=5, latency_builds=50)
QUICK = Plan(context_mb=20, builds_each_way=2, latency_builds=5)


FRONT_DOOR = "through the front door (depot CLI)"
DIRECT = "straight to the daemon (docker CLI)"
FORWARDED = "through a plain forwarder (docker CLI; the agent's splice, no TLS)"
TLS_FORWARDED = "through a TLS forwarder (docker CLI; the agent's TLS settings and splice)"
PATHS = (FRONT_DOOR, DIRECT, FORWARDED, TLS_FORWARDED)


@dataclass
class Throughput:
    context_bytes: int
    seconds: dict[str, list[float]]  # each path's builds
    cpu_seconds: dict[str, list[float]]  # the agent's or forwarder's, for each build

    def mb_s(self, path: str) -> float:
        return self.context_bytes / MB / statistics.median(self.seconds[path])

    def describe(self) -> str:
        def listed(values: list[float]) -> str:
            return ", ".join(f"{v:.2f}" for v in values)

        direct = self.mb_s(DIRECT)
        lines = [
            f"Front door throughput: a {self.context_bytes / MB:.0f} MB context, "
            f"{len(self.seconds[DIRECT])} builds by each path (median MB/s of context, its "
            f"share of direct; CPU seconds per build of the agent or forwarder):"
        ]
        for path in PATHS:
            cpu = self.cpu_seconds.get(path)
            used = f", {statistics.median(cpu):.2f} CPU s" if cpu else ""
            lines.append(
                f"  {path}: {self.mb_s(path):.1f} MB/s, {self.mb_s(path) / direct:.0%}{used} "
                f"(builds of {listed(self.seconds[path])} s)"
            )
        return "\n".join(lines)


@dataclass
class Latency:
    create_build: list[float]
    get_endpoint: list[float]
    tls: list[float]
    first_call: list[float]  # admission and ListWorkers, after the handshake
    # For reference: ListWorkers straight on the engine's socket, its /grpc upgrade included.
    direct_call: list[float]

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
        lines.append(
            f"  for reference, ListWorkers straight on the engine's socket (its /grpc upgrade "
            f"included): p50 {_ms(self.direct_call, 50)}, p99 {_ms(self.direct_call, 99)}"
        )
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


def run(plan: Plan, only: list[str] | None, *, insights: bool = True) -> list[str]:
    """Run the front door scenarios that `only` selects (all without it); their descriptions.
    insights: the agent reads and reports the builds' status (its default), or not."""
    wanted = [s for s in SCENARIOS if not only or any(text in s for text in only)]
    if not wanted:
        return []
    if not DEPOT.exists():
        raise RuntimeError(f"the depot CLI is not installed at {DEPOT}: run `make install`")
    described = []
    with _stage(insights) as stage:
        if THROUGHPUT in wanted:
            described.append(
                throughput(stage, plan).describe()
                + f"\n  (the agent's build insights: {'on' if insights else 'off'})"
            )
        if LATENCY in wanted:
            described.append(asyncio.run(latency(stage, plan)).describe())
    return described


@contextmanager
def _stage(insights: bool) -> Iterator[Stage]:
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
            agent = _start_agent(server, engine, scratch, insights)
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
    result = Throughput(
        size + (context / "Dockerfile").stat().st_size,
        {path: [] for path in PATHS},
        {path: [] for path in (FRONT_DOOR, FORWARDED, TLS_FORWARDED)},
    )
    tls = _tls_files(stage.scratch / "tls")
    # One warm-up build by each path (the machine binding, the base image's first use), then
    # the paths in turn, so that a drift in the machine's speed touches all of them.
    with (
        _forwarder(stage.engine.socket) as plain,
        _forwarder(stage.engine.socket, tls.server_context()) as secured,
    ):
        cpu = {FRONT_DOOR: lambda: _cpu_seconds(agent), FORWARDED: plain.cpu_seconds}
        cpu[TLS_FORWARDED] = secured.cpu_seconds
        for index in range(plan.builds_each_way + 1):
            for path in PATHS:
                _new_content(context / "big", size)
                _prune(stage.engine)
                output = stage.scratch / f"out-{PATHS.index(path)}-{index}"
                cpu_before = cpu[path]() if path in cpu else 0.0
                started = time.monotonic()
                if path == FRONT_DOOR:
                    _depot_build(stage, context, output)
                elif path == DIRECT:
                    _docker_build(stage.engine, stage.engine.host, context, output)
                elif path == FORWARDED:
                    _docker_build(stage.engine, plain.host, context, output)
                else:
                    _docker_build(stage.engine, secured.host, context, output, tls.docker_flags())
                elapsed = time.monotonic() - started
                written = (output / "size").read_text().split()[0]
                if int(written) != size:
                    raise RuntimeError(f"the build {path} saw {written} bytes of {size}")
                if index == 0:
                    continue
                result.seconds[path].append(elapsed)
                if path in cpu:
                    result.cpu_seconds[path].append(cpu[path]() - cpu_before)
    return result


async def latency(stage: Stage, plan: Plan) -> Latency:
    http = Client(HTTPTransport(http_version=HTTPVersion.HTTP2))
    builds = BuildServiceClient(stage.server.url, http_client=http)
    buildkit = BuildKitServiceClient(stage.server.url, http_client=http)
    org = {"authorization": f"Bearer {stage.server.org_token}"}
    result = Latency([], [], [], [], [])
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
                outcome=SUCCESS,
            ),
            headers=mine,
        )
        if index == 0:  # the warm-up: the machine's binding to the project is made here
            continue
        result.create_build.append(created_at - started)
        result.get_endpoint.append(active_at - created_at)
        result.tls.append(handshake)
        result.first_call.append(answered)
        result.direct_call.append(await asyncio.to_thread(_direct_call, stage.engine.socket))
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


def _direct_call(engine_socket: Path) -> float:
    """ListWorkers on the engine's own socket, as the agent reaches it: the seconds it took."""
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(30)
        connection.connect(str(engine_socket))
        connection.sendall(UPGRADE_REQUEST)
        head = b""
        # Byte by byte: what follows the head is HTTP/2, for the probe to read.
        while not head.endswith(HEAD_END):
            byte = connection.recv(1)
            if not byte:
                raise ConnectionError(f"the engine closed during the upgrade: {head!r}")
            head += byte
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"the engine refused the upgrade: {head!r}")
        grpc_unary_over(connection, "docker", LIST_WORKERS)
    return time.monotonic() - started


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


def _docker_build(
    engine: DockerEngine, host: str, context: Path, output: Path, tls: list[str] | None = None
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env |= {"DOCKER_BUILDKIT": "1", "DOCKER_CONFIG": str(engine.directory / "client")}
    args = [str(DOCKER), "-H", host, *(tls or []), "build", "--network", "none"]
    args += ["--progress", "plain", "--output", f"type=local,dest={output}", str(context)]
    _run(args, env, "docker build")


def _run(args: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{what} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")


class Forwarder:
    """TCP on 127.0.0.1 to the engine's unix socket, byte for byte with the agent's own splice,
    without admission, and without TLS or with the agent's own TLS settings: the docker CLI
    through it shows what one more hop, and TLS on it, cost."""

    def __init__(self, target: Path, tls: ssl.SSLContext | None = None) -> None:
        self._target = target
        self._tls = tls
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        # localhost: the name in the TLS forwarder's certificate.
        self.host = f"tcp://localhost:{started}"

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Cancelled when the forwarder closes under a connection the client left open.
        with contextlib.suppress(asyncio.CancelledError, OSError):
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
            # A client may leave a connection open (the docker CLI's session, at its exit).
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@contextmanager
def _forwarder(target: Path, tls: ssl.SSLContext | None = None) -> Iterator[Forwarder]:
    forwarder = Forwarder(target, tls)
    try:
        yield forwarder
    finally:
        forwarder.close()


@dataclass(frozen=True)
class TlsFiles:
    """A CA, a server certificate for localhost and a client certificate, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self) -> ssl.SSLContext:
        return tls_context(self.server_cert, self.server_key, self.ca)

    def docker_flags(self) -> list[str]:
        return [
            "--tlsverify",
            f"--tlscacert={self.ca}",
            f"--tlscert={self.client_cert}",
            f"--tlskey={self.client_key}",
        ]


def _tls_files(directory: Path) -> TlsFiles:
    """Made as the server makes a project's: the same key type and certificate shapes."""
    now = datetime.now(UTC)
    later = now + timedelta(days=1)
    ca = pki.new_project_ca("bench", now=now)
    server = pki.issue_server_cert(ca, "localhost", now=now, not_after=later)
    client = pki.issue_client_cert(ca, "bench", now=now, not_after=later)
    directory.mkdir()
    files = TlsFiles(*(directory / name for name in ("ca", "scert", "skey", "ccert", "ckey")))
    for path, pem in zip(
        (files.ca, files.server_cert, files.server_key, files.client_cert, files.client_key),
        (ca.cert_pem, server.cert_pem, server.key_pem, client.cert_pem, client.key_pem),
        strict=True,
    ):
        path.write_text(pem)
        path.chmod(0o600)
    return files


def _new_content(path: Path, size: int) -> None:
    """New random bytes, so no build finds the context in a cache."""
    with path.open("wb") as file:
        for _ in range(0, size, 1 << 22):
            file.write(os.urandom(min(1 << 22, size - file.tell())))


def _prune(engine: DockerEngine) -> None:
    engine.docker("builder", "prune", "--all", "--force", timeout=BUILD_TIMEOUT)


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


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
    server: servers.Server, engine: DockerEngine, scratch: Path, insights: bool
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
                "--build-insights", "on" if insights else "off",
            ],
            env={**os.environ, "DEPOT_API_AGENT_TOKEN": token},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small numbers")
    parser.add_argument("--only", metavar="TEXT", action="append")
    parser.add_argument(
        "--insights",
        choices=("on", "off"),
        default="on",
        help="the agent's build insights (--build-insights); default on, as agents run",
    )
    args = parser.parse_args()
    for text in run(QUICK if args.quick else FULL, args.only, insights=args.insights == "on"):
        print(text, flush=True)


if __name__ == "__main__":
    main()
