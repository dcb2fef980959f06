"""The machines page in a real headless Chromium, on both databases, with a real agent (running
the stand-in daemon) registered with a real server: the organization whose build uses the
machine sees its project and the build's connections; another organization sees the machine
but neither. Screenshots (desktop and phone) are kept under the test's tmp_path."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.databases import BACKENDS, database
from tests.helpers import ServerProcess, running_server

from .browser import sign_in, watch
from .conftest import admin
from .machines import (
    QUICK,
    STANDIN_WORKER,
    AgentProcess,
    agent,
    api_for,
    get_endpoint,
    list_workers,
)

# Quick heartbeats, but a build keeps its machine for the whole test without reporting health,
# and waits for the agent's first ready heartbeat as long as a loaded machine may need.
TIMINGS = {
    **QUICK,
    "DEPOT_API_LIVENESS_WINDOW": "300",
    "DEPOT_API_MACHINE_IDLE_RELEASE": "300",
    "DEPOT_API_ACQUIRE_TIMEOUT": "60",
}
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@dataclass
class OneMachine:
    server: ServerProcess
    agent: AgentProcess


@pytest.fixture(scope="module", params=BACKENDS)
def one_machine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OneMachine]:
    root = tmp_path_factory.mktemp(f"console-machines-{request.param}")
    with ExitStack() as stack:
        url = stack.enter_context(database(request.param, root))
        server = stack.enter_context(running_server(root / "data", "--database", url, env=TIMINGS))
        token = admin(server, "create-machine-token", "--description", "console test")
        yield OneMachine(server, stack.enter_context(agent(server.url, token, root / "agent")))


def _org(server: ServerProcess, name: str) -> str:
    org_id = admin(server, "create-org", "--name", name)
    return admin(server, "create-token", "--org", org_id, "--description", "console")


async def _a_build_on_the_machine(server: ServerProcess, token: str) -> tuple[str, str, Any]:
    """A build of a new project that got the machine: the project's and build's IDs, and the
    endpoint GetEndpoint answered."""
    api = api_for(server, token)
    project_id = await api.project("web <app>")
    build = await api.build(project_id)
    _, active = await get_endpoint(api.buildkit, build)
    return project_id, build.build_id, active


def _call_the_daemon(active: Any) -> None:
    """Through the front door: once with the build's certificate (admitted), once naming
    another server (refused). The agent reports both."""
    assert list_workers(active) == [STANDIN_WORKER]
    with pytest.raises((OSError, ConnectionError)):
        list_workers(active, "someone-else.example")


def _open_machines(page: Any, server: ServerProcess) -> None:
    page.click("nav >> text=Machines")
    page.wait_for_url(f"{server.url}/console/machines")


def test_the_machines_page_in_a_real_browser(
    one_machine: OneMachine, browser: Any, tmp_path: Path
) -> None:
    server = one_machine.server
    ours, theirs = _org(server, "ours"), _org(server, "theirs")
    with ThreadPoolExecutor(1) as thread:  # Playwright's sync API owns this thread's loop
        project_id, build_id, active = thread.submit(
            asyncio.run, _a_build_on_the_machine(server, ours)
        ).result()

    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    watched = watch(page)
    sign_in(page, server.url, ours)
    _open_machines(page, server)
    assert "web <app>" in page.inner_text("main")
    assert "No connections" in page.inner_text("main")
    # The page updates by itself: the connections show without a reload.
    _call_the_daemon(active)
    page.wait_for_selector(f"a[href='/console/builds/{build_id}']", timeout=30_000)
    page.wait_for_selector(".connections tr.refused", timeout=30_000)
    main = page.inner_text("main")
    assert "web <app>" in main and "amd64" in main and "ACTIVE" in main.upper()
    assert page.get_attribute(f"a[href='/console/projects/{project_id}']", "href")
    assert "admitted" in main and "refused" in main
    assert page.evaluate("document.cookie") == ""
    desktop = tmp_path / "console-machines-desktop.png"
    page.screenshot(path=str(desktop), full_page=True)
    page.set_viewport_size(PHONE)
    phone = tmp_path / "console-machines-phone.png"
    page.screenshot(path=str(phone), full_page=True)
    # Nothing is wider than the phone's screen but the connection table's own scroller.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    watched.assert_quiet()
    context.close()

    other = browser.new_context(viewport=DESKTOP)
    page = other.new_page()
    watched = watch(page)
    sign_in(page, server.url, theirs)
    _open_machines(page, server)
    main = page.inner_text("main")
    assert "another organization's project" in main
    assert "web <app>" not in main and build_id not in page.content()
    assert project_id not in page.content()
    assert "another organization's build" in main and "hidden" in main
    page.screenshot(path=str(tmp_path / "console-machines-other-org.png"), full_page=True)
    watched.assert_quiet()
    other.close()
    print(f"screenshots in {tmp_path}: {desktop.name}, {phone.name}")
