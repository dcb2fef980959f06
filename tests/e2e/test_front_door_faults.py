"""Faults around a machine's front door, end to end with real agents, real servers and the real
depot CLI: a client that vanishes in the middle of a build, a daemon that dies in the middle of
one, and a Docker Engine that is absent or refuses the BuildKit upgrade.

The vanishing client and the engine that comes late use the private Docker Engine (the real
BuildKit: `buildkit` tests); the dying daemon is the stand-in, which a real one cannot be made
to do on cue. Every test runs on both databases: each ends in what the server decides (the
liveness rule, the failed build, which machine a build gets).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import signal
import socketserver
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.buildkit.v1 import buildkit_pb
from depot_api.models import Build, BuildStatus, Machine
from depot_api.store import Store, open_store
from tests.databases import BACKENDS, database
from tests.docker_engine import DockerEngine
from tests.helpers import ServerProcess, running_server

from .conftest import admin
from .machines import (
    AMD64,
    QUICK,
    STANDIN,
    STANDIN_WORKER,
    AgentProcess,
    Api,
    agent,
    api_for,
    bearer,
    list_workers,
    wait_for,
)
from .test_agent_failures import admin_lines, logged
from .test_depot_cli import CLI_VERSION, DEPOT

SOLVE = "grpc /moby.buildkit.v1.Control/Solve"
LIST_WORKERS = "grpc /moby.buildkit.v1.Control/ListWorkers"


@dataclass
class Setup:
    server: ServerProcess
    token: str  # the machine token
    api: Api
    store: Store


@contextmanager
def setup_on(backend: str, root: Path, timings: dict[str, str]) -> Iterator[Setup]:
    """A server on the backend, a machine token, an organization's API clients, and the
    server's own store to read what it holds."""
    with ExitStack() as stack:
        url = stack.enter_context(database(backend, root))
        server = stack.enter_context(running_server(root / "data", "--database", url, env=timings))
        token = admin(server, "create-machine-token")
        yield Setup(server, token, api_for(server, server.org_token), open_store(server.database))


@pytest.fixture(params=BACKENDS)
async def quick(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    """Quick timings: a silent build is canceled after 8 s, an unused machine released
    after 1 s."""
    with setup_on(request.param, tmp_path / "server", QUICK) as made:
        try:
            yield made
        finally:
            await made.store.close()


# A machine stays bound while its project's builds come and go; GetEndpoint waits long.
PATIENT = {**QUICK, "DEPOT_API_ACQUIRE_TIMEOUT": "120", "DEPOT_API_MACHINE_IDLE_RELEASE": "120"}


@pytest.fixture(params=BACKENDS)
async def patient(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    with setup_on(request.param, tmp_path / "server", PATIENT) as made:
        try:
            yield made
        finally:
            await made.store.close()


@pytest.fixture(scope="module", autouse=True)
def depot_cli_installed() -> None:
    if not DEPOT.exists():
        pytest.fail("the depot CLI is not installed in tests/e2e/node: run `make install`")
    version = subprocess.run([str(DEPOT), "--version"], capture_output=True, text=True, check=True)
    assert f"depot version {CLI_VERSION} " in version.stdout, version.stdout


@contextmanager
def depot_build(
    server_url: str, token: str, project_id: str, context: Path, *args: str, home: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`depot build` running in the background, as CI runs it (no terminal, plain progress),
    its output in a file; yields the process and that file. Killed (by its PID) at the end
    if still running."""
    home.mkdir(exist_ok=True)
    output = home / "depot-build.log"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "DEPOT_API_URL": server_url,
        "DEPOT_TOKEN": token,
        "DEPOT_NO_UPDATE_NOTIFIER": "1",
    }
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [str(DEPOT), "build", "--project", project_id, "--progress", "plain", *args,
             str(context)],
            stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=home,
        )  # fmt: skip
    try:
        yield process, output
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)


def text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


async def wait_until(condition: object, within: float, what: str) -> None:
    await asyncio.to_thread(wait_for, condition, within, what)


async def only_build(setup: Setup, project_id: str) -> Build:
    (build,) = await setup.store.builds.list_builds(project_id, None, 10)
    return build


async def build_status(setup: Setup, build_id: str) -> Build:
    build = await setup.store.builds.get_build(build_id)
    assert build is not None
    return build


def dockerfile(directory: Path, body: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "Dockerfile").write_text(body)
    return directory


# --- a client that vanishes mid-build -----------------------------------------------------


def sleeping(engine: DockerEngine) -> list[psutil.Process]:
    """The RUN step's `sleep 30`, among the engine's processes."""
    try:
        processes = psutil.Process(engine.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if process.cmdline() == ["sleep", "30"]:
                found.append(process)
    return found


def connection_lines(setup: Setup, build_id: str) -> list[str]:
    return admin_lines(setup.server, "list-connections", "--build", build_id)


def counted(line: str, direction: str) -> int:
    """The bytes a list-connections line counts one way (`in` or `out`)."""
    (field,) = [part for part in line.split() if part.startswith(f"{direction}=")]
    return int(field.split("=", 1)[1])


@pytest.mark.buildkit
async def test_a_client_that_vanishes_mid_build_is_cut_and_its_build_canceled(
    quick: Setup, docker_engine: DockerEngine, tmp_path: Path
) -> None:
    setup = quick
    log = tmp_path / "agent.log"
    with agent(
        setup.server.url, setup.token, tmp_path / "state", docker_socket=docker_engine.socket,
        log=log,
    ) as machine:  # fmt: skip
        project_id = await setup.api.project("vanishes")
        context = dockerfile(
            tmp_path / "context", f"FROM {docker_engine.base_image}\nRUN sleep 30\n"
        )
        with depot_build(
            setup.server.url, setup.server.org_token, project_id, context,
            "--network", "none", "--output", f"type=local,dest={tmp_path / 'out'}",
            home=tmp_path / "home",
        ) as (cli, output):  # fmt: skip
            await wait_until(
                lambda: "RUN sleep 30" in text(output) or cli.poll() is not None,
                120,
                "the build to reach its RUN step",
            )
            assert cli.poll() is None, text(output)
            await wait_until(lambda: sleeping(docker_engine), 30, "the RUN step's process")
            build = await only_build(setup, project_id)
            cli.kill()  # SIGKILL: no FinishBuild, no goodbye on the connection
            cli.wait(30)

        # The front door saw the client go and closed the daemon's side: the connection is
        # reported ended, with the bytes of a real build each way.
        def ended() -> list[str]:
            return [
                line
                for line in connection_lines(setup, build.id)
                if " admitted " in line and " duration=" in line
            ]

        await wait_until(ended, 30, "the connection to be reported ended")
        (line,) = ended()
        assert counted(line, "in") > 1000 and counted(line, "out") > 1000, line
        assert logged(log, "level=ERROR") == []
        # BuildKit, its client gone, cancels the build: the step's process ends long before
        # its 30 s.
        await wait_until(lambda: not sleeping(docker_engine), 20, "the RUN step to be stopped")

        # Nobody reports the build's health any more: the liveness rule cancels it.
        held = await build_status(setup, build.id)
        for _ in range(300):  # up to a minute; the window is 8 s
            if held.status is not BuildStatus.RUNNING:
                break
            await asyncio.sleep(0.2)
            held = await build_status(setup, build.id)
        assert held.status is BuildStatus.CANCELED
        assert held.error_message == "canceled: the client stopped reporting health"

        # The machine serves the next build, to its end.
        next_context = dockerfile(
            tmp_path / "next", f"FROM {docker_engine.base_image}\nRUN echo built > /built\n"
        )
        out = tmp_path / "next-out"
        with depot_build(
            setup.server.url, setup.server.org_token, project_id, next_context,
            "--network", "none", "--output", f"type=local,dest={out}",
            home=tmp_path / "next-home",
        ) as (cli, output):  # fmt: skip
            status = await asyncio.to_thread(cli.wait, 120)
        assert status == 0, text(output)
        assert (out / "built").read_text() == "built\n"
        builds = await setup.store.builds.list_builds(project_id, None, 10)
        assert [b.status for b in builds] == [BuildStatus.SUCCESS, BuildStatus.CANCELED]
        assert machine.process.poll() is None


# --- a daemon that dies mid-build --------------------------------------------------------


def hanging_standin(directory: Path) -> Path:
    """The stand-in in hang mode, by a wrapper that execs it (same PID, as the agent's
    child): a build's calls stay unanswered, as on a daemon busy building."""
    program = directory / "hanging-buildkitd"
    program.write_text(f'#!/bin/sh\nSTANDIN_BUILDKITD_HANG=1 exec "{STANDIN}" "$@"\n')
    program.chmod(0o755)
    return program


def standin_pid(machine: AgentProcess, project_id: str) -> int:
    started = machine.state_dir / "cache" / project_id / "standin-started"
    pid: int = json.loads(started.read_text())["pid"]
    return pid


def names_lost_connection(message: str) -> bool:
    return "Unavailable" in message and "error reading from server: EOF" in message


async def test_a_daemon_that_dies_mid_build_fails_the_build_and_comes_back(
    patient: Setup, tmp_path: Path
) -> None:
    setup = patient
    log = tmp_path / "agent.log"
    program = hanging_standin(tmp_path)
    with agent(setup.server.url, setup.token, tmp_path / "state", buildkitd=program, log=log) as (
        machine
    ):
        project_id = await setup.api.project("dies")
        context = dockerfile(tmp_path / "context", "FROM scratch\nCOPY hello /hello\n")
        (context / "hello").write_text("hello\n")
        with depot_build(
            setup.server.url, setup.server.org_token, project_id, context, home=tmp_path / "home"
        ) as (cli, output):
            await wait_until(
                lambda: SOLVE in machine.events(project_id) or cli.poll() is not None,
                60,
                "the CLI's Solve to reach the daemon",
            )
            assert cli.poll() is None, text(output)
            daemon_pid = standin_pid(machine, project_id)
            os.kill(daemon_pid, signal.SIGKILL)
            status = await asyncio.to_thread(cli.wait, 120)
        # The CLI lost its connection when the daemon died, said so, and failed the build
        # with that text.
        printed = text(output)
        assert status != 0, printed
        # The CLI words the same error in one of two wrappings, depending on which of its
        # goroutines sees the lost connection first: gRPC's "rpc error: code = Unavailable
        # desc = …" or buildx's "failed to solve: Unavailable: …". Both name the code and
        # the cause.
        assert names_lost_connection(printed), printed
        build = await only_build(setup, project_id)
        assert build.status is BuildStatus.FAILED
        assert build.error_message is not None
        assert names_lost_connection(build.error_message), build.error_message

        # The agent saw the daemon die, said so once, started it again, and said so once.
        await wait_until(
            lambda: logged(log, "buildkitd is ready again"), 30, "the daemon to be ready again"
        )
        (died,) = logged(log, "level=WARNING")
        assert "buildkitd was killed by signal SIGKILL; starting it again in 1 s" in died
        assert len(logged(log, "buildkitd is ready again", level="INFO")) == 1
        assert standin_pid(machine, project_id) != daemon_pid
        await wait_until(
            lambda: " ready=yes " in admin_lines(setup.server, "list-machines")[0],
            30,
            "the machine to be ready",
        )
        (listed,) = admin_lines(setup.server, "list-machines")
        assert f"project={project_id} ready=yes" in listed
        assert "error='-'" in listed

        # The next build of the project gets the machine, and its daemon answers.
        next_build = await setup.api.build(project_id)
        active = await asyncio.wait_for(endpoint(setup.api, next_build), 60)
        assert active.endpoint == machine.endpoint
        assert await asyncio.to_thread(list_workers, active) == [STANDIN_WORKER]
        events = machine.events(project_id)
        restarted = len(events) - events[::-1].index("started")
        assert LIST_WORKERS in events[restarted:]
        await setup.api.finish(next_build.build_id)


async def endpoint(
    api: Api, build: build_pb.CreateBuildResponse
) -> buildkit_pb.GetEndpointResponse.ActiveConnection:
    """The active connection GetEndpoint ends with."""
    async for message in api.buildkit.get_endpoint(
        buildkit_pb.GetEndpointRequest(build_id=build.build_id, platform=AMD64),
        headers=bearer(build.build_token),
    ):
        assert message.connection is not None
        if message.connection.field == "active":
            active = message.connection.value
            assert isinstance(active, buildkit_pb.GetEndpointResponse.ActiveConnection)
            return active
    raise AssertionError("GetEndpoint ended without an active connection")


# --- a Docker Engine that is absent, or refuses the upgrade ---------------------------------


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Not Docker Engine: 404 to everything, the BuildKit upgrade included."""

    def do_POST(self) -> None:
        self.server.requests += 1  # type: ignore[attr-defined]
        # The head alone: the agent hangs up once it has read it.
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass  # its default names the client's address, which a unix socket has not


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    requests = 0


@contextmanager
def refusing_engine(path: Path) -> Iterator[_UnixHTTPServer]:
    """A tiny HTTP server on the unix socket `path`, answering 404 to POST /grpc. The socket
    file is left where it is: the test replaces it."""
    server = _UnixHTTPServer(str(path), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class Waiting:
    """A build's GetEndpoint stream, read in the background: what it has said so far."""

    def __init__(self, api: Api, build: build_pb.CreateBuildResponse) -> None:
        self.messages: list[str] = []
        self.active: buildkit_pb.GetEndpointResponse.ActiveConnection | None = None
        self.task = asyncio.create_task(self._read(api, build))

    async def _read(self, api: Api, build: build_pb.CreateBuildResponse) -> None:
        async for message in api.buildkit.get_endpoint(
            buildkit_pb.GetEndpointRequest(build_id=build.build_id, platform=AMD64),
            headers=bearer(build.build_token),
        ):
            assert message.connection is not None
            self.messages.append(message.connection.field)
            if message.connection.field == "active":
                active = message.connection.value
                assert isinstance(active, buildkit_pb.GetEndpointResponse.ActiveConnection)
                self.active = active

    def still_pending(self) -> None:
        assert not self.task.done(), self.task
        assert self.messages and set(self.messages) == {"pending"}, self.messages


@pytest.mark.buildkit
async def test_a_docker_engine_absent_then_refusing_gets_no_build_until_it_is_there(
    patient: Setup, docker_engine: DockerEngine, tmp_path: Path
) -> None:
    setup = patient
    socket_path = tmp_path / "docker.sock"  # nothing there yet
    log = tmp_path / "agent.log"
    absent = f"Docker Engine at {socket_path} cannot be reached: No such file or directory"
    refused = f"Docker Engine at {socket_path} refused the BuildKit upgrade: HTTP/1.0 404 Not Found"

    def machine_line() -> str:
        (line,) = admin_lines(setup.server, "list-machines")
        return line

    async def machine_row() -> Machine:
        (row,) = await setup.store.machines.list_machines()
        return row

    with agent(
        setup.server.url, setup.token, tmp_path / "state", docker_socket=socket_path,
        log=log, log_level="debug",
    ) as machine:  # fmt: skip
        # Absent: said once, tried again at every heartbeat, and carried in each.
        await wait_until(lambda: absent in machine_line(), 30, "the machine to carry the error")
        project_id = await setup.api.project("engine")
        waiting = Waiting(setup.api, await setup.api.build(project_id))
        try:
            seen = len(logged(log, absent))
            await wait_until(lambda: len(logged(log, absent)) >= seen + 10, 30, "ten heartbeats")
            await wait_until(lambda: len(waiting.messages) >= 2, 30, "two pending answers")
            (warning,) = logged(log, absent, level="WARNING")
            assert "this machine gets no builds, and the agent keeps trying" in warning
            assert len(logged(log, absent, level="DEBUG")) >= 9
            row = await machine_row()
            assert row.buildkit_error is not None and absent in row.buildkit_error
            assert row.project_id is None and not row.ready
            assert " project=- ready=no " in machine_line()
            # The build waits: the machine is there, but not bound to it.
            waiting.still_pending()

            # Something answers on the socket, but not as Docker Engine: a new state.
            with refusing_engine(socket_path) as impostor:
                await wait_until(lambda: impostor.requests >= 10, 30, "ten upgrade attempts")
                (warning,) = logged(log, refused, level="WARNING")
                assert "is this Docker Engine 20.10 or newer with BuildKit?" in warning
                assert len(logged(log, absent, level="WARNING")) == 1
                assert refused in machine_line()
                assert " project=- ready=no " in machine_line()
                row = await machine_row()
                assert row.buildkit_error is not None and refused in row.buildkit_error
                waiting.still_pending()

                # The engine appears at that path in one step, as a restarted engine's socket
                # does; the impostor stops only once nothing can reach it any more. Said
                # once; the machine takes the build.
                link = tmp_path / "docker.sock.new"
                link.symlink_to(docker_engine.socket)
                link.replace(socket_path)
                await asyncio.wait_for(waiting.task, 60)
        finally:
            waiting.task.cancel()
            await asyncio.gather(waiting.task, return_exceptions=True)  # a failed test's, too
        active = waiting.active
        assert active is not None
        assert active.endpoint == machine.endpoint
        workers = await asyncio.to_thread(list_workers, active)
        assert workers and STANDIN_WORKER not in workers
        assert len(logged(log, f"the Docker Engine at {socket_path} answers again")) == 1
        assert len(logged(log, level="WARNING")) == 2
        await wait_until(lambda: " ready=yes " in machine_line(), 30, "the machine to be ready")
        assert f"project={project_id} ready=yes" in machine_line()
        assert machine_line().endswith("error='-'")
        assert (await machine_row()).buildkit_error is None
