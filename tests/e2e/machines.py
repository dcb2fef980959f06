"""End-to-end support for BuildKit machines: a server with quick machine timings, agents that
run the stand-in BuildKit daemon, and a probe that calls BuildKit through a machine's front
door with what GetEndpoint returned."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from connectrpc.codec import proto_json_codec
from connectrpc.protocol import ProtocolType
from protobuf import Oneof
from pyqwest import Client, HTTPTransport, HTTPVersion

from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.build.v1.build_connect import BuildServiceClient
from depot_api.gen.depot.buildkit.v1 import buildkit_pb
from depot_api.gen.depot.buildkit.v1.buildkit_connect import BuildKitServiceClient
from depot_api.gen.depot.core.v1 import project_pb
from depot_api.gen.depot.core.v1.build_connect import BuildServiceClient as CoreBuildClient
from depot_api.gen.depot.core.v1.project_connect import ProjectServiceClient
from depot_api.gen.moby.buildkit.v1 import daemon_pb
from tests.databases import BACKENDS, database
from tests.grpc_probe import grpc_unary_over
from tests.helpers import BIN, ServerProcess, running_server, stop_process

from .conftest import admin

AMD64 = buildkit_pb.Platform.AMD64
SUCCESS = Oneof("success", build_pb.FinishBuildRequest.BuildSuccess())

STANDIN = Path(__file__).resolve().parent.parent / "standin_buildkitd.py"
# The one worker the stand-in names in ListWorkers.
STANDIN_WORKER = "standin-buildkitd"

# Quick timings so the tests see machines come and go in seconds.
QUICK = {
    "DEPOT_API_MACHINE_HEARTBEAT": "0.2",
    "DEPOT_API_PENDING_INTERVAL": "0.5",
    "DEPOT_API_ACQUIRE_TIMEOUT": "10",
    "DEPOT_API_MACHINE_LOST_AFTER": "2",
    "DEPOT_API_MACHINE_IDLE_RELEASE": "1",
    "DEPOT_API_LIVENESS_WINDOW": "8",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    port: int
    state_dir: Path

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def cache_dirs(self) -> list[Path]:
        cache = self.state_dir / "cache"
        return sorted(cache.iterdir()) if cache.exists() else []

    def events(self, project_id: str) -> list[str]:
        path = self.state_dir / "cache" / project_id / "standin-events"
        return path.read_text().splitlines() if path.exists() else []

    def lifecycle(self, project_id: str) -> list[str]:
        """The stand-in's starts and stops for the project, without its gRPC calls (the agent
        itself asks ListWorkers and DiskUsage with its heartbeats)."""
        return [e for e in self.events(project_id) if not e.startswith("grpc ")]


@contextmanager
def agent(
    server_url: str,
    token: str,
    state_dir: Path,
    platform: str = "amd64",
    *,
    buildkitd: Path = STANDIN,
    docker_socket: Path | None = None,
    log: Path | None = None,
    log_level: str = "info",
    registered: bool = True,
) -> Iterator[AgentProcess]:
    """A `depot-api agent` running the stand-in daemon (or another --buildkitd, or fronting
    the Docker Engine whose API socket is `docker_socket`), its log in the file `log` (by
    default one beside the state directory); stopped (by its PID) at the end. Unless told
    not to wait, the block starts once the agent has registered: a build asking before any
    agent was heard from would be refused."""
    port = free_port()
    log = log or state_dir.with_name(f"{state_dir.name}.log")
    daemon = (
        ["--buildkitd", str(buildkitd)]
        if docker_socket is None
        else ["--docker-socket", str(docker_socket)]
    )
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [
                str(BIN / "depot-api"), "agent",
                "--server", server_url,
                "--platform", platform,
                "--advertise", f"127.0.0.1:{port}",
                "--listen", f"127.0.0.1:{port}",
                *daemon,
                "--state-dir", str(state_dir),
                "--log-level", log_level,
            ],
            env=agent_env(token),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )  # fmt: skip
    try:
        if registered:
            wait_for(
                lambda: b"registered as machine" in log.read_bytes() or process.poll() is not None,
                30,
                "the agent to register",
            )
            assert process.poll() is None, f"the agent exited:\n{log.read_text()}"
        yield AgentProcess(process, port, state_dir)
    finally:
        stop_process(process)


def agent_env(token: str, **variables: str) -> dict[str, str]:
    """The environment agents run in: the token, and the project's environment first on PATH
    (the stand-in's gRPC view needs h2)."""
    return {
        **os.environ,
        "DEPOT_API_AGENT_TOKEN": token,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **variables,
    }


def wait_for(condition: object, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def mtls_list_workers(
    endpoint: str, server_name: str, cert: str, key: str, ca: str, timeout: float = 5.0
) -> list[str]:
    """Call BuildKit's ListWorkers through a machine's front door with the given material, as
    a gRPC client does (mutual TLS, ALPN h2, HTTP/2); return the worker IDs it names.

    Raises ssl.SSLError or ConnectionError when either side refuses the other (the front door
    closes a connection it does not admit without a word)."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca)
    context.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory() as scratch:
        cert_file, key_file = Path(scratch) / "cert.pem", Path(scratch) / "key.pem"
        cert_file.write_text(cert)
        key_file.write_text(key)
        os.chmod(key_file, 0o600)
        context.load_cert_chain(cert_file, key_file)
    with (
        socket.create_connection((host, int(port)), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        body = grpc_unary_over(tls, server_name, "/moby.buildkit.v1.Control/ListWorkers")
    answer = daemon_pb.ListWorkersResponse.from_binary(body)
    return [record.ID for record in answer.record]


@dataclass
class Cluster:
    server: ServerProcess
    agents: list[AgentProcess]
    machine_token: str


@pytest.fixture(scope="module", params=BACKENDS)
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """One server with quick machine timings and two amd64 agents."""
    root = tmp_path_factory.mktemp(f"machines-{request.param}")
    with ExitStack() as stack:
        url = stack.enter_context(database(request.param, root))
        server = stack.enter_context(running_server(root / "data", "--database", url, env=QUICK))
        token = admin(server, "create-machine-token", "--description", "test agents")
        agents = [
            stack.enter_context(agent(server.url, token, root / f"agent-{i}")) for i in range(2)
        ]
        yield Cluster(server, agents, token)


@dataclass
class Api:
    projects: ProjectServiceClient
    builds: BuildServiceClient
    core_builds: CoreBuildClient
    buildkit: BuildKitServiceClient
    grpc_buildkit: BuildKitServiceClient
    json_buildkit: BuildKitServiceClient
    http: Client
    url: str
    org: dict[str, str]

    async def project(self, name: str) -> str:
        created = await self.projects.create_project(
            project_pb.CreateProjectRequest(name=name, region_id="us-east-1"), headers=self.org
        )
        return created.project.project_id

    async def build(self, project_id: str) -> build_pb.CreateBuildResponse:
        return await self.builds.create_build(
            build_pb.CreateBuildRequest(project_id=project_id), headers=self.org
        )

    async def finish(self, build_id: str) -> None:
        await self.builds.finish_build(
            build_pb.FinishBuildRequest(build_id=build_id, outcome=SUCCESS), headers=self.org
        )


@pytest.fixture
async def api(cluster: Cluster, request: pytest.FixtureRequest) -> Api:
    """Clients of the cluster's server, acting for a fresh organization."""
    server = cluster.server
    org_id = admin(server, "create-org", "--name", request.node.name[:100])
    return api_for(server, admin(server, "create-token", "--org", org_id))


def api_for(server: ServerProcess, org_token: str) -> Api:
    http = Client()
    return Api(
        projects=ProjectServiceClient(server.url, http_client=http),
        builds=BuildServiceClient(server.url, http_client=http),
        core_builds=CoreBuildClient(server.url, http_client=http),
        buildkit=BuildKitServiceClient(server.url, http_client=http),
        # gRPC needs HTTP/2 (trailers): prior knowledge over cleartext.
        grpc_buildkit=BuildKitServiceClient(
            server.url,
            protocol=ProtocolType.GRPC,
            http_client=Client(HTTPTransport(http_version=HTTPVersion.HTTP2)),
        ),
        json_buildkit=BuildKitServiceClient(server.url, codec=proto_json_codec(), http_client=http),
        http=http,
        url=server.url,
        org={"authorization": f"Bearer {org_token}"},
    )


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def get_endpoint(
    client: BuildKitServiceClient, build: build_pb.CreateBuildResponse
) -> tuple[int, buildkit_pb.GetEndpointResponse.ActiveConnection]:
    """Read the stream to its end: (number of pending messages, the active connection)."""
    pending, active = 0, None
    async for message in client.get_endpoint(
        buildkit_pb.GetEndpointRequest(build_id=build.build_id, platform=AMD64),
        headers=bearer(build.build_token),
    ):
        assert message.connection is not None
        assert active is None, "nothing may follow the active message"
        if message.connection.field == "pending":
            pending += 1
        else:
            active = message.connection.value
    assert isinstance(active, buildkit_pb.GetEndpointResponse.ActiveConnection)
    return pending, active


def list_workers(
    active: buildkit_pb.GetEndpointResponse.ActiveConnection, server_name: str = ""
) -> list[str]:
    return mtls_list_workers(
        active.endpoint,
        server_name or active.server_name,
        active.cert.cert.cert,
        active.cert.key.key,
        active.ca_cert.cert,
    )
