"""The console's script (static/console.js) in a real headless Chromium, against answers a
live part should never get from this server but might from what stands in between (a proxy's
sign-in page) or from markup gone wrong: it swaps in only the same part of the page, and never
fetches from anywhere but this console. The answers are put in the browser's way by Playwright's
routing; the server, the build and the page are real."""

from __future__ import annotations

from typing import Any

from depot_api.gen.moby.buildkit.v1 import control_pb as c
from tests.helpers import ServerProcess

from .browser import sign_in, watch
from .conftest import Org
from .test_console_build_page import DESKTOP, STEP, _running_build, _ts, in_thread

STATUS = [
    c.StatusResponse(
        vertexes=[c.Vertex(digest=STEP, name="[1/1] RUN fetch", started=_ts(-3), completed=_ts(-1))]
    )
]
WHOLE_PAGE = (
    "<!doctype html><html><head><meta charset=utf-8><title>Proxy</title></head>"
    "<body><h1>Sign in to the proxy</h1></body></html>"
)
ELSEWHERE = "http://127.0.0.1:9/console/builds/x/live"
POINTING_ELSEWHERE = (
    f'<section class="build-live" data-live-url="{ELSEWHERE}"><h1>Build elsewhere</h1></section>'
)


def _build_page(server: ServerProcess, org: Org, browser: Any, answer: str) -> tuple[Any, Any]:
    """A running build's page whose live part is answered with `answer` (200, text/html)."""
    created = in_thread(lambda: _running_build(server, org, STATUS))
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    sign_in(page, server.url, org.token)
    page.route(
        "**/live",
        lambda route: route.fulfill(status=200, content_type="text/html", body=answer),
    )
    page.goto(f"{server.url}/console/builds/{created.build_id}")
    return context, page


def test_a_whole_page_is_not_swapped_in_for_the_live_part(
    server: ServerProcess, org: Org, browser: Any
) -> None:
    context, page = _build_page(server, org, browser, WHOLE_PAGE)
    watched = watch(page)
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if r.url.endswith("/live") else None)
    page.wait_for_timeout(4500)  # two polling periods and more
    assert len(polls) >= 2, polls  # it keeps asking...
    assert page.locator(".build-live[data-live-url]").count() == 1  # ...and keeps its part
    assert "[1/1] RUN fetch" in page.inner_text(".build-live")
    assert "Sign in to the proxy" not in page.inner_text("body")
    watched.assert_quiet()
    context.close()


def test_a_live_part_pointing_elsewhere_is_never_fetched(
    server: ServerProcess, org: Org, browser: Any
) -> None:
    context, page = _build_page(server, org, browser, POINTING_ELSEWHERE)
    watched = watch(page)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    page.locator("h1", has_text="Build elsewhere").wait_for(timeout=10_000)
    page.wait_for_timeout(4500)
    assert not [url for url in asked if url.startswith(ELSEWHERE.split("/console")[0])], asked
    # Not even tried: the Content-Security-Policy would have blocked it, and said so.
    watched.assert_quiet()
    context.close()
