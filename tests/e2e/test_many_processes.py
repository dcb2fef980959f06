"""Several stateless server processes over one PostgreSQL: whichever answers, the answer is
the same, races have exactly one winner, and killing one process loses nothing acknowledged."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from protobuf import Oneof

from depot_api.domain.secretbox import SecretBox
from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.build.v1.build_connect import BuildServiceClient
from depot_api.gen.depot.buildkit.v1.buildkit_connect import BuildKitServiceClient
from depot_api.gen.depot.core.v1 import build_pb as core_build_pb
from depot_api.gen.depot.core.v1 import project_pb
from depot_api.gen.depot.core.v1.build_connect import BuildServiceClient as CoreBuildClient
from depot_api.gen.depot.core.v1.project_connect import ProjectServiceClient
from tests.databases import database
from tests.helpers import ServerProcess, running_server

from .conftest import admin
from .machines import QUICK, AgentProcess, agent, get_endpoint

SUCCESS = Oneof("success", build_pb.FinishBuildRequest.BuildSuccess())


def failure(message: str) -> Oneof:  # type: ignore[type-arg]
    return Oneof("error", build_pb.FinishBuildRequest.BuildError(error=message))


@dataclass
class Node:
    server: ServerProcess
    projects: ProjectServiceClient
    builds: BuildServiceClient
    core_builds: CoreBuildClient


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Two servers, on two ports, with two data directories, over one PostgreSQL database."""
    root = tmp_path_factory.mktemp("many")
    with ExitStack() as stack:
        url = stack.enter_context(database("postgresql", root))
        yield [
            stack.enter_context(running_server(root / name, "--database", url))
            for name in ("a", "b")
        ]


@pytest.fixture
async def nodes(servers: list[ServerProcess]) -> AsyncIterator[list[Node]]:
    clients = []
    for server in servers:
        clients.append(
            Node(
                server,
                ProjectServiceClient(server.url),
                BuildServiceClient(server.url),
                CoreBuildClient(server.url),
            )
        )
    yield clients
    for node in clients:
        await node.projects.close()
        await node.builds.close()
        await node.core_builds.close()


def auth(servers: list[ServerProcess]) -> dict[str, str]:
    # Only the first server to start bootstraps the database: it holds the token.
    (token,) = {s.org_token for s in servers if s.org_token}
    return {"authorization": f"Bearer {token}"}


async def new_project(node: Node, h: dict[str, str], name: str) -> str:
    created = await node.projects.create_project(
        project_pb.CreateProjectRequest(name=name, region_id="us-east-1"), headers=h
    )
    return created.project.project_id


async def test_only_one_server_bootstrapped(servers: list[ServerProcess]) -> None:
    assert sorted(bool(s.org_token) for s in servers) == [False, True]


async def test_a_build_created_on_one_is_finished_on_the_other(
    servers: list[ServerProcess], nodes: list[Node]
) -> None:
    a, b = nodes
    h = auth(servers)
    pid = await new_project(a, h, "handover")
    build = await a.builds.create_build(build_pb.CreateBuildRequest(project_id=pid), headers=h)
    await b.builds.finish_build(
        build_pb.FinishBuildRequest(build_id=build.build_id, outcome=SUCCESS),
        headers={"authorization": f"Bearer {build.build_token}"},
    )
    seen = await a.core_builds.get_build(
        core_build_pb.GetBuildRequest(build_id=build.build_id), headers=h
    )
    assert seen.build.status == core_build_pb.Build.Status.SUCCESS


async def test_a_token_revoked_on_one_is_refused_by_the_other_at_once(
    servers: list[ServerProcess], nodes: list[Node]
) -> None:
    a, b = nodes
    h = auth(servers)
    pid = await new_project(a, h, "revocation")
    token = await a.projects.create_token(
        project_pb.CreateTokenRequest(project_id=pid, description="ci"), headers=h
    )
    as_token = {"authorization": f"Bearer {token.secret}"}
    await b.builds.create_build(build_pb.CreateBuildRequest(project_id=pid), headers=as_token)
    await a.projects.delete_token(project_pb.DeleteTokenRequest(token_id=token.token_id), headers=h)
    with pytest.raises(ConnectError) as raised:
        await b.builds.create_build(build_pb.CreateBuildRequest(project_id=pid), headers=as_token)
    assert raised.value.code == Code.UNAUTHENTICATED


async def test_concurrent_finishes_across_processes_have_one_winner(
    servers: list[ServerProcess], nodes: list[Node]
) -> None:
    h = auth(servers)
    pid = await new_project(nodes[0], h, "finish-race")
    for round_ in range(30):
        build = await nodes[round_ % 2].builds.create_build(
            build_pb.CreateBuildRequest(project_id=pid), headers=h
        )
        attempts = [
            (nodes[i % 2], SUCCESS if i % 2 == round_ % 2 else failure(f"e{i}")) for i in range(6)
        ]
        results = await asyncio.gather(
            *(
                node.builds.finish_build(
                    build_pb.FinishBuildRequest(build_id=build.build_id, outcome=outcome),
                    headers=h,
                )
                for node, outcome in attempts
            ),
            return_exceptions=True,
        )
        won = {
            o.field
            for (_, o), r in zip(attempts, results, strict=True)
            if not isinstance(r, BaseException)
        }
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(won) == 1, results
        assert lost, "the other outcome must have lost"
        assert all(isinstance(e, ConnectError) and e.code == Code.FAILED_PRECONDITION for e in lost)
        final = await nodes[1].core_builds.get_build(
            core_build_pb.GetBuildRequest(build_id=build.build_id), headers=h
        )
        expected = (
            core_build_pb.Build.Status.SUCCESS
            if won == {"success"}
            else core_build_pb.Build.Status.FAILED
        )
        assert final.build.status == expected


async def test_concurrent_creates_of_one_name_have_one_winner(
    servers: list[ServerProcess], nodes: list[Node]
) -> None:
    h = auth(servers)
    for round_ in range(10):
        results = await asyncio.gather(
            *(
                nodes[i % 2].projects.create_project(
                    project_pb.CreateProjectRequest(name=f"same-{round_}", region_id="us-east-1"),
                    headers=h,
                )
                for i in range(6)
            ),
            return_exceptions=True,
        )
        created = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(created) == 1, results
        assert all(isinstance(e, ConnectError) and e.code == Code.ALREADY_EXISTS for e in refused)
    listed = await nodes[0].projects.list_projects(project_pb.ListProjectsRequest(), headers=h)
    names = [p.name for p in listed.projects if p.name.startswith("same-")]
    assert sorted(names) == sorted(f"same-{i}" for i in range(10))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two fresh servers over a fresh database, for a test that kills one of them."""
    with ExitStack() as stack:
        url = stack.enter_context(database("postgresql", tmp_path))
        a = stack.enter_context(running_server(tmp_path / "a", "--database", url))
        b = stack.enter_context(running_server(tmp_path / "b", "--database", url))
        yield a, b


async def test_killing_one_process_loses_nothing_acknowledged(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = pair
    h = {"authorization": f"Bearer {a.org_token or b.org_token}"}
    node_a = Node(a, ProjectServiceClient(a.url), BuildServiceClient(a.url), CoreBuildClient(a.url))
    node_b = Node(b, ProjectServiceClient(b.url), BuildServiceClient(b.url), CoreBuildClient(b.url))
    pid = await new_project(node_b, h, "crash")
    acknowledged: list[str] = []

    async def load(node: Node) -> None:
        for _ in range(200):
            try:
                build = await node.builds.create_build(
                    build_pb.CreateBuildRequest(project_id=pid), headers=h
                )
            except ConnectError:
                return  # the process is gone: nothing more is acknowledged through it
            acknowledged.append(build.build_id)

    async def kill_a_soon() -> None:
        await asyncio.sleep(0.5)
        _kill_tree(a.process.pid)

    await asyncio.gather(load(node_a), load(node_b), kill_a_soon())
    assert a.process.wait(timeout=10) != 0

    # b kept serving through the crash, and every acknowledged build exists.
    stored: list[str] = []
    token = ""
    while True:
        page = await node_b.core_builds.list_builds(
            core_build_pb.ListBuildsRequest(project_id=pid, page_size=1000, page_token=token),
            headers=h,
        )
        stored += [x.build_id for x in page.builds]
        if not (token := page.next_page_token):
            break
    assert len(acknowledged) > 200  # b ran all of its requests; a some before it died
    assert set(acknowledged) <= set(stored)
    for node in (node_a, node_b):
        await node.projects.close()
        await node.builds.close()
        await node.core_builds.close()


def _kill_tree(pid: int) -> None:
    """SIGKILL the server and its worker processes (Envoy), which it started."""
    children = _children(pid)
    os.kill(pid, signal.SIGKILL)
    for child in children:
        os.kill(child, signal.SIGKILL)


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_workers_share_one_port(tmp_path: Path, backend: str) -> None:
    with (
        database(backend, tmp_path) as url,
        running_server(tmp_path / "data", "--database", url, "--workers", "2") as server,
    ):
        assert "(2 workers)" in "".join(server.output)
        workers = [p for p in _children(server.process.pid) if "envoy" in _command(p)]
        assert len(workers) == 2
        h = {"authorization": f"Bearer {server.org_token}"}
        node = Node(
            server,
            ProjectServiceClient(server.url),
            BuildServiceClient(server.url),
            CoreBuildClient(server.url),
        )
        pid = await new_project(node, h, "workers")
        # Separate connections, so the kernel spreads them across both workers.
        clients = [BuildServiceClient(server.url) for _ in range(8)]
        built = await asyncio.gather(
            *(
                c.create_build(build_pb.CreateBuildRequest(project_id=pid), headers=h)
                for c in clients
                for _ in range(5)
            )
        )
        listed = await node.core_builds.list_builds(
            core_build_pb.ListBuildsRequest(project_id=pid), headers=h
        )
        assert {b.build_id for b in built} == {b.build_id for b in listed.builds}
        for c in clients:
            await c.close()
        await node.projects.close()
        await node.builds.close()
        await node.core_builds.close()


def _children(pid: int) -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and _parent_of(int(e)) == pid]


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def machine_pair(tmp_path: Path) -> Iterator[tuple[list[ServerProcess], list[AgentProcess]]]:
    """Two servers over one PostgreSQL (sharing the sealing key), and two agents, one
    registered through each server."""
    env = {**QUICK, "DEPOT_API_SECRET_KEY": SecretBox.generate_key().decode()}
    with ExitStack() as stack:
        url = stack.enter_context(database("postgresql", tmp_path))
        servers = [
            stack.enter_context(running_server(tmp_path / name, "--database", url, env=env))
            for name in ("a", "b")
        ]
        token = admin(servers[0], "create-machine-token")
        agents = [
            stack.enter_context(agent(server.url, token, tmp_path / f"agent-{i}"))
            for i, server in enumerate(servers)
        ]
        yield servers, agents


async def test_concurrent_get_endpoint_across_processes(
    machine_pair: tuple[list[ServerProcess], list[AgentProcess]],
) -> None:
    """Builds of four projects acquire through both servers at once, with two machines: no
    machine serves two projects at once, every build is served or told to retry, none hangs."""
    servers, agents = machine_pair
    h = auth(servers)
    nodes = [
        (ProjectServiceClient(s.url), BuildServiceClient(s.url), BuildKitServiceClient(s.url))
        for s in servers
    ]
    projects = []
    for i in range(4):
        created = await nodes[i % 2][0].create_project(
            project_pb.CreateProjectRequest(name=f"race-{i}", region_id="us-east-1"), headers=h
        )
        projects.append(created.project.project_id)
    held: list[tuple[str, str, float, float]] = []

    async def one(index: int, project: str) -> str:
        _, builds, buildkit = nodes[index % 2]
        build = await builds.create_build(
            build_pb.CreateBuildRequest(project_id=project), headers=h
        )
        try:
            _, active = await get_endpoint(buildkit, build)
        except ConnectError as e:
            return "retry" if e.code == Code.RESOURCE_EXHAUSTED else f"error {e.code}"
        start = time.monotonic()
        await asyncio.sleep(0.3)
        end = time.monotonic()
        await builds.finish_build(
            build_pb.FinishBuildRequest(build_id=build.build_id, outcome=SUCCESS), headers=h
        )
        held.append((active.endpoint, project, start, end))
        return "served"

    outcomes = await asyncio.wait_for(
        asyncio.gather(*(one(i, p) for i in range(3) for p in projects)), 60
    )
    assert set(outcomes) <= {"served", "retry"}, outcomes
    assert outcomes.count("served") >= 2
    assert {endpoint for endpoint, *_ in held} <= {a.endpoint for a in agents}
    for i, (endpoint, project, start, end) in enumerate(held):
        for other_endpoint, other_project, other_start, other_end in held[i + 1 :]:
            if endpoint == other_endpoint and project != other_project:
                assert end <= other_start or other_end <= start, "a machine served two projects"
    for client_set in nodes:
        for client in client_set:
            await client.close()
