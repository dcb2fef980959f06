"""Real builds, end to end, on both databases: the official depot CLI against a real server,
one agent whose front door fronts a real BuildKit (the private Docker Engine's), and the
server's record of each build and of every connection the front door saw.

The Engine runs without a network (tests/docker_engine.py), so every build uses
`--network none` and starts FROM the base image made from busybox.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from depot_api.models import BuildStatus, MachineConnection
from depot_api.store import Store, open_store
from tests.databases import BACKENDS, database
from tests.docker_engine import DockerEngine
from tests.helpers import ServerProcess, running_server

from .conftest import admin
from .machines import (
    QUICK,
    AgentProcess,
    Api,
    agent,
    api_for,
    get_endpoint,
    list_workers,
    mtls_list_workers,
)
from .test_depot_cli import DEPOT, depot

pytestmark = pytest.mark.buildkit

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class Site:
    """A server on one database, and one agent fronting the Engine's BuildKit."""

    server: ServerProcess
    agent: AgentProcess
    engine: DockerEngine


@pytest.fixture(scope="module", params=BACKENDS)
def site(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    docker_engine: DockerEngine,
) -> Iterator[Site]:
    if not DEPOT.exists():
        pytest.fail("the depot CLI is not installed in tests/e2e/node: run `make install`")
    root = tmp_path_factory.mktemp(f"real-{request.param}")
    with ExitStack() as stack:
        url = stack.enter_context(database(request.param, root))
        # A short build deadline would end the builds here; the default (a day) is kept.
        server = stack.enter_context(running_server(root / "data", "--database", url, env=QUICK))
        token = admin(server, "create-machine-token", "--description", "real builds")
        machine = stack.enter_context(
            agent(server.url, token, root / "agent", docker_socket=docker_engine.socket)
        )
        yield Site(server, machine, docker_engine)


@pytest.fixture(scope="module")
def org_token_of_site(site: Site) -> str:
    """One organization for the module's tests (each test makes projects of its own): the
    admin commands cost seconds each."""
    org_id = admin(site.server, "create-org", "--name", "real builds")
    return admin(site.server, "create-token", "--org", org_id)


@pytest.fixture
async def api(site: Site, org_token_of_site: str) -> Api:
    return api_for(site.server, org_token_of_site)


@pytest.fixture
async def store(site: Site) -> AsyncIterator[Store]:
    opened = open_store(site.server.database)
    try:
        yield opened
    finally:
        await opened.close()


def org_token(api: Api) -> str:
    return api.org["authorization"].removeprefix("Bearer ")


def context_dir(directory: Path, run: str, marker: str | None = None) -> Path:
    """A build context whose RUN step writes what it read, and marks it as its own."""
    directory.mkdir(parents=True)
    (directory / "input.txt").write_text(f"{marker or secrets.token_hex(8)}\n")
    (directory / "Dockerfile").write_text(
        f"FROM depot-api-test-base:latest\nCOPY input.txt /work/input.txt\nRUN {run}\n"
    )
    return directory


WRITES_OUTPUT = "cat /work/input.txt > /work/output.txt && echo written-by-run >> /work/output.txt"


def build(
    site: Site, api: Api, project_id: str, context: Path, output: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return depot(
        site.server.url, org_token(api), "build", "--project", project_id,
        "--network", "none", "--progress", "plain",
        "--output", f"type=local,dest={output}", *extra, str(context),
        home=context.parent / "home",
    )  # fmt: skip


def run_step_cached(output: str) -> bool:
    """Whether the plain progress shows the RUN step as CACHED: its vertex, `#N [3/3] RUN …`,
    followed by a line `#N CACHED`."""
    numbers = {
        line.split()[0] for line in output.splitlines() if "] RUN " in line and line.startswith("#")
    }
    assert numbers, f"no RUN step in the progress:\n{output}"
    return any(f"{number} CACHED" in output for number in numbers)


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"exit {result.returncode}\n{output}"
    return output


async def only_build(api: Api, store: Store, project_id: str) -> str:
    builds = await store.builds.list_builds(project_id, None, 10)
    assert len(builds) == 1, builds
    return builds[0].id


async def connections_of(store: Store, build_id: str) -> list[MachineConnection]:
    """The front door's reports of a build, once the agent has sent them all (it reports
    ended connections with its next heartbeat)."""
    deadline = time.monotonic() + 15
    while True:
        found = await store.connections.list_connections(
            machine_id=None, build_id=build_id, limit=100
        )
        if found and all(c.closed_at is not None for c in found):
            return found
        assert time.monotonic() < deadline, f"connections of {build_id}: {found}"
        await asyncio.sleep(0.2)


async def test_a_build_runs_and_its_output_comes_back(
    site: Site, api: Api, store: Store, tmp_path: Path
) -> None:
    project_id = await api.project("real")
    context = context_dir(tmp_path / "ctx", WRITES_OUTPUT, marker="first-real-build")
    output = await asyncio.to_thread(
        succeeded, build(site, api, project_id, context, tmp_path / "out")
    )
    assert (tmp_path / "out" / "work" / "output.txt").read_text() == (
        "first-real-build\nwritten-by-run\n"
    )
    assert "[depot] connecting to amd64 machine" in output
    build_id = await only_build(api, store, project_id)
    held = await store.builds.get_build(build_id)
    assert held is not None and held.status is BuildStatus.SUCCESS
    # The build's connection came in through the front door, admitted, and carried the build.
    connections = await connections_of(store, build_id)
    assert all(c.admitted for c in connections), connections
    assert sum(c.bytes_from_client for c in connections) > 1000
    assert sum(c.bytes_to_client for c in connections) > 1000


async def test_the_same_build_again_is_cached(
    site: Site, api: Api, store: Store, tmp_path: Path
) -> None:
    project_id = await api.project("again")
    context = context_dir(tmp_path / "ctx", WRITES_OUTPUT)
    first = succeeded(build(site, api, project_id, context, tmp_path / "out1"))
    assert not run_step_cached(first)
    second = succeeded(build(site, api, project_id, context, tmp_path / "out2"))
    assert run_step_cached(second), second
    assert (tmp_path / "out2" / "work" / "output.txt").read_text() == (
        (tmp_path / "out1" / "work" / "output.txt").read_text()
    )


async def test_a_failing_step_fails_the_build_with_its_error(
    site: Site, api: Api, store: Store, tmp_path: Path
) -> None:
    project_id = await api.project("failing")
    context = context_dir(tmp_path / "ctx", "echo about-to-fail >&2 && exit 1")
    result = build(site, api, project_id, context, tmp_path / "out")
    assert result.returncode != 0
    assert "about-to-fail" in result.stdout + result.stderr
    held = await store.builds.get_build(await only_build(api, store, project_id))
    assert held is not None and held.status is BuildStatus.FAILED
    assert held.error_message is not None
    assert "exit code: 1" in held.error_message, held.error_message


async def test_a_cache_reset_makes_the_steps_run_again(
    site: Site, api: Api, tmp_path: Path
) -> None:
    project_id = await api.project("reset")
    context = context_dir(tmp_path / "ctx", WRITES_OUTPUT)
    succeeded(build(site, api, project_id, context, tmp_path / "out1"))
    assert run_step_cached(succeeded(build(site, api, project_id, context, tmp_path / "out2")))
    reset = depot(
        site.server.url, org_token(api), "cache", "reset", "--project", project_id,
        home=tmp_path / "home",
    )  # fmt: skip
    assert reset.returncode == 0, reset.stderr
    third = succeeded(build(site, api, project_id, context, tmp_path / "out3"))
    assert not run_step_cached(third), third


async def test_two_projects_one_after_the_other_share_the_machine(
    site: Site, api: Api, store: Store, tmp_path: Path
) -> None:
    first, second = await api.project("first"), await api.project("second")
    ok_first = build(site, api, first, context_dir(tmp_path / "a", WRITES_OUTPUT), tmp_path / "oa")
    succeeded(ok_first)
    # The machine is given back after its idle second, then bound to the second project.
    ok_second = build(
        site, api, second, context_dir(tmp_path / "b", WRITES_OUTPUT), tmp_path / "ob"
    )
    succeeded(ok_second)
    machines = {
        c.machine_id
        for project in (first, second)
        for c in await connections_of(store, await only_build(api, store, project))
    }
    assert len(machines) == 1  # one agent served both, one after the other


async def test_two_builds_of_one_project_at_once(site: Site, api: Api, tmp_path: Path) -> None:
    project_id = await api.project("together")
    contexts = [context_dir(tmp_path / f"c{n}", WRITES_OUTPUT, marker=f"m{n}") for n in (1, 2)]
    results = await asyncio.gather(
        *(
            asyncio.to_thread(build, site, api, project_id, context, tmp_path / f"o{n}")
            for n, context in enumerate(contexts, 1)
        )
    )
    for n, result in enumerate(results, 1):
        succeeded(result)
        assert (tmp_path / f"o{n}" / "work" / "output.txt").read_text().startswith(f"m{n}\n")


async def test_the_sdk_path_reaches_buildkit_through_the_front_door(
    site: Site, api: Api, store: Store
) -> None:
    project_id = await api.project("sdk")
    created = await api.build(project_id)
    _, active = await get_endpoint(api.buildkit, created)
    assert active.endpoint == site.agent.endpoint
    workers = await asyncio.to_thread(list_workers, active)
    assert workers and all(workers)  # the Engine's own worker IDs
    await api.finish(created.build_id)
    (connection,) = await connections_of(store, created.build_id)
    assert connection.admitted and connection.bytes_to_client > 0


async def test_the_front_door_refuses_and_the_daemon_never_sees_it(
    site: Site, api: Api, store: Store
) -> None:
    """Each refused connection is reported with not a byte forwarded either way."""
    project_a, project_b = await api.project("door-a"), await api.project("door-b")
    build_a = await api.build(project_a)
    _, active_a = await get_endpoint(api.buildkit, build_a)
    # An ended build's certificate: valid TLS, refused by the server's admission.
    await api.finish(build_a.build_id)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.to_thread(list_workers, active_a)
    # Another project's build, once project B has the machine: its certificate is signed by
    # B's CA, which this binding does not trust.
    build_b = await api.build(project_b)
    _, active_b = await get_endpoint(api.buildkit, build_b)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.to_thread(
            mtls_list_workers,
            active_b.endpoint,
            active_b.server_name,
            active_a.cert.cert.cert,
            active_a.cert.key.key,
            active_b.ca_cert.cert,
        )
    host, port = active_b.endpoint.removeprefix("tcp://").rsplit(":", 1)

    def plain_tcp() -> bytes:
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(PREFACE)
            return raw.recv(100)

    def no_certificate() -> None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=active_b.ca_cert.cert)
        with (
            socket.create_connection((host, int(port)), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=active_b.server_name) as tls,
        ):
            tls.sendall(PREFACE)
            if not tls.recv(1):
                raise ConnectionResetError("closed")

    assert PREFACE not in await asyncio.to_thread(plain_tcp)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.to_thread(no_certificate)
    # B's own build still gets in.
    assert await asyncio.to_thread(list_workers, active_b)
    await api.finish(build_b.build_id)

    machine = (await connections_of(store, build_b.build_id))[0].machine_id
    deadline = time.monotonic() + 15
    while True:
        seen = await store.connections.list_connections(machine_id=machine, build_id=None, limit=50)
        refusals = {c.refusal for c in seen if not c.admitted and c.closed_at is not None}
        wanted = {
            f"build {build_a.build_id} has ended (success)",
            "the client does not speak TLS",
            "the client sent no certificate",
        }
        if wanted <= refusals and any("client certificate is refused" in r for r in refusals):
            break
        assert time.monotonic() < deadline, refusals
        await asyncio.sleep(0.2)
    for refused in (c for c in seen if not c.admitted):
        assert (refused.bytes_from_client, refused.bytes_to_client) == (0, 0), refused
