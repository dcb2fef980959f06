"""A project's tokens page in the console, through the in-process server on SQLite and
PostgreSQL: the list, making a token (its secret shown once, and working on the API), revoking
one (it stops working on the API), the refusals (another project's or organization's token, an
unknown one, a form without its form token, bad input), and escaping."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from depot_api.domain.principal import Principal
from depot_api.gen.depot.build.v1 import build_pb
from depot_api.models import TokenKind
from tests.conftest import InProcessAPI, bearer
from tests.console_client import ConsoleBrowser
from tests.factories import new_project

_SECRET = re.compile(r'id="new-token-secret">([^<]+)<')
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"


def tokens_path(project_id: str) -> str:
    return f"/console/projects/{project_id}/tokens"


async def api_refusal(api: InProcessAPI, project_id: str, secret: str) -> Code | None:
    """None when the secret lists the project's builds through the API, else the error's code."""
    try:
        await api.clients().builds.list_builds(
            build_pb.ListBuildsRequest(project_id=project_id), headers=bearer(secret)
        )
    except ConnectError as error:
        return error.code
    return None


async def test_the_page_lists_the_projects_tokens(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    domain = api.app.domain
    project_id = await new_project(domain, admin, "web")
    other_id = await new_project(domain, admin, "other")
    kept, _ = await domain.tokens.create_project_token(admin, project_id, "CI on main")
    expiring, _ = await domain.tokens.create_project_token(
        admin, project_id, "for a day", timedelta(days=1)
    )
    elsewhere, _ = await domain.tokens.create_project_token(admin, other_id, "other project's")
    page = await browser.get(tokens_path(project_id))
    assert page.status == 200
    assert 'aria-current="page">Tokens<' in page.text
    assert "CI on main" in page.text and kept.id in page.text
    assert "for a day" in page.text and expiring.id in page.text
    assert "other project&#39;s" not in page.text and elsewhere.id not in page.text
    assert f'action="{tokens_path(project_id)}/{kept.id}/revoke"' in page.text
    assert "never" in page.text  # kept has no expiry
    assert "not yet" in page.text  # neither has been used
    assert page.text.count('name="csrf"') >= 4  # sign-out, two revokes, create


async def test_an_expired_token_is_marked_and_can_be_revoked(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    domain = api.app.domain
    project_id = await new_project(domain, admin)
    fresh, _ = domain.tokens.new_token(
        TokenKind.PROJECT, "stale", org_id=next(iter(admin.org_ids)), project_id=project_id
    )
    # Made a week ago, for a day: expired six days ago.
    made = fresh.created_at - timedelta(days=7)
    stale = replace(fresh, created_at=made, expires_at=made + timedelta(days=1))
    await domain.store.orgs.insert_token(stale)
    page = await browser.get(tokens_path(project_id))
    assert page.status == 200
    row = page.text.split(f'id="token-{stale.id}"')[1].split("</tr>")[0]
    assert 'tag-error">expired</span>' in row
    revoked = await browser.post(
        f"{tokens_path(project_id)}/{stale.id}/revoke", {"csrf": page.csrf()}
    )
    assert revoked.status == 303
    assert await domain.tokens.list_project_tokens(admin, project_id) == []


async def test_a_new_tokens_secret_is_shown_once_and_works_on_the_api(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    project_id = await new_project(api.app.domain, admin)
    page = await browser.get(tokens_path(project_id))
    created = await browser.post(
        tokens_path(project_id),
        {"csrf": page.csrf(), "description": "  deploy bot  ", "lifetime": "7d"},
    )
    assert created.status == 200, created.text
    assert created.headers["cache-control"] == "no-store"
    assert "won't be shown again" in created.text
    found = _SECRET.search(created.text)
    assert found, created.text
    secret = found.group(1)
    assert secret.startswith("dpp_")
    [token] = await api.app.domain.tokens.list_project_tokens(admin, project_id)
    assert token.description == "deploy bot"
    assert token.expires_at is not None
    assert timedelta(days=6, hours=23) < token.expires_at - token.created_at <= timedelta(days=7)

    assert await api_refusal(api, project_id, secret) is None
    listed = await browser.get(tokens_path(project_id))
    assert listed.status == 200
    assert secret not in listed.text and "new-token-secret" not in listed.text
    assert "deploy bot" in listed.text and token.id in listed.text


async def test_a_token_without_expiry(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    project_id = await new_project(api.app.domain, admin)
    page = await browser.get(tokens_path(project_id))
    created = await browser.post(
        tokens_path(project_id), {"csrf": page.csrf(), "description": "forever"}
    )
    assert created.status == 200, created.text
    [token] = await api.app.domain.tokens.list_project_tokens(admin, project_id)
    assert token.expires_at is None


async def test_revoking_a_token_stops_it_on_the_api(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    domain = api.app.domain
    project_id = await new_project(domain, admin)
    token, secret = await domain.tokens.create_project_token(admin, project_id, "doomed")
    assert await api_refusal(api, project_id, secret) is None
    page = await browser.get(tokens_path(project_id))
    revoked = await browser.post(
        f"{tokens_path(project_id)}/{token.id}/revoke", {"csrf": page.csrf()}
    )
    assert (revoked.status, revoked.location) == (
        303,
        f"{tokens_path(project_id)}?revoked={token.id}",
    )
    after = await browser.get(revoked.location)
    assert after.status == 200
    assert f"Token <code>{token.id}</code> revoked" in after.text
    assert "doomed" not in after.text
    assert await api_refusal(api, project_id, secret) == Code.UNAUTHENTICATED
    # Again: the token is gone, and the page says so.
    again = await browser.post(
        f"{tokens_path(project_id)}/{token.id}/revoke", {"csrf": page.csrf()}
    )
    assert again.status == 404 and "not found" in again.text


async def test_a_notice_names_only_a_token_id(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    project_id = await new_project(api.app.domain, admin)
    page = await browser.get(f"{tokens_path(project_id)}?revoked=%3Cb%3Eall+tokens%3C%2Fb%3E")
    assert page.status == 200
    assert 'class="notice"' not in page.text and "all tokens" not in page.text


async def test_another_projects_or_an_unknown_token_is_not_revoked(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    domain = api.app.domain
    project_id = await new_project(domain, admin, "mine")
    sibling_id = await new_project(domain, admin, "sibling")
    sibling_token, sibling_secret = await domain.tokens.create_project_token(
        admin, sibling_id, "sibling's"
    )
    other_org = await domain.organizations.create("org-b")
    _, other_org_secret = await domain.tokens.create_org_token(other_org.id)
    other_admin = await domain.authenticator.authenticate(f"Bearer {other_org_secret}")
    foreign_project = await new_project(domain, other_admin, "foreign")
    foreign_token, foreign_secret = await domain.tokens.create_project_token(
        other_admin, foreign_project, "foreign"
    )
    csrf = (await browser.get(tokens_path(project_id))).csrf()
    for token_id in (sibling_token.id, foreign_token.id, "aaaaaaaaaa"):
        refused = await browser.post(f"{tokens_path(project_id)}/{token_id}/revoke", {"csrf": csrf})
        assert refused.status == 404, (token_id, refused.text)
        assert "Not found" in refused.text and f"token {token_id} not found" in refused.text
        assert "Traceback" not in refused.text
    # The foreign token through its own (foreign) project's address: still not found.
    refused = await browser.post(
        f"{tokens_path(foreign_project)}/{foreign_token.id}/revoke", {"csrf": csrf}
    )
    assert refused.status == 404
    malformed = await browser.post(f"{tokens_path(project_id)}/NOT-AN-ID/revoke", {"csrf": csrf})
    assert malformed.status == 400 and "not a valid ID" in malformed.text
    assert await api_refusal(api, sibling_id, sibling_secret) is None
    assert await api_refusal(api, foreign_project, foreign_secret) is None


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"description": ""}, "Describe the token"),
        ({"description": "   "}, "Describe the token"),
        ({"description": "x" * 257}, "Description is too long: 257 characters, at most 256"),
        ({"description": "tab\there"}, "Description must not contain control characters"),
        ({"description": "ok", "lifetime": "forever"}, "Choose a lifetime"),
        ({"description": "ok", "lifetime": ""}, "Choose a lifetime"),
        ({"description": HOSTILE, "lifetime": "<b>1d</b>"}, "Choose a lifetime"),
    ],
)
async def test_bad_input_shows_the_form_again_and_makes_nothing(
    api: InProcessAPI,
    admin: Principal,
    browser: ConsoleBrowser,
    form: dict[str, str],
    message: str,
) -> None:
    project_id = await new_project(api.app.domain, admin)
    csrf = (await browser.get(tokens_path(project_id))).csrf()
    answer = await browser.post(tokens_path(project_id), {"csrf": csrf, **form})
    assert answer.status == 400, answer.text
    assert 'role="alert"' in answer.text and message in answer.text
    assert 'id="description"' in answer.text  # the form, to try again
    assert "new-token-secret" not in answer.text
    assert "<script>alert" not in answer.text and "<img src=x" not in answer.text
    assert "<b>1d</b>" not in answer.text
    assert await api.app.domain.tokens.list_project_tokens(admin, project_id) == []


async def test_a_description_with_markup_is_shown_as_text(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    project_id = await new_project(api.app.domain, admin)
    csrf = (await browser.get(tokens_path(project_id))).csrf()
    created = await browser.post(tokens_path(project_id), {"csrf": csrf, "description": HOSTILE})
    assert created.status == 200
    listed = await browser.get(tokens_path(project_id))
    for page in (created, listed):
        assert "<script>alert" not in page.text and "<img src=x" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    # The Revoke form's question names the token as text too (an attribute, escaped).
    assert (
        'data-confirm="Revoke the token “&lt;script&gt;alert(1)&lt;/script&gt;'
        "&lt;img src=x onerror=alert(2)&gt;”? Whatever uses it is refused from then on;"
    ) in listed.text


async def test_forms_without_the_form_token_are_refused_and_change_nothing(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    domain = api.app.domain
    project_id = await new_project(domain, admin)
    token, secret = await domain.tokens.create_project_token(admin, project_id, "kept")
    for csrf in ({}, {"csrf": ""}, {"csrf": "0" * 43}):
        created = await browser.post(tokens_path(project_id), {**csrf, "description": "sneaky"})
        assert created.status == 403, created.text
        assert "did not come from this console session" in created.text
        assert "new-token-secret" not in created.text
        revoked = await browser.post(f"{tokens_path(project_id)}/{token.id}/revoke", csrf)
        assert revoked.status == 403, revoked.text
    [still] = await domain.tokens.list_project_tokens(admin, project_id)
    assert still.id == token.id
    assert await api_refusal(api, project_id, secret) is None


async def test_another_organizations_project_is_not_found(
    api: InProcessAPI, browser: ConsoleBrowser
) -> None:
    domain = api.app.domain
    other_org = await domain.organizations.create("org-b")
    _, other_secret = await domain.tokens.create_org_token(other_org.id)
    other_admin = await domain.authenticator.authenticate(f"Bearer {other_secret}")
    foreign = await new_project(domain, other_admin, "foreign")
    page = await browser.get(tokens_path(foreign))
    assert page.status == 404 and f"project {foreign} not found" in page.text
    csrf = (await browser.get("/console/")).csrf()
    created = await browser.post(tokens_path(foreign), {"csrf": csrf, "description": "x"})
    assert created.status == 404 and "new-token-secret" not in created.text
    assert await domain.tokens.list_project_tokens(other_admin, foreign) == []
    assert (await browser.get(tokens_path("aaaaaaaaaa"))).status == 404
    assert (await browser.get(tokens_path("Not-An-ID"))).status == 400
