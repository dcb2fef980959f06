"""One build's page in the console, through the in-process server on SQLite and PostgreSQL:
its steps on a timeline (cached marks, errors, log lines), escaping of hostile step names and
log lines, the live part of a running build (gone once it ends), a step's whole log page by
page, sharing and stopping, and the refusals (another organization's build, a missing one,
bad step digests and page tokens, the live part signed out)."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace
from datetime import timedelta

import pytest
from protobuf import Oneof
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp
from pyqwest import Client
from pyqwest.testing import ASGITransport

from depot_api.api.timeline import MIN_WIDTH, timeline_of
from depot_api.app import create_app
from depot_api.config import Settings
from depot_api.domain.errors import NotFound
from depot_api.domain.insights import BuildView, StepView
from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depotapi.insights.v1 import insights_pb
from depot_api.gen.moby.buildkit.v1 import control_pb as c
from depot_api.models import Build, BuildStatus, BuildStep, InsightsFlags, MergeLimits
from depot_api.startup import prepare
from tests.conftest import InProcessAPI, bearer
from tests.console_client import ConsoleBrowser
from tests.factories import new_build, new_project

FETCH, COPY, TEST = (f"sha256:{n * 64}" for n in "abc")
HOSTILE_NAME = "[1/3] RUN echo <script>alert(1)</script>"
HOSTILE_LINE = "<img src=x onerror=alert(1)> and <script>alert(1)</script>"
LINK = re.compile(r'href="(http://[^"/]+/share/[A-Za-z0-9_-]{43})"')
T0 = int(time.time()) - 600


def ts(seconds: float) -> Timestamp:
    whole = int(seconds)
    return Timestamp(seconds=T0 + whole, nanos=int((seconds - whole) * 1e9))


# Three steps over 5 seconds: FETCH 0-2 s with output, COPY cached at 2 s, TEST 2-5 s failing.
STATUS = [
    c.StatusResponse(
        vertexes=[c.Vertex(digest=FETCH, name="[1/3] RUN fetch", started=ts(0), completed=ts(2))]
    ),
    c.StatusResponse(
        logs=[c.VertexLog(vertex=FETCH, msg=b"fetched 42 packages\nall good\n", stream=1)]
    ),
    c.StatusResponse(
        vertexes=[
            c.Vertex(
                digest=COPY, name="[2/3] COPY . /app", cached=True, started=ts(2), completed=ts(2)
            ),
            c.Vertex(
                digest=TEST,
                name="[3/3] RUN make test",
                started=ts(2),
                completed=ts(5),
                error='process "/bin/sh -c make test" did not complete successfully',
            ),
        ]
    ),
]


@pytest.fixture
def browser(api: InProcessAPI) -> ConsoleBrowser:
    return ConsoleBrowser(api.http)


async def _upload(
    api: InProcessAPI, build_id: str, token: str, status: list[c.StatusResponse]
) -> None:
    await api.clients().insights.upload_build_status(
        insights_pb.UploadBuildStatusRequest(
            build_id=build_id, status_responses=[m.to_binary() for m in status]
        ),
        headers=bearer(token),
    )


async def _finish(api: InProcessAPI, build_id: str, token: str) -> None:
    await api.clients().builds.finish_build(
        build_pb.FinishBuildRequest(
            build_id=build_id, outcome=Oneof("success", build_pb.FinishBuildRequest.BuildSuccess())
        ),
        headers=bearer(token),
    )


async def _signed_in_with_build(
    api: InProcessAPI, browser: ConsoleBrowser, status: list[c.StatusResponse]
) -> tuple[str, str]:
    build_id, token = await new_build(api.app.domain, api.org_token)
    await _upload(api, build_id, token, status)
    await browser.sign_in(api.org_token)
    return build_id, token


def _step_item(html: str, name: str) -> str:
    """The <li> of the step with this (escaped) name."""
    for item in html.split('<li class="step')[1:]:
        if name in item:
            return item.split("</li>")[0]
    raise AssertionError(f"no step {name} in:\n{html}")


async def test_steps_on_a_timeline_with_cache_marks_errors_and_logs(
    api: InProcessAPI, browser: ConsoleBrowser
) -> None:
    build_id, _ = await _signed_in_with_build(api, browser, STATUS)
    build = await api.app.domain.store.builds.get_build(build_id)
    assert build is not None
    page = await browser.get(f"/console/builds/{build_id}")
    assert page.status == 200, page.text
    assert "style=" not in page.text  # the CSP forbids style attributes: none are used
    html = page.text
    assert f'href="/console/projects/{build.project_id}"' in html
    assert "status-running" in html
    assert f'data-live-url="/console/builds/{build_id}/live"' in html
    # Facts: 3 steps, 1 cached.
    assert "<dd>3</dd>" in html and "<dd>1 of 3</dd>" in html

    fetch = _step_item(html, "[1/3] RUN fetch")
    assert 'x="0.0%"' in fetch and 'width="40.0%"' in fetch  # 0-2 s of 5 s
    assert "fetched 42 packages" in fetch and "all good" in fetch
    assert f'data-key="{FETCH}"' in fetch
    assert "2.0s" in fetch
    assert "tag-cached" not in fetch and "tag-error" not in fetch
    copy = _step_item(html, "[2/3] COPY . /app")
    assert 'class="tag tag-cached"' in copy and " cached" in copy.split(">")[0]
    assert 'x="40.0%"' in copy and f'width="{MIN_WIDTH}%"' in copy
    assert '<span class="step-time">0 ms</span>' in copy  # under a second: milliseconds
    test = _step_item(html, "[3/3] RUN make test")
    assert 'class="tag tag-error"' in test and "failed" in test.split(">")[0]
    assert "did not complete successfully" in test
    assert 'x="40.0%"' in test and 'width="60.0%"' in test
    assert "<details data-key" in test and " open>" in test  # a failed step opens by itself


async def test_hostile_step_names_and_log_lines_are_text(
    api: InProcessAPI, browser: ConsoleBrowser
) -> None:
    build_id, _ = await _signed_in_with_build(
        api,
        browser,
        [
            c.StatusResponse(vertexes=[c.Vertex(digest=FETCH, name=HOSTILE_NAME, started=ts(0))]),
            c.StatusResponse(
                logs=[c.VertexLog(vertex=FETCH, msg=f"{HOSTILE_LINE}\n".encode(), stream=1)]
            ),
        ],
    )
    for path in (
        f"/console/builds/{build_id}",
        f"/console/builds/{build_id}/live",
        f"/console/builds/{build_id}/logs?step={FETCH}",
    ):
        page = await browser.get(path)
        assert page.status == 200, page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text, path
        assert "&lt;img src=x onerror=alert(1)&gt;" in page.text, path
        assert "<img" not in page.text and "<script>" not in page.text, path
        # The page's one script is the console's own file.
        assert re.findall(r"<script[^>]*>", page.text) in (
            [],
            ['<script src="/static/console.js" defer>'],
        ), path


async def test_a_running_build_is_live_until_it_ends(
    api: InProcessAPI, browser: ConsoleBrowser
) -> None:
    build_id, token = await _signed_in_with_build(api, browser, STATUS[:1])
    live = await browser.get(f"/console/builds/{build_id}/live")
    assert live.status == 200
    assert live.text.lstrip().startswith('<section class="build-live"')
    assert f'data-live-url="/console/builds/{build_id}/live"' in live.text
    assert "<html" not in live.text and "Sign out" not in live.text  # a part, not a page
    assert "[1/3] RUN fetch" in live.text and "[3/3] RUN make test" not in live.text
    # A running step's bar runs to now, and says so.
    await _upload(
        api,
        build_id,
        token,
        [
            c.StatusResponse(
                vertexes=[c.Vertex(digest=TEST, name="[3/3] RUN make test", started=ts(2))]
            )
        ],
    )
    live = await browser.get(f"/console/builds/{build_id}/live")
    running = _step_item(live.text, "[3/3] RUN make")
    assert "tag-running" in running and "running" in running.split(">")[0]

    await _finish(api, build_id, token)
    ended = await browser.get(f"/console/builds/{build_id}/live")
    assert ended.status == 200
    assert "data-live-url" not in ended.text
    assert "status-success" in ended.text and "status-running" not in ended.text
    assert "tag-running" not in ended.text  # the build ended: nothing runs any more
    page = await browser.get(f"/console/builds/{build_id}")
    assert "data-live-url" not in page.text and "status-success" in page.text


async def test_a_steps_whole_log_page_by_page(api: InProcessAPI, browser: ConsoleBrowser) -> None:
    lines = "".join(f"line {n:04d}\n" for n in range(2500)).encode()
    build_id, _ = await _signed_in_with_build(
        api,
        browser,
        [
            c.StatusResponse(
                vertexes=[c.Vertex(digest=FETCH, name="[1/1] RUN chatty", started=ts(0))]
            ),
            c.StatusResponse(logs=[c.VertexLog(vertex=FETCH, msg=lines, stream=1)]),
        ],
    )
    page = await browser.get(f"/console/builds/{build_id}")
    assert "line 0199" in page.text and "line 0200" not in page.text  # 200 lines inline
    log_path = f"/console/builds/{build_id}/logs?step=sha256%3A{'a' * 64}"
    assert f'href="{log_path}"' in page.text

    seen: list[str] = []
    path = log_path
    pages = 0
    while True:
        log = await browser.get(path)
        assert log.status == 200, log.text
        assert "[1/1] RUN chatty" in log.text
        seen += re.findall(r"line \d{4}", log.text)
        pages += 1
        found = re.search(r'href="([^"]*&amp;page=[^"]*)"', log.text)
        if found is None:
            assert "End of the log." in log.text
            break
        path = found.group(1).replace("&amp;", "&")
    assert pages == 3
    assert seen == [f"line {n:04d}" for n in range(2500)]


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ("", 400, "step is required"),
        ("?step=%3Cscript%3E", 400, "is not a digest"),
        (f"?step=sha256%3A{'f' * 64}", 404, "has no step"),
        (f"?step=sha256%3A{'a' * 64}&page=bogus", 400, "page_token"),
        (f"?step=sha256%3A{'a' * 64}&page=%3Cimg%3E", 400, "page_token"),
    ],
)
async def test_bad_log_addresses_get_a_clear_page(
    api: InProcessAPI, browser: ConsoleBrowser, query: str, status: int, words: str
) -> None:
    build_id, _ = await _signed_in_with_build(api, browser, STATUS)
    page = await browser.get(f"/console/builds/{build_id}/logs{query}")
    assert page.status == status, page.text
    assert words in page.text
    assert "<script" not in page.text.replace('<script src="/static/console.js"', "")
    assert "Traceback" not in page.text


async def test_share_and_stop_sharing(api: InProcessAPI, browser: ConsoleBrowser) -> None:
    build_id, _ = await _signed_in_with_build(api, browser, STATUS)
    page = await browser.get(f"/console/builds/{build_id}")
    assert "Share this build" in page.text and "/share/" not in page.text
    shared = await browser.post(f"/console/builds/{build_id}/share", {"csrf": page.csrf()})
    assert shared.status == 200, shared.text
    found = LINK.search(shared.text)
    assert found, shared.text
    link = found.group(1)
    public = await api.http.get("http://test/share/" + link.rsplit("/", 1)[1])
    assert public.status == 200 and "[1/3] RUN fetch" in public.content.decode()
    again = await browser.post(f"/console/builds/{build_id}/share", {"csrf": page.csrf()})
    assert LINK.search(again.text).group(1) == link  # type: ignore[union-attr]

    refused = await browser.post(f"/console/builds/{build_id}/stop-sharing", {"csrf": "forged"})
    assert refused.status == 403
    stopped = await browser.post(f"/console/builds/{build_id}/stop-sharing", {"csrf": page.csrf()})
    assert (stopped.status, stopped.location) == (
        303,
        f"/console/builds/{build_id}?sharing=stopped",
    )
    after = await browser.get(stopped.location)
    assert "Sharing stopped" in after.text and "/share/" not in after.text
    gone = await api.http.get("http://test/share/" + link.rsplit("/", 1)[1])
    assert gone.status == 404


async def test_the_page_offers_what_fits_whether_the_build_is_shared(
    api: InProcessAPI, browser: ConsoleBrowser
) -> None:
    """Not shared: only "Share this build". Shared: says so, offers "Show the link" and "Stop
    sharing", and the page a GET returns holds no secret. Stopped: not shared again."""
    build_id, _ = await _signed_in_with_build(api, browser, STATUS)
    stop_form = f'action="/console/builds/{build_id}/stop-sharing"'
    share_form = f'action="/console/builds/{build_id}/share"'

    unshared = await browser.get(f"/console/builds/{build_id}")
    assert unshared.status == 200, unshared.text
    assert "This build is not shared" in unshared.text
    assert share_form in unshared.text and "Share this build" in unshared.text
    assert stop_form not in unshared.text and "Stop sharing" not in unshared.text
    assert "Sharing stopped" not in unshared.text

    shared = await browser.post(f"/console/builds/{build_id}/share", {"csrf": unshared.csrf()})
    found = LINK.search(shared.text)
    assert found, shared.text
    secret = found.group(1).rsplit("/", 1)[1]
    assert stop_form in shared.text  # the answer with the link offers stopping too

    page = await browser.get(f"/console/builds/{build_id}")
    assert page.status == 200, page.text
    assert "This build is shared: anyone with its link can see it." in page.text
    assert share_form in page.text and "Show the link" in page.text
    assert "Share this build" not in page.text
    assert stop_form in page.text and "Stop sharing" in page.text
    assert f'{stop_form} data-confirm="Stop sharing this build? Its link' in page.text
    assert secret not in page.text and "/share/" not in page.text
    live = await browser.get(f"/console/builds/{build_id}/live")
    assert secret not in live.text

    # "Show the link" is the share form: the same link again.
    shown = await browser.post(f"/console/builds/{build_id}/share", {"csrf": page.csrf()})
    assert LINK.search(shown.text).group(1).endswith(secret)  # type: ignore[union-attr]

    stopped = await browser.post(f"/console/builds/{build_id}/stop-sharing", {"csrf": page.csrf()})
    after = await browser.get(stopped.location)
    assert "Sharing stopped" in after.text and "This build is not shared" in after.text
    assert stop_form not in after.text and "Share this build" in after.text
    plain = await browser.get(f"/console/builds/{build_id}")
    assert "This build is not shared" in plain.text and stop_form not in plain.text
    assert "Sharing stopped" not in plain.text
    # The address cannot make the page claim a state the database denies.
    await browser.post(f"/console/builds/{build_id}/share", {"csrf": page.csrf()})
    claimed = await browser.get(stopped.location)
    assert "Sharing stopped" not in claimed.text and stop_form in claimed.text


async def test_whether_a_build_is_shared_is_read_with_the_callers_rights(
    api: InProcessAPI,
) -> None:
    """Shares.is_shared checks the caller as ShareBuild does: another organization's build is
    not found, not answered."""
    domain = api.app.domain
    build_id, build_token = await new_build(domain, api.org_token)
    ours = await domain.authenticator.authenticate(f"Bearer {api.org_token}")
    its_own = await domain.authenticator.authenticate(f"Bearer {build_token}")
    other = await domain.organizations.create("other")
    _, other_token = await domain.tokens.create_org_token(other.id)
    theirs = await domain.authenticator.authenticate(f"Bearer {other_token}")

    assert await domain.shares.is_shared(ours, build_id) is False
    await domain.shares.share(ours, build_id)
    assert await domain.shares.is_shared(ours, build_id) is True
    assert await domain.shares.is_shared(its_own, build_id) is True
    with pytest.raises(NotFound):
        await domain.shares.is_shared(theirs, build_id)
    await domain.shares.stop(ours, build_id)
    assert await domain.shares.is_shared(ours, build_id) is False


async def test_a_share_link_follows_the_public_url(api: InProcessAPI) -> None:
    """The console's link and ShareBuild's are the same link."""
    from depot_api.gen.depot.core.v1 import build_pb as core_pb

    browser = ConsoleBrowser(api.http)
    build_id, _ = await _signed_in_with_build(api, browser, STATUS)
    page = await browser.get(f"/console/builds/{build_id}")
    shared = await browser.post(f"/console/builds/{build_id}/share", {"csrf": page.csrf()})
    by_rpc = await api.clients().core_builds.share_build(
        core_pb.ShareBuildRequest(build_id=build_id), headers=bearer(api.org_token)
    )
    assert LINK.search(shared.text).group(1) == by_rpc.share_url  # type: ignore[union-attr]


async def test_another_orgs_build_and_a_missing_one_are_not_found(
    api: InProcessAPI, browser: ConsoleBrowser
) -> None:
    domain = api.app.domain
    other = await domain.organizations.create("other")
    _, other_token = await domain.tokens.create_org_token(other.id)
    theirs, _ = await new_build(domain, other_token)
    await browser.sign_in(api.org_token)
    page = await browser.get(f"/console/builds/{theirs}")
    csrf = (await browser.get("/console/")).csrf()
    for path in (
        f"/console/builds/{theirs}",
        f"/console/builds/{theirs}/live",
        f"/console/builds/{theirs}/logs?step={FETCH}",
        "/console/builds/zzzzzzzzzz",
    ):
        page = await browser.get(path)
        assert page.status == 404, (path, page.text)
        assert "Not found" in page.text
    for action in ("share", "stop-sharing"):
        page = await browser.post(f"/console/builds/{theirs}/{action}", {"csrf": csrf})
        assert page.status == 404, (action, page.text)
    bad = await browser.get("/console/builds/%3Cscript%3E")
    assert bad.status == 400 and "<script>" not in bad.text
    assert (await browser.get(f"/console/builds/{theirs}/share")).status == 405


async def test_notices_when_the_insights_are_incomplete(settings: Settings) -> None:
    """Dropped messages and a side listener (as an agent reports them), and logs past their
    retention: each gets its notice, and an expired step's log says so."""
    short = replace(settings, build_log_retention=timedelta(seconds=1))
    org_token = await prepare(short)
    assert org_token is not None
    app = create_app(short)
    async with ASGITransport(app) as transport:
        api = InProcessAPI(app, short, org_token, Client(transport))
        browser = ConsoleBrowser(api.http)
        build_id, _ = await _signed_in_with_build(api, browser, STATUS)
        build = await app.domain.store.builds.get_build(build_id)
        assert build is not None
        await app.domain.store.insights.merge(
            build_id,
            project_id=build.project_id,
            build_created_us=build.created_us,
            messages=[],
            flags=InsightsFlags(dropped=3, side_listener=True),
            limits=MergeLimits(max_log_bytes=1 << 20, cut_marker=b"cut"),
            now_us=build.created_us,
        )
        page = await browser.get(f"/console/builds/{build_id}")
        assert "3 status messages were dropped" in page.text
        assert "side listener" in page.text
        assert "have expired" not in page.text and "fetched 42 packages" in page.text
        await asyncio.sleep(1.2)
        # Any later upload expires the logs of builds past the retention.
        admin = await app.domain.authenticator.authenticate(f"Bearer {org_token}")
        other, other_token = await app.domain.builds.create(
            admin, await new_project(app.domain, admin, "other")
        )
        other_id = other.id
        await _upload(api, other_id, other_token, STATUS[:1])
        page = await browser.get(f"/console/builds/{build_id}")
        assert "logs have expired; its steps and counters remain" in page.text
        assert "Its log has expired." in page.text
        assert "fetched 42 packages" not in page.text


async def test_signed_out_the_live_part_is_401_and_the_page_asks_to_sign_in(
    api: InProcessAPI, browser: ConsoleBrowser
) -> None:
    build_id, _ = await new_build(api.app.domain, api.org_token)
    live = await browser.get(f"/console/builds/{build_id}/live")
    assert live.status == 401
    page = await browser.get(f"/console/builds/{build_id}")
    assert page.status == 303 and page.location.startswith("/console/sign-in?next=")


def _view(status: BuildStatus, *steps: BuildStep, now_us: int = 10_000_000) -> BuildView:
    finished = None if status is BuildStatus.RUNNING else 8_000_000
    build = Build("b" * 10, "p" * 10, "o" * 10, status, 0, 0, finished)
    return BuildView(build, None, [StepView(s, [], False) for s in steps], False, now_us)


def _step(
    digest: str, started: int | None, completed: int | None, *, cached: bool = False
) -> BuildStep:
    return BuildStep("b" * 10, digest, 0, digest, (), started, completed, cached, None, False)


def test_a_timeline_places_steps_from_the_first_start_and_runs_open_ones_to_now() -> None:
    view = _view(
        BuildStatus.RUNNING,
        _step("a", 2_000_000, 4_000_000),
        _step("b", 4_000_000, None),  # running: to now (10 s)
        _step("c", None, None),  # not started: no bar, waiting
        _step("d", None, None, cached=True),  # a cache hit sent with no times: not waiting
    )
    timeline = timeline_of(view)
    assert timeline.span_seconds == 8.0
    a, b = timeline.bars["a"], timeline.bars["b"]
    assert a is not None and (a.offset, a.width, a.running) == (0.0, 25.0, False)
    assert b is not None and (b.offset, b.width, b.running) == (25.0, 75.0, True)
    assert b.seconds == 6.0
    assert timeline.bars["c"] is None and timeline.bars["d"] is None
    assert timeline.waiting == {"c"} and timeline.placed


def test_after_the_build_an_unfinished_step_ends_with_it() -> None:
    view = _view(BuildStatus.FAILED, _step("a", 2_000_000, None), now_us=99_000_000)
    bar = timeline_of(view).bars["a"]
    assert bar is not None and not bar.running and bar.seconds == 6.0
    assert timeline_of(_view(BuildStatus.SUCCESS)).span_seconds == 0.0
    nothing_placed = timeline_of(_view(BuildStatus.FAILED, _step("c", None, None)))
    assert not nothing_placed.placed and nothing_placed.waiting == frozenset()
