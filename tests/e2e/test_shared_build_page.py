"""Shared build links end to end, on both databases: the official @depot/sdk-node shares a
build whose insights were merged (uploaded with its build token as real BuildKit
StatusResponse bytes), a real headless Chromium (Debian's, driven by Playwright) opens the link
without signing in and sees the steps and a log line, hostile step names and log lines render
as text with no script run, and after StopSharingBuild the same link is a 404.

Screenshots are kept under the test's tmp directory (shared-*.png)."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.core.v1 import project_pb
from depot_api.gen.depotapi.insights.v1 import insights_connect, insights_pb
from depot_api.gen.moby.buildkit.v1 import control_pb as c
from tests.databases import BACKENDS, database
from tests.helpers import ServerProcess, running_server

from .conftest import Org
from .machines import api_for, bearer
from .node_scripts import run_node_script

STEP, CACHED, FAILED = (f"sha256:{n * 64}" for n in "abc")
HOSTILE_NAME = "[1/3] RUN echo <script>alert('step')</script>"
HOSTILE_LINE = "<img src=x onerror=alert(1)> <script>alert('log')</script>"
STATUS = [
    c.StatusResponse(vertexes=[c.Vertex(digest=STEP, name=HOSTILE_NAME)]),
    c.StatusResponse(
        logs=[
            c.VertexLog(
                vertex=STEP,
                msg=f"compiling 42 files\n{HOSTILE_LINE}\ndone\n".encode(),
                stream=1,
            )
        ]
    ),
    c.StatusResponse(
        vertexes=[
            c.Vertex(digest=CACHED, name="[2/3] COPY . /app", cached=True),
            c.Vertex(
                digest=FAILED,
                name="[3/3] RUN make test",
                error='process "/bin/sh -c make test" did not complete successfully',
            ),
        ]
    ),
]


def sdk(server: ServerProcess, token: str, build_id: str, action: str) -> dict[str, Any]:
    env = {"DEPOT_E2E_BUILD_ID": build_id, "DEPOT_E2E_ACTION": action}
    return run_node_script("sdk_share.mjs", server.url, token, env)


async def _shared_build(server: ServerProcess, org: Org) -> tuple[str, str]:
    """A build whose insights were merged: (build ID, org token)."""
    api = api_for(server, org.token)
    project = await api.projects.create_project(
        project_pb.CreateProjectRequest(name="shared", region_id="us-east-1"), headers=api.org
    )
    created = await api.builds.create_build(
        build_pb.CreateBuildRequest(project_id=project.project.project_id), headers=api.org
    )
    uploads = insights_connect.BuildInsightsServiceClient(server.url, http_client=api.http)
    await uploads.upload_build_status(
        insights_pb.UploadBuildStatusRequest(
            build_id=created.build_id, status_responses=[m.to_binary() for m in STATUS]
        ),
        headers=bearer(created.build_token),
    )
    return created.build_id, org.token


def test_a_shared_link_in_a_real_browser(
    server: ServerProcess, org: Org, browser: Any, tmp_path: Path
) -> None:
    # Playwright's sync API runs its own event loop in this thread: the RPCs go in another.
    with ThreadPoolExecutor(1) as thread:
        build_id, token = thread.submit(asyncio.run, _shared_build(server, org)).result()
    shared = sdk(server, token, build_id, "share")
    link = shared["shareUrl"]
    assert shared["again"] == link  # ShareBuild again: the same link
    assert link.startswith(f"{server.url}/share/")

    # A fresh context: no cookie, no token, nobody signed in.
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []
    errors: list[str] = []
    console: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: console.append(m.text))
    response = page.goto(link)
    assert response is not None and response.status == 200
    assert response.headers["content-security-policy"].startswith("default-src 'self'")
    assert response.headers["referrer-policy"] == "no-referrer"
    text = page.inner_text("main")
    assert build_id in text
    assert HOSTILE_NAME in text  # the step name, as text
    assert "[2/3] COPY . /app" in text and "cached" in text
    assert "did not complete successfully" in text
    bar = page.locator("svg.step-bar").first.bounding_box()  # styled: a thin timeline strip
    assert bar is not None and bar["height"] < 20, bar
    page.click("text=" + HOSTILE_NAME)  # open the step: its log lines
    log_text = page.inner_text("pre.log")
    assert "compiling 42 files" in log_text
    assert HOSTILE_LINE in log_text
    # Nothing hostile became markup, and nothing ran.
    assert page.evaluate("document.scripts.length") == 0
    assert page.evaluate("document.images.length") == 0
    assert dialogs == [] and errors == []
    assert not [m for m in console if "alert" in m]
    page.screenshot(path=str(tmp_path / "shared-build.png"), full_page=True)
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone_page = phone.new_page()
    phone_page.goto(link)
    phone_page.screenshot(path=str(tmp_path / "shared-build-phone.png"), full_page=True)
    phone.close()

    sdk(server, token, build_id, "stop")
    response = page.goto(link)
    assert response is not None and response.status == 404
    assert "Not found" in page.inner_text("main")
    assert build_id not in page.content()
    page.screenshot(path=str(tmp_path / "shared-build-stopped.png"))
    assert dialogs == [] and errors == []
    context.close()
    print(f"screenshots in {tmp_path}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_worker_shows_and_stops_the_same_link(tmp_path: Path, backend: str) -> None:
    """Two worker processes on one port (port 0: only the socket knows the port): every
    ShareBuild gives the same link, whichever worker answers, with the real port in it; after
    StopSharingBuild no worker shows the page any more."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    with (
        database(backend, data_dir) as url,
        running_server(data_dir, "--database", url, "--workers", "2") as server,
    ):
        org = Org(id="", token=server.org_token)
        with ThreadPoolExecutor(1) as thread:
            build_id, token = thread.submit(asyncio.run, _shared_build(server, org)).result()
        links = {sdk(server, token, build_id, "share")["shareUrl"] for _ in range(4)}
        assert len(links) == 1
        link = links.pop()
        assert link.startswith(f"{server.url}/share/")
        # A new connection each time: the kernel spreads them over both workers.
        assert {_status(link) for _ in range(12)} == {200}
        sdk(server, token, build_id, "stop")
        assert {_status(link) for _ in range(12)} == {404}


def _status(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code
