"""A project's tokens and trust policies in the console, in a real headless Chromium against a
real server process, on both databases: a token made in the browser works on the API, and
after it is revoked in the browser the API refuses it; a trust policy is added (after a bad
try, which the form explains) and removed. Revoking and removing ask first: declined, nothing
changes; with script off, Revoke is sent at once, as before. No script runs that should not.

Screenshots, on a laptop's and a phone's screen, are kept under the test's tmp directory
(tokens-*.png, trust-policies-*.png)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.core.v1 import project_pb
from tests.helpers import ServerProcess

from .browser import sign_in, watch
from .conftest import Org
from .machines import api_for, bearer

SCREENS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}


async def _project(server: ServerProcess, token: str, name: str) -> str:
    api = api_for(server, token)
    created = await api.projects.create_project(
        project_pb.CreateProjectRequest(name=name, region_id="us-east-1"), headers=api.org
    )
    return created.project.project_id


async def _api_refusal(server: ServerProcess, project_id: str, secret: str) -> Code | None:
    """None when the secret lists the project's builds on the server's API, else the code."""
    api = api_for(server, secret)
    try:
        await api.builds.list_builds(
            build_pb.ListBuildsRequest(project_id=project_id), headers=bearer(secret)
        )
    except ConnectError as error:
        return error.code
    return None


def _in_thread(thread: ThreadPoolExecutor, work: Any) -> Any:
    # Playwright's sync API owns the test thread's loop: async clients run in another thread.
    return thread.submit(asyncio.run, work).result()


def _create_token(page: Any, description: str, lifetime: str) -> str:
    page.fill("#description", description)
    page.select_option("#lifetime", lifetime)
    page.click("text=Create token")
    page.wait_for_selector("#new-token-secret")
    assert "won't be shown again" in page.inner_text(".new-token")
    secret: str = page.inner_text("#new-token-secret").strip()
    return secret


def test_tokens_and_trust_policies_in_a_real_browser(
    server: ServerProcess, org: Org, browser: Any, tmp_path: Path
) -> None:
    with ThreadPoolExecutor(1) as thread:
        project_id = _in_thread(thread, _project(server, org.token, "web <app>"))
        tokens_url = f"{server.url}/console/projects/{project_id}/tokens"
        context = browser.new_context(viewport=SCREENS["desktop"])
        page = context.new_page()
        watched = watch(page)
        sign_in(page, server.url, org.token)
        page.goto(tokens_url)
        assert "This project has no tokens" in page.inner_text("main")
        assert page.get_attribute(".tabs a[aria-current=page]", "href").endswith("/tokens")

        # An empty description is stopped by the browser itself (required): nothing is sent.
        page.click("text=Create token")
        assert page.url == tokens_url

        secret = _create_token(page, "deploy <script>alert('x')</script>", "7d")
        assert secret.startswith("dpp_")
        assert page.url == tokens_url  # the secret is in the page, never in an address
        page.screenshot(path=str(tmp_path / "tokens-created-desktop.png"), full_page=True)
        assert _in_thread(thread, _api_refusal(server, project_id, secret)) is None

        page.goto(tokens_url)  # the list again: the secret is not on it
        assert secret not in page.content()
        row = page.locator("tr", has_text="deploy <script>")
        assert row.count() == 1
        assert "never" not in row.inner_text()  # it expires in 7 days
        page.screenshot(path=str(tmp_path / "tokens-desktop.png"), full_page=True)
        # Revoking asks first. Declined: nothing is sent, and the token still works.
        revoke = row.get_by_role("button", name="Revoke")
        watched.answer_confirm(False)
        revoke.click()
        assert watched.confirmed == [
            "Revoke the token “deploy <script>alert('x')</script>”? Whatever uses it is"
            " refused from then on; this cannot be undone."
        ]  # the description as text, in the question too
        page.evaluate("1")  # a round trip to the page: a submit would have started by now
        assert not [url for url in watched.posted if url.endswith("/revoke")], watched.posted
        assert page.url == tokens_url and row.count() == 1
        assert _in_thread(thread, _api_refusal(server, project_id, secret)) is None
        page.goto(tokens_url)
        assert row.count() == 1
        # Accepted: revoked, and the API refuses it.
        watched.answer_confirm(True)
        revoke.click()
        page.wait_for_url(f"{tokens_url}?revoked=*")
        assert len(watched.confirmed) == 2
        assert "revoked" in page.inner_text(".notice")
        assert "deploy <script>" not in page.inner_text("main")
        assert _in_thread(thread, _api_refusal(server, project_id, secret)) == Code.UNAUTHENTICATED

        policies_url = f"{server.url}/console/projects/{project_id}/trust-policies"
        page.click(".tabs >> text=Trust policies")
        page.wait_for_url(policies_url)
        assert "No trust policies" in page.inner_text("main")
        page.fill("#buildkite-owner", "my-org")
        page.fill("#buildkite-name", "pipe line")
        page.click("text=Add Buildkite policy")
        assert "is not a Buildkite slug" in page.inner_text("#add-buildkite [role=alert]")
        assert page.input_value("#buildkite-owner") == "my-org"  # kept, to fix and resend
        page.screenshot(path=str(tmp_path / "trust-policies-error-desktop.png"), full_page=True)
        page.fill("#github-owner", "octo-org")
        page.fill("#github-name", "octo-repo")
        page.click("text=Add GitHub Actions policy")
        page.wait_for_url(f"{policies_url}?added=*")
        assert "octo-org/octo-repo" in page.inner_text("table.policies")
        page.screenshot(path=str(tmp_path / "trust-policies-desktop.png"), full_page=True)
        remove = page.get_by_role(
            "button", name="Remove the GitHub Actions policy octo-org/octo-repo"
        )
        # Removing asks first: declined, the policy stays (listed after a reload too).
        watched.answer_confirm(False)
        remove.click()
        assert watched.confirmed[-1] == (
            "Remove the GitHub Actions policy octo-org/octo-repo? Its CI jobs can no longer"
            " create builds in this project."
        )
        page.evaluate("1")
        assert not [url for url in watched.posted if url.endswith("/remove")], watched.posted
        page.goto(policies_url)
        assert "octo-org/octo-repo" in page.inner_text("table.policies")
        watched.answer_confirm(True)
        remove.click()
        page.wait_for_url(f"{policies_url}?removed=*")
        assert len(watched.confirmed) == 4
        assert "No trust policies" in page.inner_text("main")
        watched.assert_quiet()
        context.close()

        # On a phone's screen: a token made and listed, and a policy listed.
        phone = browser.new_context(viewport=SCREENS["phone"], is_mobile=True, has_touch=True)
        page = phone.new_page()
        watched = watch(page)
        sign_in(page, server.url, org.token)
        page.goto(tokens_url)
        _create_token(page, "CI on main, for the nightly release pipeline", "never")
        page.screenshot(path=str(tmp_path / "tokens-created-phone.png"), full_page=True)
        page.goto(tokens_url)
        page.screenshot(path=str(tmp_path / "tokens-phone.png"), full_page=True)
        page.goto(policies_url)
        page.fill("#circleci-owner", "8a3e3f4e-0c4e-4c3a-9f1e-2b6a7c8d9e0f")
        page.fill("#circleci-name", "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d")
        page.click("text=Add CircleCI policy")
        page.wait_for_url(f"{policies_url}?added=*")
        page.screenshot(path=str(tmp_path / "trust-policies-phone.png"), full_page=True)
        watched.assert_quiet()
        phone.close()
    print(f"screenshots in {tmp_path}")


def test_without_script_revoking_is_one_click_as_before(
    server: ServerProcess, org: Org, browser: Any
) -> None:
    """The question is the script's: with JavaScript off the Revoke form is sent at once."""
    with ThreadPoolExecutor(1) as thread:
        project_id = _in_thread(thread, _project(server, org.token, "no script"))
        tokens_url = f"{server.url}/console/projects/{project_id}/tokens"
        context = browser.new_context(viewport=SCREENS["desktop"], java_script_enabled=False)
        page = context.new_page()
        watched = watch(page)
        sign_in(page, server.url, org.token)
        page.goto(tokens_url)
        secret = _create_token(page, "scriptless", "never")
        assert _in_thread(thread, _api_refusal(server, project_id, secret)) is None
        page.goto(tokens_url)
        page.get_by_role("button", name="Revoke scriptless").click()
        page.wait_for_url(f"{tokens_url}?revoked=*")
        assert _in_thread(thread, _api_refusal(server, project_id, secret)) == Code.UNAUTHENTICATED
        assert watched.confirmed == []
        watched.assert_quiet()
        context.close()
