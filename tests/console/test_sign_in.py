"""Signing in to the console, signing out, and the checks on every form (CSRF, Origin, a
signed-out session's cookie), through the in-process server on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import urlencode

import pytest
from pyqwest import Client
from pyqwest.testing import ASGITransport

from depot_api.app import create_app
from depot_api.config import Settings
from depot_api.startup import prepare
from tests.conftest import InProcessAPI
from tests.console_client import ConsoleBrowser
from tests.factories import new_build


@pytest.fixture
def browser(api: InProcessAPI) -> ConsoleBrowser:
    return ConsoleBrowser(api.http)


async def test_a_page_without_a_session_goes_to_sign_in(browser: ConsoleBrowser) -> None:
    response = await browser.get("/console/?page=x")
    assert response.status == 303
    assert response.location == "/console/sign-in?next=%2Fconsole%2F%3Fpage%3Dx"
    root = await browser.get("/")  # a browser, asking for HTML
    assert (root.status, root.location) == (303, "/console/")
    # An API client asking for / gets the 404 that lists the paths, not a page.
    plain = await browser.http.get("http://test/", headers={"accept": "*/*"})
    assert plain.status == 404
    assert b"the console at /console/" in plain.content
    bare = await browser.get("/console")
    assert (bare.status, bare.location) == (303, "/console/")


async def test_sign_in_sets_an_opaque_http_only_cookie(
    browser: ConsoleBrowser, api: InProcessAPI
) -> None:
    signed_in = await browser.sign_in(api.org_token)
    assert signed_in.location == "/console/"
    session = [c for c in signed_in.set_cookies if c.startswith("depot_console=")]
    assert len(session) == 1
    cookie = session[0]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; see the TLS test for Secure
    assert api.org_token not in cookie
    home = await browser.get("/console/")
    assert home.status == 200
    assert "Projects" in home.text and "Sign out" in home.text
    assert home.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in home.headers["content-security-policy"]
    assert api.org_token not in home.text


async def test_sign_in_goes_back_to_the_page_asked_for_and_nowhere_else(
    browser: ConsoleBrowser, api: InProcessAPI
) -> None:
    for asked, landed in [
        ("/console/machines", "/console/machines"),
        ("https://evil.example/", "/console/"),
        ("//evil.example/console/", "/console/"),
        ("/console//evil.example", "/console/"),
    ]:
        browser.cookies.clear()
        form = await browser.get("/console/sign-in")
        response = await browser.post(
            "/console/sign-in", {"csrf": form.csrf(), "token": api.org_token, "next": asked}
        )
        assert (response.status, response.location) == (303, landed), asked


@pytest.mark.parametrize(
    "asked",
    [
        "/console/\r\nSet-Cookie: planted=1",
        "/console/\x00",
        "/console/\t/evil.example",
        "/console/ projects",
        "/console/projects/\u00e9",
    ],
)
async def test_sign_in_goes_back_only_to_a_clean_address(
    browser: ConsoleBrowser, api: InProcessAPI, asked: str
) -> None:
    # A CR LF in the Location header would split the response (a header of the attacker's);
    # a NUL or a letter beyond ASCII has no place there either. Each goes home instead, from
    # the form and, already signed in, from the sign-in page's own address.
    form = await browser.get("/console/sign-in")
    response = await browser.post(
        "/console/sign-in", {"csrf": form.csrf(), "token": api.org_token, "next": asked}
    )
    assert (response.status, response.location) == (303, "/console/"), asked
    again = await browser.get(f"/console/sign-in?{urlencode({'next': asked})}")
    assert (again.status, again.location) == (303, "/console/"), asked


async def test_a_page_asked_signed_out_is_sent_to_sign_in_encoded(
    browser: ConsoleBrowser, api: InProcessAPI
) -> None:
    asked = await browser.get("/console/projects/%C3%A9t%C3%A9?status=all")
    assert asked.status == 303
    assert asked.location == (
        "/console/sign-in?next=%2Fconsole%2Fprojects%2F%25C3%25A9t%25C3%25A9%3Fstatus%3Dall"
    )
    form = await browser.get(asked.location)
    response = await browser.post(
        "/console/sign-in",
        {"csrf": form.csrf(), "token": api.org_token, "next": "/console/projects/%C3%A9t%C3%A9"},
    )
    assert response.location == "/console/projects/%C3%A9t%C3%A9"


@pytest.mark.parametrize(
    ("token", "status", "words"),
    [
        ("", 401, "enter an organization or user token"),
        ("depot_org_nonsense", 401, ""),
        ("<script>alert(1)</script>", 401, ""),
    ],
)
async def test_a_bad_token_is_refused_on_the_form(
    browser: ConsoleBrowser, token: str, status: int, words: str
) -> None:
    form = await browser.get("/console/sign-in")
    response = await browser.post("/console/sign-in", {"csrf": form.csrf(), "token": token})
    assert response.status == status
    assert 'role="alert"' in response.text and words in response.text
    assert "<script>alert" not in response.text
    assert not any(c.startswith("depot_console=") for c in response.set_cookies)


async def test_a_narrower_token_cannot_sign_in(browser: ConsoleBrowser, api: InProcessAPI) -> None:
    _, build_token = await new_build(api.app.domain, api.org_token)
    form = await browser.get("/console/sign-in")
    response = await browser.post("/console/sign-in", {"csrf": form.csrf(), "token": build_token})
    assert response.status == 403
    assert "use an organization or user token" in response.text


async def test_sign_in_without_its_form_token_is_refused(
    browser: ConsoleBrowser, api: InProcessAPI
) -> None:
    await browser.get("/console/sign-in")  # the form's cookie, but not its value
    response = await browser.post("/console/sign-in", {"token": api.org_token, "csrf": "guess"})
    assert response.status == 403
    assert "did not come from this console" in response.text
    browser.cookies.clear()  # another site's page: no form cookie at all
    response = await browser.post("/console/sign-in", {"token": api.org_token, "csrf": ""})
    assert response.status == 403


async def test_a_form_post_without_the_token_is_refused(
    browser: ConsoleBrowser, api: InProcessAPI
) -> None:
    await browser.sign_in(api.org_token)
    home = await browser.get("/console/")
    for form in (
        {},
        {"csrf": ""},
        {"csrf": "0" * 64},
        {"csrf": home.csrf() + "0"},
        {"csrf": "\u00e9" * 64},  # not ASCII: refused, not a 500
    ):
        response = await browser.post("/console/sign-out", form)
        assert response.status == 403, form
        assert "did not come from this console session" in response.text
    # Nothing was done: the session still works.
    assert (await browser.get("/console/")).status == 200


async def test_a_post_from_another_site_is_refused(
    browser: ConsoleBrowser, api: InProcessAPI
) -> None:
    await browser.sign_in(api.org_token)
    home = await browser.get("/console/")
    for origin in ("https://evil.example", "null", "http://test.evil.example"):
        response = await browser.post("/console/sign-out", {"csrf": home.csrf()}, origin=origin)
        assert response.status == 403, origin
        assert "another site" in response.text
    assert (await browser.get("/console/")).status == 200


async def test_sign_out_ends_the_session_and_its_cookie_is_refused(
    browser: ConsoleBrowser, api: InProcessAPI
) -> None:
    await browser.sign_in(api.org_token)
    home = await browser.get("/console/")
    csrf = home.csrf()
    old_cookies = dict(browser.cookies)
    response = await browser.post("/console/sign-out", {"csrf": csrf})
    assert (response.status, response.location) == (303, "/console/sign-in")
    assert any(c.startswith("depot_console=;") and "Max-Age=0" in c for c in response.set_cookies)
    # The old cookie, replayed (as a thief would), with its once-valid form token.
    browser.cookies = old_cookies
    assert (await browser.get("/console/")).status == 303
    replayed = await browser.post("/console/sign-out", {"csrf": csrf})
    assert replayed.status == 403
    assert "session has ended" in replayed.text


async def test_bad_requests_get_clear_pages(browser: ConsoleBrowser, api: InProcessAPI) -> None:
    await browser.sign_in(api.org_token)
    csrf = (await browser.get("/console/")).csrf()
    not_found = await browser.get("/console/no/such/page")
    assert not_found.status == 404 and "Not found" in not_found.text
    wrong_method = await browser.post("/console/", {"csrf": csrf})
    assert wrong_method.status == 405
    as_json = await browser.post("/console/sign-out", {"csrf": csrf}, content_type="text/plain")
    assert as_json.status == 415
    too_big = await browser.post("/console/sign-out", {"csrf": csrf, "x": "y" * 20_000})
    assert too_big.status == 413
    bad_query = await browser.get("/console/?page=%ff")
    assert bad_query.status == 400
    bad_page = await browser.get("/console/?page=not-a-token")
    assert bad_page.status == 400
    for response in (not_found, wrong_method, as_json, too_big, bad_query, bad_page):
        assert "Traceback" not in response.text
        assert "script-src 'self'" in response.headers["content-security-policy"]


async def test_a_wrong_method_is_405_naming_the_methods_allowed(
    browser: ConsoleBrowser, api: InProcessAPI
) -> None:
    # HTTP requires a 405 to carry Allow, so a client (or a proxy) knows what to send instead.
    await browser.sign_in(api.org_token)
    csrf = (await browser.get("/console/")).csrf()
    for method, path, allowed in [
        ("POST", "/console/", "GET, HEAD"),
        ("PUT", "/console/machines", "GET, HEAD"),
        ("DELETE", "/console/machines/live", "GET, HEAD"),
        ("GET", "/console/sign-out", "POST"),
        ("PUT", "/console/sign-in", "GET, POST, HEAD"),
    ]:
        response = await api.http.execute(
            method,
            f"http://test{path}",
            headers={**browser._headers(), "content-type": "application/x-www-form-urlencoded"},
            content=f"csrf={csrf}".encode(),
        )
        assert response.status == 405, (method, path)
        assert response.headers.get("allow") == allowed, (method, path)


async def test_an_https_public_url_makes_the_cookie_secure_behind_a_proxy(
    settings: Settings,
) -> None:
    """A proxy ends TLS and speaks plain HTTP to the server: with --public-url https://…
    the cookie is still __Host- and Secure, and is read back under that name."""
    public = replace(settings, public_url="https://depot.example.com")
    org_token = await prepare(public)
    assert org_token is not None
    async with ASGITransport(create_app(public)) as transport:
        browser = ConsoleBrowser(Client(transport))
        signed_in = await browser.sign_in(org_token)
        session = [c for c in signed_in.set_cookies if c.startswith("__Host-depot_console=")]
        assert len(session) == 1 and "; Secure" in session[0] and "Path=/" in session[0]
        assert not any(c.startswith("depot_console=") for c in signed_in.set_cookies)
        assert (await browser.get("/console/")).status == 200
        # The same value under the plain name is no session here.
        value = browser.cookies.pop("__Host-depot_console")
        browser.cookies["depot_console"] = value
        assert (await browser.get("/console/")).status == 303
