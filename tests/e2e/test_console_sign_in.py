"""Signing in to the console and out again in a real headless Chromium, on both databases:
the cookie the browser keeps is HttpOnly (no script can read it), the projects page shows the
organization's projects, and after signing out the console asks to sign in again."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from depot_api.gen.depot.core.v1 import project_pb
from tests.helpers import ServerProcess

from .browser import sign_in, watch
from .conftest import Org
from .machines import api_for


async def _project(server: ServerProcess, token: str, name: str) -> str:
    api = api_for(server, token)
    created = await api.projects.create_project(
        project_pb.CreateProjectRequest(name=name, region_id="us-east-1"), headers=api.org
    )
    return created.project.project_id


def test_sign_in_and_out_in_a_real_browser(
    server: ServerProcess, org: Org, browser: Any, tmp_path: Path
) -> None:
    with ThreadPoolExecutor(1) as thread:  # Playwright's sync API owns this thread's loop
        project_id = thread.submit(asyncio.run, _project(server, org.token, "web <app>")).result()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watched = watch(page)
    page.goto(f"{server.url}/console/")
    assert "/console/sign-in" in page.url
    page.screenshot(path=str(tmp_path / "console-sign-in.png"))
    page.fill("#token", "depot_org_not-a-real-token")
    page.click("button[type=submit]")
    assert "/console/sign-in" in page.url
    assert page.inner_text("[role=alert]")

    sign_in(page, server.url, org.token)
    cookies = {c["name"]: c for c in context.cookies()}
    assert cookies["depot_console"]["httpOnly"] is True
    assert cookies["depot_console"]["sameSite"] == "Lax"
    assert org.token not in cookies["depot_console"]["value"]
    assert page.evaluate("document.cookie") == ""  # nothing a script could read
    assert "web <app>" in page.inner_text("main")
    assert page.get_attribute(f"a[href='/console/projects/{project_id}']", "href")
    page.screenshot(path=str(tmp_path / "console-projects.png"), full_page=True)

    page.click("text=Sign out")
    page.wait_for_url(f"{server.url}/console/sign-in")
    page.goto(f"{server.url}/console/")
    assert "/console/sign-in" in page.url
    watched.assert_quiet()
    context.close()
    print(f"screenshots in {tmp_path}")
