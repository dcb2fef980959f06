"""A small fuzz over the console, through the in-process server on SQLite and PostgreSQL: odd
path segments, query strings, forms, methods and headers on every console route, signed in and
signed out. Whatever is sent, the answer is a clean page: never a 5xx, never a traceback, always
with the Content-Security-Policy, and a redirect only ever to a console page of this server."""

from __future__ import annotations

import random
from urllib.parse import quote, urlencode

import pytest

from depot_api.domain.principal import Principal
from depot_api.domain.trust_policies import PolicyInput
from depot_api.models import CiProvider
from tests.conftest import InProcessAPI
from tests.console_client import BASE, ConsoleBrowser
from tests.factories import new_project

# Path segments that name nothing, or name something in a way nothing expects. Each is sent
# percent-encoded, as a browser would send it.
ODD_SEGMENTS = [
    "",
    "a",
    "A" * 10,
    "x" * 10_000,
    "abcdefghi",
    "abcdefghijk",
    "%",
    "%ff",
    "%00",
    "\x00",
    "\r\nSet-Cookie: a=b",
    "\t",
    "é" * 10,
    "😀",
    "\ud800",
    "..",
    ".",
    "<script>alert(1)</script>",
    "javascript:alert(1)",
    "depot_org_" + "x" * 40,
    "'\"<>&",
    "?",
    "#",
    ";",
    "\\",
]
# Query values, each sent for every parameter any console page reads.
ODD_VALUES = [*ODD_SEGMENTS, "0", "-1", "9" * 40, "all", "running", "true"]
QUERY_NAMES = ["page", "status", "step", "next", "revoked", "added", "removed", "sharing"]
# Fields any console form reads.
FORM_NAMES = ["csrf", "description", "lifetime", "provider", "owner", "name", "token", "next"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"]
ACCEPTS = ["*/*", "application/json", "text/html", "image/png", "", "a" * 8000]


def encoded(segment: str) -> str:
    return quote(segment, safe="", errors="surrogatepass")


def route_templates(ids: dict[str, str]) -> list[str]:
    """Every console route, {name} standing for an ID to be replaced."""
    p, b, t, pol = ids["project"], ids["build"], ids["token"], ids["policy"]
    return [
        "/console/{x}",
        "/console/projects/{x}",
        f"/console/projects/{p}/{{x}}",
        "/console/projects/{x}/tokens",
        "/console/projects/{x}/trust-policies",
        f"/console/projects/{p}/tokens/{{x}}/revoke",
        f"/console/projects/{{x}}/tokens/{t}/revoke",
        f"/console/projects/{p}/trust-policies/{{x}}/remove",
        f"/console/projects/{{x}}/trust-policies/{pol}/remove",
        "/console/builds/{x}",
        "/console/builds/{x}/live",
        "/console/builds/{x}/logs",
        "/console/builds/{x}/share",
        "/console/builds/{x}/stop-sharing",
        f"/console/builds/{b}/{{x}}",
        "/console/machines/{x}",
        "/console/sign-in/{x}",
        "/share/{x}",
        "/static/{x}",
    ]


def real_paths(ids: dict[str, str]) -> list[str]:
    p, b, t, pol = ids["project"], ids["build"], ids["token"], ids["policy"]
    return [
        "/console/",
        "/console",
        "/console/sign-in",
        "/console/sign-out",
        "/console/machines",
        "/console/machines/live",
        f"/console/projects/{p}",
        f"/console/projects/{p}/tokens",
        f"/console/projects/{p}/tokens/{t}/revoke",
        f"/console/projects/{p}/trust-policies",
        f"/console/projects/{p}/trust-policies/{pol}/remove",
        f"/console/builds/{b}",
        f"/console/builds/{b}/live",
        f"/console/builds/{b}/logs",
        f"/console/builds/{b}/share",
        f"/console/builds/{b}/stop-sharing",
    ]


@pytest.fixture
async def ids(api: InProcessAPI) -> dict[str, str]:
    domain = api.app.domain
    admin: Principal = await domain.authenticator.authenticate(f"Bearer {api.org_token}")
    project = await new_project(domain, admin)
    build, _ = await domain.builds.create(admin, project)
    token, _ = await domain.tokens.create_project_token(admin, project, "ci")
    policy = await domain.trust_policies.add(
        admin, project, PolicyInput(CiProvider.GITHUB, "octo", "repo", "owner", "name")
    )
    return {"project": project, "build": build.id, "token": token.id, "policy": policy.id}


async def signed_in(api: InProcessAPI) -> tuple[ConsoleBrowser, str]:
    browser = ConsoleBrowser(api.http)
    await browser.sign_in(api.org_token)
    return browser, (await browser.get("/console/")).csrf()


async def send(
    api: InProcessAPI,
    browser: ConsoleBrowser,
    method: str,
    target: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> None:
    """Send one request and check its answer is clean."""
    sent = {"host": "test", "origin": BASE, **browser._headers(), **(headers or {})}
    try:
        response = await api.http.execute(method, f"{BASE}{target}", headers=sent, content=body)
    except Exception as error:  # the app raised: the server would answer 500
        raise AssertionError(f"{method} {target[:200]!r} raised {error!r}") from error
    where = f"{method} {target[:200]!r} {(headers or {})!r:.200}"
    assert response.status < 500, f"{where}: {response.status} {response.content[:500]!r}"
    text = response.content.decode("utf-8", "replace")
    assert "Traceback" not in text, where
    assert 'File "' not in text, where
    # (A client resolves "." and ".." segments itself, so those reach other paths.)
    if target.startswith("/console") and "/." not in target:
        assert "script-src 'self'" in response.headers.get("content-security-policy", ""), where
    if 300 <= response.status < 400:
        location = response.headers.get("location", "")
        assert location.startswith("/console/") or location == "/console", (where, location)
        assert "//" not in location and "\\" not in location, (where, location)
        assert all(ord(ch) > 0x20 and ord(ch) != 0x7F for ch in location), (where, location)


@pytest.mark.parametrize("session", ["signed in", "signed out"])
async def test_odd_path_segments_on_every_route(
    api: InProcessAPI, ids: dict[str, str], session: str
) -> None:
    browser, csrf = await signed_in(api)
    if session == "signed out":
        browser.cookies.clear()
    form = urlencode({"csrf": csrf, "description": "x", "provider": "github"}).encode()
    for template in route_templates(ids):
        for segment in ODD_SEGMENTS:
            target = template.replace("{x}", encoded(segment))
            for method in ("GET", "POST", "HEAD"):
                body = form if method == "POST" else b""
                headers = {"content-type": "application/x-www-form-urlencoded"}
                await send(api, browser, method, target, body=body, headers=headers)


async def test_odd_queries_on_every_page(api: InProcessAPI, ids: dict[str, str]) -> None:
    browser, _ = await signed_in(api)
    for path in real_paths(ids):
        for name in QUERY_NAMES:
            for value in ODD_VALUES:
                await send(api, browser, "GET", f"{path}?{name}={encoded(value)}")
                # An address of this console with something odd in it (where sign-in goes).
                await send(api, browser, "GET", f"{path}?{name}={encoded('/console/' + value)}")
        for raw in ("%", "&&&", "=", "a=%zz", "a=%ff%fe", "&".join(["a=1"] * 500), "x" * 20_000):
            await send(api, browser, "GET", f"{path}?{raw}")


async def test_odd_forms_on_every_form(api: InProcessAPI, ids: dict[str, str]) -> None:
    rng = random.Random(15)
    browser, csrf = await signed_in(api)
    posts = [
        path for path in real_paths(ids) if path.endswith(("tokens", "policies", "share", "in"))
    ]
    for path in posts:
        for name in FORM_NAMES:
            for value in ODD_VALUES:
                form = {"csrf": csrf, "provider": "github", "description": "d", name: value}
                body = urlencode(form, quote_via=quote, errors="surrogatepass").encode()
                await send(
                    api,
                    browser,
                    "POST",
                    path,
                    body=body,
                    headers={"content-type": "application/x-www-form-urlencoded"},
                )
        for body in (
            b"\xff\xfe",
            b"csrf=" + csrf.encode() + b"&description=%ff",
            b"csrf=" + csrf.encode() + b"&" + b"&".join([b"a=1"] * 50),
            b"csrf=" + csrf.encode() + b"&description=" + b"x" * 20_000,
            bytes(rng.randrange(256) for _ in range(2000)),
            b"%" * 100,
        ):
            for content_type in (
                "application/x-www-form-urlencoded",
                "application/x-www-form-urlencoded; charset=latin-1",
                "multipart/form-data; boundary=x",
                "application/json",
                "",
            ):
                await send(
                    api, browser, "POST", path, body=body, headers={"content-type": content_type}
                )


async def test_odd_methods_and_headers(api: InProcessAPI, ids: dict[str, str]) -> None:
    browser, _ = await signed_in(api)
    for path in real_paths(ids):
        for method in METHODS:
            await send(api, browser, method, path)
        for accept in ACCEPTS:
            await send(api, browser, "GET", path, headers={"accept": accept})
        for cookie in (
            "depot_console=" + "x" * 5000,
            "depot_console=%00",
            "depot_console",
            "=;=;;",
            "depot_console=é",
        ):
            await send(api, browser, "GET", path, headers={"cookie": cookie})
        for origin in ("null", "", "http://test:80", "HTTP://TEST", "http://evil", "é"):
            await send(api, browser, "POST", path, headers={"origin": origin})


async def test_odd_sign_in_forms(api: InProcessAPI) -> None:
    # With the sign-in form's own token, so each value reaches the token check and the
    # choice of where to go next.
    browser = ConsoleBrowser(api.http)
    tokens = ["eyJhbGciOiJSUzI1NiJ9.e30.x", "a.b.c", "dpo_" + "é" * 40, "Bearer x", "x " * 100]
    for value in [*ODD_VALUES, *tokens, *("/console/" + v for v in ODD_VALUES)]:
        for field in ("token", "next"):
            browser.cookies.clear()
            form = await browser.get("/console/sign-in")
            fields = {"csrf": form.csrf(), "token": api.org_token, "next": "/console/"}
            fields[field] = value
            body = urlencode(fields, quote_via=quote, errors="surrogatepass").encode()
            await send(
                api,
                browser,
                "POST",
                "/console/sign-in",
                body=body,
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
