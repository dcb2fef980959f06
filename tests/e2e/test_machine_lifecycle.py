"""Machines that go away: a lost machine's builds move to another, and a drained machine's
agent stops once the machine is free. Each test has its own server and agents."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import psutil
import pytest

from tests.helpers import ServerProcess, running_server

from .conftest import admin
from .machines import QUICK, STANDIN_WORKER, agent, api_for, get_endpoint, list_workers, wait_for


@pytest.fixture
def lonely(tmp_path: Path) -> Iterator[tuple[ServerProcess, str, ExitStack]]:
    """A server (SQLite) and a machine token; agents are started by the test."""
    with ExitStack() as stack:
        server = stack.enter_context(running_server(tmp_path / "data", env=QUICK))
        token = admin(server, "create-machine-token")
        yield server, token, stack


async def test_a_lost_machines_build_gets_another(
    lonely: tuple[ServerProcess, str, ExitStack], tmp_path: Path
) -> None:
    server, token, stack = lonely
    api = api_for(server, server.org_token)
    first = stack.enter_context(agent(server.url, token, tmp_path / "first"))
    build = await api.build(await api.project("moves"))
    _, before = await get_endpoint(api.buildkit, build)
    assert before.endpoint == first.endpoint

    # The host dies without a word (and its daemon with it); another one comes up.
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=10)
    await asyncio.to_thread(
        wait_for, lambda: _daemons_alive(first.state_dir) == 0, 20, "its daemon to die with it"
    )
    # A machine that missed three heartbeats (0.6 s here) is no longer handed out; one silent
    # for the lost-after period (2 s here) is unbound, and its builds get another.
    await asyncio.sleep(1)
    second = stack.enter_context(agent(server.url, token, tmp_path / "second"))
    _, after = await get_endpoint(api.buildkit, build)
    assert after.endpoint == second.endpoint
    assert await asyncio.to_thread(list_workers, after) == [STANDIN_WORKER]
    await api.finish(build.build_id)


async def test_a_drained_machine_stops_when_free(
    lonely: tuple[ServerProcess, str, ExitStack], tmp_path: Path
) -> None:
    server, token, stack = lonely
    api = api_for(server, server.org_token)
    machine = stack.enter_context(agent(server.url, token, tmp_path / "drained"))
    project = await api.project("drain")
    build = await api.build(project)
    await get_endpoint(api.buildkit, build)
    (line,) = admin(server, "list-machines").splitlines()
    admin(server, "drain-machine", "--machine", line.split()[0])
    await asyncio.sleep(1.5)
    assert machine.process.poll() is None  # it still serves its build
    await api.finish(build.build_id)
    # Free after the idle period: the daemon stops, then the agent exits cleanly.
    await asyncio.to_thread(wait_for, lambda: machine.process.poll() is not None, 20, "exit")
    assert machine.process.returncode == 0
    # The daemon's own life, without the agent's calls to it (readiness, cache size).
    lifecycle = machine.lifecycle(project)
    assert lifecycle == ["started", "stopped"]


def _daemons_alive(state_dir: Path) -> int:
    """How many daemons the agent started are still running. A daemon that exited but was not
    yet reaped (its parent, the agent, is gone, and reaping falls to the machine's init, whenever
    that gets to it) is a zombie: it has died."""
    alive = 0
    for started in state_dir.glob("cache/*/standin-started"):
        pid = json.loads(started.read_text())["pid"]
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive += 1
    return alive
