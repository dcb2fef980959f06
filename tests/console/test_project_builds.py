"""A project's builds page in the console, through the in-process server on SQLite and
PostgreSQL: the project's facts, its builds newest first with duration and cache-hit ratio,
paging that keeps the status filter, each status filter, escaping, and the error pages."""

from __future__ import annotations

import html
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from depot_api.domain.ids import new_id
from depot_api.domain.principal import Principal
from depot_api.domain.projects import CachePolicyInput
from depot_api.models import Build, BuildStatus, StatusMessage, Token, TokenKind, VertexUpdate
from depot_api.times import to_micros
from depot_api.wiring import Domain
from tests.conftest import InProcessAPI
from tests.console_client import ConsoleBrowser, Response

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"
_ROW = re.compile(r"<tr>(.*?)</tr>", re.DOTALL)
_CELL = re.compile(r'<td data-label="([^"]+)"[^>]*>(.*?)</td>', re.DOTALL)
_TAG = re.compile(r"<[^>]+>")


@dataclass
class Row:
    """One line of the builds table, as text."""

    status: str
    build_id: str
    created: str
    duration: str
    cache_hits: str


def rows_of(page: Response) -> list[Row]:
    body = (
        page.text.split("<tbody>", 1)[1].split("</tbody>", 1)[0] if "<tbody>" in page.text else ""
    )
    rows = []
    for row in _ROW.findall(body):
        cells = {
            label: html.unescape(_TAG.sub("", cell)).strip() for label, cell in _CELL.findall(row)
        }
        rows.append(
            Row(
                cells["Status"],
                cells["Build"],
                cells["Created"],
                cells["Duration"],
                cells["Cache hits"],
            )
        )
    return rows


def link(page: Response, text: str) -> str | None:
    """The address of the link (a button) with this text, if the page has one."""
    found = re.search(rf'<a class="button" href="([^"]*)">{re.escape(text)}</a>', page.text)
    return html.unescape(found.group(1)) if found else None


async def new_project(domain: Domain, admin: Principal, name: str = "app") -> str:
    project = await domain.projects.create(
        admin,
        name=name,
        region_id="eu-central-1",
        organization_id=None,
        cache_policy=CachePolicyInput(keep_gb=30, keep_days=7),
        hardware=None,
    )
    return project.id


async def stored_build(
    domain: Domain,
    project_id: str,
    org_id: str,
    created: float,
    status: BuildStatus = BuildStatus.RUNNING,
    *,
    started: float | None = None,
    finished: float | None = None,
) -> str:
    """A build made at T0 + created seconds (the store takes the moment the domain would
    otherwise read from the clock), finished as `status` at T0 + finished."""
    build = Build(new_id(), project_id, org_id, BuildStatus.RUNNING, to_micros(at(created)))
    token = Token(
        id=new_id(),
        kind=TokenKind.BUILD,
        secret_hash=secrets.token_hex(32),
        description="",
        created_at=at(created),
        org_id=org_id,
        project_id=project_id,
        build_id=build.id,
    )
    await domain.store.builds.insert_build(build, token)
    if started is not None:
        await domain.store.builds.mark_build_started(build.id, at(started))
    if status is not BuildStatus.RUNNING:
        end = created + 1 if finished is None else finished
        await domain.store.builds.finish_build(build.id, status, at(end), None)
    return build.id


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def org_of(admin: Principal) -> str:
    (org_id,) = admin.org_ids
    return org_id


async def steps(domain: Domain, admin: Principal, build_id: str, cached: int, total: int) -> None:
    """Give the build `total` steps (BuildKit status, as report-build uploads it), the first
    `cached` of them from cache."""
    vertexes = tuple(
        VertexUpdate(f"sha256:{n:064x}", f"[{n}/{total}] RUN step {n}", (), 1, 2, n < cached, "")
        for n in range(total)
    )
    await domain.insights.upload(
        admin, build_id, [StatusMessage(key=secrets.token_hex(32), vertexes=vertexes, logs=())]
    )


async def test_builds_are_newest_first_with_facts_duration_and_cache_hits(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    domain = api.app.domain
    project = await new_project(domain, admin)
    org = org_of(admin)
    oldest = await stored_build(
        domain, project, org, 0, BuildStatus.SUCCESS, started=5, finished=80
    )
    middle = await stored_build(domain, project, org, 100, BuildStatus.FAILED, finished=112.5)
    newest = await stored_build(domain, project, org, 200)
    await steps(domain, admin, oldest, cached=3, total=5)
    await steps(domain, admin, middle, cached=0, total=4)

    page = await browser.get(f"/console/projects/{project}")
    assert page.status == 200, page.text
    assert rows_of(page) == [
        Row("running", newest, "2026-01-02 03:07:25 UTC", "—", "—"),
        Row("failed", middle, "2026-01-02 03:05:45 UTC", "12.5s", "0 of 4 (0%)"),
        # From its start (a machine acquired at +5 s) to its end.
        Row("success", oldest, "2026-01-02 03:04:05 UTC", "1m 15s", "3 of 5 (60%)"),
    ]
    for build in (oldest, middle, newest):
        assert f'href="/console/builds/{build}"' in page.text
    text = html.unescape(_TAG.sub(" ", page.text))
    assert "eu-central-1" in text and "30 GB" in text and "7 days" in text
    # The project's header, on the builds tab.
    assert f'<a href="/console/projects/{project}" aria-current="page">Builds</a>' in page.text
    assert link(page, "Older builds") is None and link(page, "Newest builds") is None
    assert "status status-failed" in page.text  # the badge, coloured by its status


async def test_every_cached_step_is_100_percent_and_only_then(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    domain = api.app.domain
    project = await new_project(domain, admin)
    all_cached = await stored_build(domain, project, org_of(admin), 0, BuildStatus.SUCCESS)
    almost = await stored_build(domain, project, org_of(admin), 1, BuildStatus.SUCCESS)
    await steps(domain, admin, all_cached, cached=2, total=2)
    await steps(domain, admin, almost, cached=199, total=200)
    shown = {
        row.build_id: row.cache_hits
        for row in rows_of(await browser.get(f"/console/projects/{project}"))
    }
    assert shown == {all_cached: "2 of 2 (100%)", almost: "199 of 200 (99%)"}


async def test_paging_goes_through_every_build_and_keeps_the_filter(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    domain = api.app.domain
    project = await new_project(domain, admin)
    org = org_of(admin)
    # 30 successes and 4 failures, interleaved.
    made: list[tuple[str, BuildStatus]] = []
    for n in range(34):
        status = BuildStatus.FAILED if n % 9 == 4 else BuildStatus.SUCCESS
        made.append((await stored_build(domain, project, org, n, status), status))
    newest_first = [build for build, _ in reversed(made)]
    successes = [build for build, status in reversed(made) if status is BuildStatus.SUCCESS]
    assert len(successes) == 30

    # Every status: a page of 25, then the rest.
    first = await browser.get(f"/console/projects/{project}")
    older = link(first, "Older builds")
    assert older is not None and "status=" not in older
    second = await browser.get(older)
    assert [r.build_id for r in rows_of(first) + rows_of(second)] == newest_first
    assert len(rows_of(first)) == 25 and link(second, "Older builds") is None
    assert link(second, "Newest builds") == f"/console/projects/{project}"

    # Only successes: the filter is done by the database, so the first page is full, and the
    # next page's link carries the filter with the page token.
    first = await browser.get(f"/console/projects/{project}?status=success")
    assert [r.status for r in rows_of(first)] == ["success"] * 25
    older = link(first, "Older builds")
    assert older is not None and "status=success" in older and "page=" in older
    assert '<option value="success" selected>' in first.text
    second = await browser.get(older)
    assert [r.build_id for r in rows_of(first) + rows_of(second)] == successes
    assert link(second, "Older builds") is None
    assert link(second, "Newest builds") == f"/console/projects/{project}?status=success"
    assert '<option value="success" selected>' in second.text

    # "all" is the same as no filter.
    everything = await browser.get(f"/console/projects/{project}?status=all")
    assert [r.build_id for r in rows_of(everything)] == newest_first[:25]
    assert '<option value="all" selected>' in everything.text


@pytest.mark.parametrize("status", list(BuildStatus))
async def test_each_status_filter_shows_only_that_status(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser, status: BuildStatus
) -> None:
    domain = api.app.domain
    project = await new_project(domain, admin)
    org = org_of(admin)
    made = {
        each: [await stored_build(domain, project, org, n * 10 + i, each) for i in range(2)]
        for n, each in enumerate(BuildStatus)
    }
    page = await browser.get(f"/console/projects/{project}?status={status.value}")
    assert page.status == 200, page.text
    assert [r.build_id for r in rows_of(page)] == list(reversed(made[status]))
    assert {r.status for r in rows_of(page)} == {status.value}
    assert f'<option value="{status.value}" selected>' in page.text
    # Every status is on offer, and a way back to all of them.
    for choice in ("all", *(s.value for s in BuildStatus)):
        assert f'<option value="{choice}"' in page.text
    assert f'href="/console/projects/{project}">Show every status</a>' in page.text


async def test_empty_listings_say_so(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    domain = api.app.domain
    project = await new_project(domain, admin)
    page = await browser.get(f"/console/projects/{project}")
    assert page.status == 200 and rows_of(page) == []
    assert "No builds yet." in page.text
    await stored_build(domain, project, org_of(admin), 0, BuildStatus.SUCCESS)
    failed = await browser.get(f"/console/projects/{project}?status=failed")
    assert failed.status == 200 and rows_of(failed) == []
    assert "No failed builds." in failed.text


async def test_hostile_text_is_shown_as_text(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    domain = api.app.domain
    project = await new_project(domain, admin, name=HOSTILE)
    await stored_build(domain, project, org_of(admin), 0, BuildStatus.SUCCESS)
    page = await browser.get(f"/console/projects/{project}")
    assert page.status == 200
    assert html.escape(HOSTILE, quote=False) in page.text or html.escape(HOSTILE) in page.text
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    refused = await browser.get(f"/console/projects/{project}?status=%3Cscript%3Ealert(1)")
    assert refused.status == 400
    assert "<script>alert" not in refused.text
    assert "&lt;script&gt;alert(1)" in refused.text


async def test_bad_input_gets_a_clear_page(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    domain = api.app.domain
    project = await new_project(domain, admin)
    await stored_build(domain, project, org_of(admin), 0)

    unknown_status = await browser.get(f"/console/projects/{project}?status=done")
    assert unknown_status.status == 400
    assert "Unknown build status" in unknown_status.text
    assert "all, running, success, failed, canceled, error" in unknown_status.text

    for token in ("not-a-token", "cDE6MTox", "%C3%A9"):
        bad_page = await browser.get(f"/console/projects/{project}?page={token}")
        assert bad_page.status == 400, token
        assert "page token is not understood" in bad_page.text

    # Unknown, malformed and another organization's project: the same page.
    other_org = await domain.organizations.create("other")
    other_admin = Principal("t", TokenKind.ORG, frozenset({other_org.id}))
    theirs = await new_project(domain, other_admin, name="theirs")
    await stored_build(domain, theirs, other_org.id, 0)
    for missing in ("zzzzzzzzzz", theirs, "NOT-AN-ID", "%3Cb%3E"):
        page = await browser.get(f"/console/projects/{missing}?status=success")
        assert page.status == 404, missing
        assert "Not found" in page.text and "not found" in page.text
        assert "theirs" not in page.text and "<b>" not in page.text
    # A bad status on a project out of reach changes nothing: still the 404.
    hidden = await browser.get(f"/console/projects/{theirs}?status=nonsense")
    assert hidden.status == 404

    for response in (unknown_status, bad_page, page, hidden):
        assert "Traceback" not in response.text
        assert "script-src 'self'" in response.headers["content-security-policy"]

    # Signed out: to the sign-in form, and back here after it.
    browser.cookies.clear()
    signed_out = await browser.get(f"/console/projects/{project}?status=failed")
    assert signed_out.status == 303
    assert signed_out.location.startswith("/console/sign-in?next=%2Fconsole%2Fprojects%2F")
