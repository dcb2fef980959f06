"""A project's builds page in a real headless Chromium, on both databases: sign in, click the
project on the projects page, see its builds newest first (with a cache-hit ratio from
uploaded BuildKit status), filter by status with the form, and follow "Older builds" with the
filter kept. The builds are made through the API (CreateBuild, FinishBuild).

Screenshots (desktop 1280x900 and phone 390x844) are kept under the test's tmp directory
(project-builds-*.png); the test prints where."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protobuf import Oneof

from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.core.v1 import project_pb
from depot_api.gen.depotapi.insights.v1 import insights_connect, insights_pb
from depot_api.gen.moby.buildkit.v1 import control_pb as c
from tests.helpers import ServerProcess

from .browser import sign_in, watch
from .conftest import Org
from .machines import api_for, bearer

SUCCESSES = 26  # one more than a page
SUCCESS = Oneof("success", build_pb.FinishBuildRequest.BuildSuccess())
FAILURE = Oneof("error", build_pb.FinishBuildRequest.BuildError(error="make test failed"))
# Three steps, two of them from cache: the build's ratio is "2 of 3 (66%)".
STATUS = c.StatusResponse(
    vertexes=[
        c.Vertex(digest=f"sha256:{'a' * 64}", name="[1/3] FROM busybox", cached=True),
        c.Vertex(digest=f"sha256:{'b' * 64}", name="[2/3] COPY . /app", cached=True),
        c.Vertex(digest=f"sha256:{'c' * 64}", name="[3/3] RUN make"),
    ]
)


@dataclass
class Made:
    project_id: str
    newest_first: list[str]
    successes: list[str]  # newest first
    failures: list[str]  # newest first
    with_steps: str


async def _builds(server: ServerProcess, token: str) -> Made:
    api = api_for(server, token)
    project = await api.projects.create_project(
        project_pb.CreateProjectRequest(name="web <app>", region_id="us-east-1"), headers=api.org
    )
    project_id = project.project.project_id
    uploads = insights_connect.BuildInsightsServiceClient(server.url, http_client=api.http)
    made: list[tuple[str, str]] = []
    # Successes with two failures among them, then one still running (the newest).
    plan = ["success"] * SUCCESSES
    plan.insert(20, "failed")
    plan.insert(3, "failed")
    for outcome in [*plan, "running"]:
        build = await api.builds.create_build(
            build_pb.CreateBuildRequest(project_id=project_id), headers=api.org
        )
        if len(made) == len(plan) - 1:  # the newest finished build gets steps
            await uploads.upload_build_status(
                insights_pb.UploadBuildStatusRequest(
                    build_id=build.build_id, status_responses=[STATUS.to_binary()]
                ),
                headers=bearer(build.build_token),
            )
        if outcome != "running":
            await api.builds.finish_build(
                build_pb.FinishBuildRequest(
                    build_id=build.build_id, outcome=SUCCESS if outcome == "success" else FAILURE
                ),
                headers=api.org,
            )
        made.append((build.build_id, outcome))
    newest_first = [build_id for build_id, _ in reversed(made)]
    return Made(
        project_id=project_id,
        newest_first=newest_first,
        successes=[b for b, outcome in reversed(made) if outcome == "success"],
        failures=[b for b, outcome in reversed(made) if outcome == "failed"],
        with_steps=made[len(plan) - 1][0],
    )


def _table(page: Any) -> list[tuple[str, str]]:
    """The table's (status, build ID) rows, as shown."""
    rows = page.locator("table.builds tbody tr")
    return [
        (
            rows.nth(n).locator("td[data-label=Status]").inner_text().strip().lower(),
            rows.nth(n).locator("td[data-label=Build]").inner_text().strip(),
        )
        for n in range(rows.count())
    ]


def test_a_projects_builds_in_a_real_browser(
    server: ServerProcess, org: Org, browser: Any, tmp_path: Path
) -> None:
    with ThreadPoolExecutor(1) as thread:  # Playwright's sync API owns this thread's loop
        made = thread.submit(asyncio.run, _builds(server, org.token)).result()
    project_url = f"{server.url}/console/projects/{made.project_id}"
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watched = watch(page)
    sign_in(page, server.url, org.token)

    # From the projects page, by its link.
    page.click(f"h2 a[href='/console/projects/{made.project_id}']")
    page.wait_for_url(project_url)
    assert "web <app>" in page.inner_text("h1")  # the name, as text
    assert page.evaluate("document.scripts.length") == 1  # console.js alone
    facts = page.inner_text("dl.facts")
    assert "us-east-1" in facts and "GB" in facts and "days" in facts
    assert len(made.successes) == SUCCESSES and len(made.failures) == 2
    shown = _table(page)
    assert [build_id for _, build_id in shown] == made.newest_first[:25]
    assert shown[0][0] == "running"
    row = page.locator(f"tr:has(a[href='/console/builds/{made.with_steps}'])")
    assert row.locator("td[data-label='Cache hits']").inner_text().strip() == "2 of 3 (66%)"
    assert row.locator("td[data-label=Duration]").inner_text().strip().endswith("s")
    page.screenshot(path=str(tmp_path / "project-builds-desktop.png"), full_page=True)

    # Filter: failures only, through the form.
    page.select_option("#status", "failed")
    page.click("form.build-filter button[type=submit]")
    page.wait_for_url(f"{project_url}?status=failed")
    assert _table(page) == [("failed", build_id) for build_id in made.failures]
    assert page.locator("text=Older builds").count() == 0

    # Successes: a full page, then "Older builds" keeps the filter.
    page.select_option("#status", "success")
    page.click("form.build-filter button[type=submit]")
    page.wait_for_url(f"{project_url}?status=success")
    first = _table(page)
    assert first == [("success", build_id) for build_id in made.successes[:25]]
    page.click("text=Older builds")
    page.wait_for_url(lambda url: "page=" in url)
    assert "status=success" in page.url
    assert _table(page) == [("success", build_id) for build_id in made.successes[25:]]
    assert page.input_value("#status") == "success"
    page.screenshot(path=str(tmp_path / "project-builds-older.png"), full_page=True)

    # A bad filter typed into the address: a clear page, not a crash.
    response = page.goto(f"{project_url}?status=finished")
    assert response is not None and response.status == 400
    assert "running, success, failed, canceled, error" in page.inner_text("main")
    watched.assert_quiet()
    context.close()

    # A phone: the table becomes cards, nothing wider than the screen.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = phone.new_page()
    watched = watch(page)
    sign_in(page, server.url, org.token)
    page.goto(project_url)
    assert [build_id for _, build_id in _table(page)] == made.newest_first[:25]
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert not page.locator("table.builds thead").is_visible()
    page.screenshot(path=str(tmp_path / "project-builds-phone.png"))  # the first screen
    page.screenshot(path=str(tmp_path / "project-builds-phone-full.png"), full_page=True)
    watched.assert_quiet()
    phone.close()
    print(f"screenshots in {tmp_path}")
