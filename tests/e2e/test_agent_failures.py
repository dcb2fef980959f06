"""The agent's missteps, each with one clear line: options it cannot use and refusals end it
at once; an unreachable server, a missing or failing buildkitd are retried with backoff and
logged once when they start and once when they end. Real agents against real servers."""

from __future__ import annotations

import asyncio
import http.server
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from depot_api.domain.token_format import mint
from depot_api.models import TokenKind
from tests.helpers import BIN, ServerProcess, running_server, stop_process

from .conftest import admin
from .machines import (
    QUICK,
    STANDIN,
    STANDIN_WORKER,
    agent,
    agent_env,
    api_for,
    free_port,
    get_endpoint,
    list_workers,
    wait_for,
)

# A bound machine stays bound, and GetEndpoint waits, for the whole test.
PATIENT = {**QUICK, "DEPOT_API_ACQUIRE_TIMEOUT": "120", "DEPOT_API_MACHINE_IDLE_RELEASE": "120"}
AGENT = str(BIN / "depot-api")


@pytest.fixture
def patient(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    """A server (SQLite) whose machines stay bound, and a machine token. Builds wait for a
    machine even before any agent was heard from: here, agents come late on purpose."""
    with running_server(tmp_path / "data", "--wait-for-machines", env=PATIENT) as server:
        yield server, admin(server, "create-machine-token")


def run_agent(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run an agent that should end by itself; the timeout only stops one that never does."""
    return subprocess.run(
        [AGENT, "agent", *args], env=env, capture_output=True, text=True, timeout=30
    )


def logged(log: Path, *words: str, level: str | None = None) -> list[str]:
    """The agent's log lines holding all the words (and at that level, if given)."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [
        line
        for line in lines
        if all(word in line for word in words) and (level is None or f"level={level} " in line)
    ]


@pytest.mark.parametrize(
    ("where", "value", "line"),
    [
        (
            "--server",
            "127.0.0.1:18461",
            'depot-api agent: --server "127.0.0.1:18461" is not a URL; give http://127.0.0.1:18461',
        ),
        (
            "DEPOT_API_AGENT_SERVER",
            "127.0.0.1:18461",
            'depot-api agent: DEPOT_API_AGENT_SERVER "127.0.0.1:18461" is not a URL; '
            "give http://127.0.0.1:18461",
        ),
        (
            "--server",
            "ftp://127.0.0.1:18461",
            'depot-api agent: --server "ftp://127.0.0.1:18461" must start with http:// or https://',
        ),
        (
            "DEPOT_API_AGENT_ADVERTISE",
            "buildkit-1",
            'depot-api agent: DEPOT_API_AGENT_ADVERTISE "buildkit-1" must be HOST:PORT with a '
            "port 1-65535, e.g. buildkit-1.internal:1234",
        ),
        (
            "DEPOT_API_AGENT_CAPACITY",
            "lots",
            'depot-api agent: DEPOT_API_AGENT_CAPACITY "lots" must be a whole number '
            "from 0 to 1000",
        ),
    ],
)
def test_an_option_it_cannot_use_ends_it_at_once_with_one_line(
    tmp_path: Path, where: str, value: str, line: str
) -> None:
    settings = {
        "--server": "http://127.0.0.1:18461",
        "--platform": "amd64",
        "--advertise": "127.0.0.1:18462",
        "--buildkitd": str(STANDIN),
        "--state-dir": str(tmp_path / "state"),
    }
    variables = {}
    if where.startswith("--"):
        settings[where] = value
    else:
        variables[where] = value
        settings.pop("--" + where.removeprefix("DEPOT_API_AGENT_").lower(), None)
    flags = [part for pair in settings.items() for part in pair]
    result = run_agent(*flags, env=agent_env("dpm_unused", **variables))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [line]
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("token", "cause"),
    [
        ("revoked", "refused the machine token (unauthenticated: token has been revoked)"),
        ("unknown", "refused the machine token (unauthenticated: unknown token"),
        ("malformed", "refused the machine token (unauthenticated: malformed token"),
        ("organization", "refused the machine token (permission_denied:"),
    ],
)
def test_a_refused_token_ends_it_with_one_line(
    patient: tuple[ServerProcess, str], tmp_path: Path, token: str, cause: str
) -> None:
    server, _ = patient
    if token == "revoked":
        created, secret = admin_lines(server, "create-machine-token")
        admin(server, "revoke-token", "--token", created.split()[2])
    else:
        secret = {
            "unknown": mint(TokenKind.MACHINE),
            "malformed": "dpm_typo",
            "organization": server.org_token,
        }[token]
    result = run_agent(
        "--server", server.url,
        "--platform", "amd64",
        "--advertise", f"127.0.0.1:{free_port()}",
        "--buildkitd", str(STANDIN),
        "--state-dir", str(tmp_path / "state"),
        env=agent_env(secret),
    )  # fmt: skip
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"depot-api agent: {server.url} {cause}")
    assert admin_lines(server, "list-machines") == []


def test_a_token_revoked_while_it_runs_ends_it_with_one_line(
    patient: tuple[ServerProcess, str], tmp_path: Path
) -> None:
    server, _ = patient
    created, secret = admin_lines(server, "create-machine-token")
    log = tmp_path / "agent.log"
    with agent(server.url, secret, tmp_path / "state", log=log) as machine:
        wait_for(lambda: logged(log, "registered as machine"), 30, "the agent to register")
        admin(server, "revoke-token", "--token", created.split()[2])
        assert machine.process.wait(timeout=30) == 1
    assert log.read_text().splitlines()[-1] == (
        f"depot-api agent: {server.url} no longer accepts the machine token "
        "(unauthenticated: token has been revoked)"
    )
    assert logged(log, "heartbeat failed") == []


def test_a_server_that_is_not_depot_api_ends_it_with_one_line(tmp_path: Path) -> None:
    with not_depot_api() as url:
        result = run_agent(
            "--server", url,
            "--platform", "amd64",
            "--advertise", f"127.0.0.1:{free_port()}",
            "--buildkitd", str(STANDIN),
            "--state-dir", str(tmp_path / "state"),
            env=agent_env("dpm_unused"),
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"depot-api agent: {url} does not serve depot-api's machine service; check --server "
        "(unimplemented: Not Found)"
    ]


def test_an_unreachable_server_is_one_warning_until_it_answers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (_, token) = admin_at(data, "create-machine-token")  # the server is not up yet
    port = free_port()
    log = tmp_path / "agent.log"
    url = f"http://127.0.0.1:{port}"
    with agent(
        url, token, tmp_path / "state", log=log, log_level="debug", registered=False
    ) as machine:
        refused = lambda: logged(log, "cannot register", "Connection refused")  # noqa: E731
        wait_for(lambda: len(refused()) >= 3, 30, "three registration attempts")
        # One warning; the attempts after it are debug lines, each waiting longer.
        first, second, third = refused()[:3]
        assert "level=WARNING" in first and "trying again in 1 s" in first
        assert "level=DEBUG" in second and "trying again in 2 s" in second
        assert "level=DEBUG" in third and "trying again in 4 s" in third

        with running_server(data, "--port", str(port), env=QUICK) as server:
            wait_for(lambda: logged(log, "registered as machine"), 60, "the agent to register")
            assert len(admin_lines(server, "list-machines")) == 1
            assert len(logged(log, "level=WARNING")) == 1
            assert len(logged(log, f"{url} answers again", level="INFO")) == 1
        assert machine.process.poll() is None


def test_heartbeat_failures_are_logged_once_per_outage(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (_, token) = admin_at(data, "create-machine-token")
    port = free_port()
    log = tmp_path / "agent.log"
    url = f"http://127.0.0.1:{port}"
    with agent(url, token, tmp_path / "state", log=log, log_level="debug", registered=False):
        with running_server(data, "--port", str(port), env=QUICK):
            wait_for(lambda: logged(log, "registered as machine"), 30, "the agent to register")
        # The server is gone; heartbeats (every 0.2 s) keep failing.
        failed = lambda: logged(log, "heartbeat failed")  # noqa: E731
        wait_for(lambda: len(failed()) >= 5, 30, "five failed heartbeats")
        with running_server(data, "--port", str(port), env=QUICK):
            wait_for(lambda: logged(log, "answers heartbeats again"), 30, "heartbeats to work")
            # Checked while this server is up: when it stops, the next outage begins.
            assert len(logged(log, "heartbeat failed", level="WARNING")) == 1
            assert len(logged(log, "answers heartbeats again", level="INFO")) == 1


async def test_a_missing_buildkitd_is_one_warning_and_found_once_installed(
    patient: tuple[ServerProcess, str], tmp_path: Path
) -> None:
    server, token = patient
    api = api_for(server, server.org_token)
    program = tmp_path / "bin" / "buildkitd"
    log = tmp_path / "agent.log"
    state = tmp_path / "state"
    with agent(server.url, token, state, buildkitd=program, log=log, registered=False) as machine:
        build = await api.build(await api.project("missing"))
        waiting = asyncio.create_task(get_endpoint(api.buildkit, build))
        try:
            await asyncio.sleep(5)  # the agent meanwhile: not one line a second
            (warning,) = logged(log, "level=WARNING")
            assert f"--buildkitd {program}: no such executable program" in warning
            assert "Install BuildKit, or pass --buildkitd PATH" in warning
            assert "gets no builds" in warning
            assert logged(log, "cannot start") == []
            # Unregistered: the server has no machine to give the build.
            assert admin_lines(server, "list-machines") == []
            assert not waiting.done()

            # Installed later: the agent finds it, registers, and serves the build.
            program.parent.mkdir()
            program.write_text(f'#!/bin/sh\nexec "{STANDIN}" "$@"\n')
            program.chmod(0o755)
            _, active = await asyncio.wait_for(waiting, 90)
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)  # a failed test's, too
        assert active.endpoint == machine.endpoint
        assert await asyncio.to_thread(list_workers, active) == [STANDIN_WORKER]
        assert len(logged(log, f"found buildkitd: {program}")) == 1
        await api.finish(build.build_id)


async def test_a_daemon_that_keeps_failing_is_restarted_less_often_and_logged_once(
    patient: tuple[ServerProcess, str], tmp_path: Path
) -> None:
    server, token = patient
    api = api_for(server, server.org_token)
    runs, fixed = tmp_path / "runs", tmp_path / "fixed"
    program = tmp_path / "failing-buildkitd"
    program.write_text(
        "#!/bin/sh\n"
        f'echo run >> "{runs}"\n'
        f'if [ -e "{fixed}" ]; then exec "{STANDIN}" "$@"; fi\n'
        'echo "failing-buildkitd: cannot run here" >&2\n'
        "exit 3\n"
    )
    program.chmod(0o755)
    log = tmp_path / "agent.log"

    def started() -> int:
        return len(runs.read_text().splitlines()) if runs.exists() else 0

    with agent(server.url, token, tmp_path / "state", buildkitd=program, log=log) as machine:
        build = await api.build(await api.project("failing"))
        waiting = asyncio.create_task(get_endpoint(api.buildkit, build))
        try:
            await asyncio.to_thread(wait_for, lambda: started() >= 1, 30, "a first start")
            # Heartbeats come every 0.2 s; restarts 1, 2, 4 … s apart.
            await asyncio.sleep(5)
            assert started() <= 5  # one start per heartbeat would be about 25
            (warning,) = logged(log, "level=WARNING")
            assert "buildkitd exited with status 3; starting it again in 1 s" in warning
            assert len(logged(log, "readying buildkitd for project", level="INFO")) == 1
            assert logged(log, "ready again") == []
            admin_line = admin_lines(server, "list-machines")[0]
            assert "ready=no" in admin_line
            assert "error='buildkitd exited with status 3'" in admin_line

            fixed.touch()
            _, active = await asyncio.wait_for(waiting, 90)
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)  # a failed test's, too
        assert active.endpoint == machine.endpoint
        assert await asyncio.to_thread(list_workers, active) == [STANDIN_WORKER]
        await asyncio.to_thread(
            wait_for, lambda: logged(log, "buildkitd is ready again"), 10, "the recovery line"
        )
        assert len(logged(log, "level=WARNING")) == 1
        await api.finish(build.build_id)


async def test_every_setting_may_come_from_the_environment(
    patient: tuple[ServerProcess, str], tmp_path: Path
) -> None:
    server, token = patient
    api = api_for(server, server.org_token)
    port = free_port()
    variables = {
        "DEPOT_API_AGENT_SERVER": server.url,
        "DEPOT_API_AGENT_TOKEN": token,
        "DEPOT_API_AGENT_PLATFORM": "arm64",  # the flag below wins
        "DEPOT_API_AGENT_ADVERTISE": f"127.0.0.1:{port}",
        "DEPOT_API_AGENT_LISTEN": f"127.0.0.1:{port}",
        "DEPOT_API_AGENT_BUILDKITD": str(STANDIN),
        "DEPOT_API_AGENT_STATE_DIR": str(tmp_path / "env-state"),
        "DEPOT_API_AGENT_CAPACITY": "3",
        "DEPOT_API_AGENT_LOG_LEVEL": "warning",
    }
    log = tmp_path / "agent.log"
    with agent_configured_by(variables, "--platform", "amd64", log=log):
        project = await api.project("from-env")
        build = await api.build(project)
        _, active = await asyncio.wait_for(get_endpoint(api.buildkit, build), 60)
        assert active.endpoint == f"tcp://127.0.0.1:{port}"
        assert await asyncio.to_thread(list_workers, active) == [STANDIN_WORKER]
        assert (tmp_path / "env-state" / "cache" / project).is_dir()
        (machine,) = admin_lines(server, "list-machines")
        assert f" amd64 127.0.0.1:{port} " in machine
        assert logged(log, level="INFO") == []  # "registered as machine …" is info
        await api.finish(build.build_id)


def admin_lines(server: ServerProcess, *args: str) -> list[str]:
    """All the output lines of an admin command on the server's database."""
    return admin_at(server.data_dir, *args, "--database", server.database)


def admin_at(data_dir: Path, *args: str) -> list[str]:
    """All the output lines of an admin command on a data directory (no server needed)."""
    result = subprocess.run(
        [AGENT, "admin", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.splitlines()


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def not_depot_api() -> Iterator[str]:
    """Another web server on 127.0.0.1, answering every request 404; yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def agent_configured_by(variables: dict[str, str], *flags: str, log: Path) -> Iterator[None]:
    """An agent given its settings in DEPOT_API_AGENT_* variables (and the flags)."""
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [AGENT, "agent", *flags],
            env={**agent_env(""), **variables},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        yield
    finally:
        stop_process(process)
