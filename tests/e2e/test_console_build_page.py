"""One build's console page in a real headless Chromium (Debian's, driven by Playwright), on
both databases:

- a build made by the real depot CLI on a real BuildKit (tests/e2e/test_build_insights.py's
  site: server, agent, private Docker Engine): sign in through the form, open the project and
  its build, see
  BuildKit's own step names on the timeline and a line the RUN printed, its log page, and the
  cached steps of the same build made again;
- a running build's page updates by itself, without a reload, and stops polling once the
  build ends;
- hostile step names and log lines render as text, and no script but the console's runs.

Screenshots (desktop and phone) are kept under the test's tmp directory (build-*.png)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from protobuf import Oneof
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depotapi.insights.v1 import insights_connect, insights_pb
from depot_api.gen.moby.buildkit.v1 import control_pb as c
from depot_api.store import open_store
from tests.helpers import ServerProcess

from .browser import sign_in, watch
from .conftest import Org
from .machines import api_for, bearer
from .test_build_insights import (
    Site,
    build,
    builds_of,
    completed_run,
    insights_once,
    multi_stage,
    site,  # noqa: F401  (the fixture: a server, an agent and BuildKit)
    succeeded,
)

T = TypeVar("T")
STEP, NEXT, HOSTILE = (f"sha256:{n * 64}" for n in "abc")
HOSTILE_NAME = "[1/1] RUN echo <script>alert(1)</script> <img src=x onerror=alert(1)>"
HOSTILE_LINE = "<img src=x onerror=alert(1)> <script>alert(1)</script>"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def in_thread(make: Callable[[], Any]) -> Any:
    """Run a coroutine to its end in another thread: Playwright's sync API owns this one's
    event loop."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, make()).result()


def assert_styled(page: Any) -> None:
    """The stylesheet applies to the timeline: a bar is a thin strip, not an unstyled SVG
    (300 x 150 px by default). A broken stylesheet still renders every word of the page."""
    box = page.locator("svg.step-bar").first.bounding_box()
    assert box is not None and box["height"] < 20 and box["width"] > 40, box


def screenshots(browser: Any, url: str, cookies: list[Any], path: Path, name: str) -> None:
    """Full-page screenshots of url on a laptop and on a phone (signed in with cookies)."""
    for suffix, viewport, mobile in (("", DESKTOP, False), ("-phone", PHONE, True)):
        context = browser.new_context(viewport=viewport, is_mobile=mobile)
        context.add_cookies(cookies)
        page = context.new_page()
        page.goto(url)
        page.screenshot(path=str(path / f"{name}{suffix}.png"), full_page=True)
        context.close()


@pytest.mark.buildkit
def test_a_real_builds_page(site: Site, browser: Any, tmp_path: Path) -> None:  # noqa: F811
    marker = secrets.token_hex(4)
    run = f"echo {marker}-one && sleep 1 && echo {marker}-two"
    context = multi_stage(tmp_path / "ctx", run, marker)

    async def project() -> str:
        return await api_for(site.server, site.token).project("console-build")

    async def build_ids(project_id: str) -> list[str]:
        store = open_store(site.server.database)
        try:
            return await builds_of(store, project_id)
        finally:
            await store.close()

    project_id = in_thread(project)
    succeeded(build(site, project_id, context, tmp_path / "out1"))
    (first,) = in_thread(lambda: build_ids(project_id))
    insights_once(site, project_id, first, completed_run(f"{marker}-one"))

    desktop = browser.new_context(viewport=DESKTOP)
    page = desktop.new_page()
    watched = watch(page)
    sign_in(page, site.server.url, site.token)
    # From the projects page to the project, to its build, as a person would.
    page.click(f"a[href='/console/projects/{project_id}']")
    page.click(f"a[href='/console/builds/{first}']")
    page.wait_for_url(f"**/console/builds/{first}")
    assert "status-success" in (page.get_attribute(".build-live h1 .status", "class") or "")
    assert page.get_attribute(f"a[href='/console/projects/{project_id}']", "href")
    steps = page.inner_text("ol.steps")
    assert "[base 2/2] RUN echo" in steps
    assert "[stage-1 2/3] COPY --from=base" in steps
    the_run = page.locator("li.step", has_text="[stage-1 3/3] RUN echo")
    assert the_run.count() == 1
    assert the_run.locator("svg.step-bar rect.fill").count() == 1  # its bar on the timeline
    assert_styled(page)
    the_run.locator("summary").click()
    assert f"{marker}-one" in the_run.locator("pre.log").inner_text()
    page.screenshot(path=str(tmp_path / "build-real.png"), full_page=True)

    # Its log on a page of its own.
    the_run.locator("a", has_text="log on a page of its own").click()
    page.wait_for_url("**/logs?step=*")
    log_text = page.inner_text("pre.log")
    assert f"{marker}-one" in log_text and f"{marker}-two" in log_text
    log_url = page.url
    cookies = desktop.cookies()
    screenshots(browser, log_url, cookies, tmp_path, "build-log")

    # The same build again: its steps come from the cache, and say so.
    succeeded(build(site, project_id, context, tmp_path / "out2"))
    _, second = in_thread(lambda: build_ids(project_id))

    def cached_run(found: dict[str, Any]) -> bool:
        runs = [s for s in found["steps"] if "[stage-1 3/3] RUN" in s["name"]]
        return bool(runs) and runs[0]["cacheState"] == 2  # CACHED

    insights_once(site, project_id, second, cached_run)
    page.goto(f"{site.server.url}/console/builds/{second}")
    cached = page.locator("li.step.cached", has_text="[stage-1 3/3] RUN echo")
    assert cached.count() == 1
    assert "cached" in cached.locator(".tag-cached").inner_text()
    assert page.locator("li.step.cached").count() >= 2
    screenshots(browser, page.url, cookies, tmp_path, "build-cached")
    screenshots(browser, f"{site.server.url}/console/builds/{first}", cookies, tmp_path, "build")
    watched.assert_quiet()
    desktop.close()
    print(f"screenshots in {tmp_path}")


def _ts(seconds: float) -> Timestamp:
    return Timestamp(seconds=int(time.time() + seconds))


async def _running_build(server: ServerProcess, org: Org, status: list[c.StatusResponse]) -> Any:
    """A running build with these status messages uploaded: its CreateBuildResponse."""
    api = api_for(server, org.token)
    created = await api.build(await api.project(f"live-{secrets.token_hex(3)}"))
    await _upload(server, created.build_id, created.build_token, status)
    return created


async def _upload(
    server: ServerProcess, build_id: str, token: str, status: list[c.StatusResponse]
) -> None:
    api = api_for(server, token)
    uploads = insights_connect.BuildInsightsServiceClient(server.url, http_client=api.http)
    await uploads.upload_build_status(
        insights_pb.UploadBuildStatusRequest(
            build_id=build_id, status_responses=[m.to_binary() for m in status]
        ),
        headers=bearer(token),
    )


async def _finish(server: ServerProcess, build_id: str, token: str) -> None:
    api = api_for(server, token)
    await api.builds.finish_build(
        build_pb.FinishBuildRequest(
            build_id=build_id, outcome=Oneof("success", build_pb.FinishBuildRequest.BuildSuccess())
        ),
        headers=bearer(token),
    )


def test_a_running_builds_page_updates_by_itself(
    server: ServerProcess, org: Org, browser: Any, tmp_path: Path
) -> None:
    first = [
        c.StatusResponse(
            vertexes=[
                c.Vertex(digest=STEP, name="[1/2] RUN fetch", started=_ts(-3), completed=_ts(-1))
            ]
        ),
        c.StatusResponse(logs=[c.VertexLog(vertex=STEP, msg=b"fetched\n", stream=1)]),
    ]
    created = in_thread(lambda: _running_build(server, org, first))
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    watched = watch(page)
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if r.url.endswith("/live") else None)
    sign_in(page, server.url, org.token)
    page.goto(f"{server.url}/console/builds/{created.build_id}")
    assert page.locator("[data-live-url]").count() == 1
    assert page.locator(".build-live h1 .status-running").count() == 1
    page.evaluate("window.marker = 42")

    in_thread(
        lambda: _upload(
            server,
            created.build_id,
            created.build_token,
            [
                c.StatusResponse(
                    vertexes=[c.Vertex(digest=NEXT, name="[2/2] RUN make", started=_ts(-1))]
                ),
                c.StatusResponse(
                    logs=[c.VertexLog(vertex=NEXT, msg=b"compiling the new part\n", stream=1)]
                ),
            ],
        )
    )
    step = page.locator("li.step", has_text="[2/2] RUN make")
    step.wait_for(timeout=10_000)
    assert step.locator(".tag-running").count() == 1  # it has not completed
    step.locator("summary").click()  # opened by the reader: stays open across updates
    page.wait_for_function(
        "document.body.innerText.includes('compiling the new part')", timeout=10_000
    )
    page.screenshot(path=str(tmp_path / "build-live.png"), full_page=True)

    in_thread(lambda: _finish(server, created.build_id, created.build_token))
    page.locator(".build-live h1 .status-success").wait_for(timeout=10_000)
    assert page.locator("[data-live-url]").count() == 0
    assert (
        page.locator("li.step", has_text="[2/2] RUN make").locator("details").get_attribute("open")
        is not None
    )
    seen = len(polls)
    page.wait_for_timeout(4500)  # two polling periods and more: no poll any more
    assert len(polls) == seen, polls
    assert page.evaluate("window.marker") == 42  # the same page all along: no reload
    watched.assert_quiet()
    context.close()
    print(f"screenshots in {tmp_path}")


def test_hostile_names_and_lines_are_text(
    server: ServerProcess, org: Org, browser: Any, tmp_path: Path
) -> None:
    status = [
        c.StatusResponse(
            vertexes=[
                c.Vertex(digest=HOSTILE, name=HOSTILE_NAME, started=_ts(-2), completed=_ts(0))
            ]
        ),
        c.StatusResponse(
            logs=[c.VertexLog(vertex=HOSTILE, msg=f"{HOSTILE_LINE}\n".encode(), stream=1)]
        ),
        c.StatusResponse(
            vertexes=[
                c.Vertex(
                    digest=NEXT,
                    name="[2/2] RUN make test",
                    started=_ts(0),
                    completed=_ts(1),
                    error='process "/bin/sh -c make test" did not complete successfully',
                )
            ]
        ),
    ]
    created = in_thread(lambda: _running_build(server, org, status))
    in_thread(lambda: _finish(server, created.build_id, created.build_token))
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    watched = watch(page)
    sign_in(page, server.url, org.token)
    for path in (
        f"/console/builds/{created.build_id}",
        f"/console/builds/{created.build_id}/logs?step=sha256%3A{'c' * 64}",
    ):
        page.goto(server.url + path)
        main = page.inner_text("main")
        assert HOSTILE_NAME in main
        if "/logs" not in path:
            page.locator("li.step", has_text="[1/1]").locator("summary").click()
        assert HOSTILE_LINE in page.inner_text("pre.log")
        scripts = page.evaluate("[...document.scripts].map(s => s.src)")
        assert scripts == [f"{server.url}/static/console.js"], scripts
        assert page.evaluate("document.images.length") == 0
        assert page.evaluate("typeof window.alerted") == "undefined"
    page.screenshot(path=str(tmp_path / "build-hostile-log.png"), full_page=True)

    # Share it from the page (a real form: its token, its Origin), and stop.
    page.goto(f"{server.url}/console/builds/{created.build_id}")
    failed = page.locator("li.step.failed", has_text="[2/2] RUN make test")
    assert "did not complete successfully" in failed.inner_text()  # open by itself
    assert_styled(page)
    page.click("button:has-text('Share this build')")
    link = page.inner_text(".share-link")
    assert link.startswith(f"{server.url}/share/"), link
    page.screenshot(path=str(tmp_path / "build-shared.png"), full_page=True)
    # Stopping asks first: declined, nothing is sent and the link still shows the build.
    stop = f"{server.url}/console/builds/{created.build_id}/stop-sharing"
    watched.answer_confirm(False)
    page.click("button:has-text('Stop sharing')")
    assert watched.confirmed == [
        "Stop sharing this build? Its link will show nothing any more; sharing it again makes"
        " a new link."
    ]
    page.evaluate("1")  # a round trip to the page: a submit would have started by now
    assert stop not in watched.posted
    assert page.inner_text(".share-link") == link  # still this page, not a new one
    assert page.request.get(link).status == 200
    # Accepted: stopped, and the link shows nothing.
    watched.answer_confirm(True)
    page.click("button:has-text('Stop sharing')")
    page.wait_for_url(lambda url: url.endswith("?sharing=stopped"))
    assert len(watched.confirmed) == 2 and watched.posted[-1] == stop
    assert "Sharing stopped" in page.inner_text(".share")
    assert "This build is not shared" in page.inner_text(".share")
    assert page.locator("button:has-text('Stop sharing')").count() == 0
    assert page.request.get(link).status == 404
    watched.assert_quiet()
    context.close()
    print(f"screenshots in {tmp_path}")
