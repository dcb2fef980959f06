"""The console's session through real server processes: its cookie over a real TLS handshake
(and in Chromium over TLS), a session that works on every worker and ends on every worker at
sign-out, a session that expires, and request logs that hold neither the token signed in
with nor the session's cookie."""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from tests.databases import BACKENDS, database
from tests.helpers import ServerProcess, running_server

from .browser import sign_in
from .test_tls import Certificate, self_signed

_CSRF = re.compile(r'name="csrf" value="([^"]*)"')
# New connections per check: the kernel spreads them over the workers (SO_REUSEPORT), so all
# of them landing on one of two workers has a chance of 2**-39.
CONNECTIONS = 40


@dataclass
class Answer:
    status: int
    location: str
    set_cookies: list[str]
    text: str

    def csrf(self) -> str:
        found = _CSRF.search(self.text)
        assert found, f"no form token on this page:\n{self.text[:2000]}"
        return found.group(1)


@dataclass
class RawBrowser:
    """A browser's requests, each on a connection of its own (http.client: no pooling), with
    its cookies and a true Origin on every POST. Redirects are not followed."""

    url: str
    tls: ssl.SSLContext | None = None
    cookies: dict[str, str] = field(default_factory=dict)

    def get(self, path: str) -> Answer:
        return self._send("GET", path, b"", {})

    def post(self, path: str, form: dict[str, str]) -> Answer:
        headers = {
            "content-type": "application/x-www-form-urlencoded",
            "origin": self.url,
        }
        return self._send("POST", path, urlencode(form).encode(), headers)

    def sign_in(self, token: str) -> Answer:
        form = self.get("/console/sign-in")
        assert form.status == 200, form.text
        signed_in = self.post("/console/sign-in", {"csrf": form.csrf(), "token": token})
        assert (signed_in.status, signed_in.location) == (303, "/console/"), signed_in.text
        return signed_in

    def _send(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Answer:
        parts = urlsplit(self.url)
        assert parts.hostname is not None and parts.port is not None
        connection: http.client.HTTPConnection = (
            http.client.HTTPSConnection(parts.hostname, parts.port, timeout=20, context=self.tls)
            if parts.scheme == "https"
            else http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
        )
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            text = response.read().decode()
            set_cookies = response.headers.get_all("set-cookie") or []
            location = response.headers.get("location", "")
        finally:
            connection.close()
        for cookie in set_cookies:
            name, _, rest = cookie.partition("=")
            if "Max-Age=0" in cookie:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = rest.split(";", 1)[0]
        return Answer(response.status, location, set_cookies, text)


def _attributes(cookie: str) -> tuple[str, str, dict[str, str]]:
    """A Set-Cookie header's name, value and attributes (lower-case names)."""
    first, *rest = [part.strip() for part in cookie.split(";")]
    name, _, value = first.partition("=")
    attributes = {}
    for part in rest:
        key, _, attribute = part.partition("=")
        attributes[key.lower()] = attribute
    return name, value, attributes


def _session_cookie(answer: Answer, name: str) -> tuple[str, dict[str, str]]:
    found = [_attributes(c) for c in answer.set_cookies if c.startswith(f"{name}=")]
    assert len(found) == 1, answer.set_cookies
    return found[0][1], found[0][2]


# TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return self_signed(tmp_path_factory.mktemp("console-tls") / "server")


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, certificate: Certificate
) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("console-tls-data") / "data"
    with running_server(
        data_dir, "--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key)
    ) as process:
        yield process


def test_over_tls_the_cookie_is_host_only_secure_and_http_only(
    tls_server: ServerProcess, certificate: Certificate
) -> None:
    assert tls_server.url.startswith("https://")
    # A verifying client: the handshake must present our certificate, or nothing is sent.
    verifying = ssl.create_default_context(cafile=str(certificate.cert))
    browser = RawBrowser(tls_server.url, verifying)
    form = browser.get("/console/sign-in")
    _, form_attributes = _session_cookie(form, "__Host-depot_console_sign_in")
    assert "secure" in form_attributes and form_attributes["path"] == "/"
    signed_in = browser.sign_in(tls_server.org_token)
    value, attributes = _session_cookie(signed_in, "__Host-depot_console")
    assert "secure" in attributes and "httponly" in attributes
    assert attributes["samesite"] == "Lax" and attributes["path"] == "/"
    assert "domain" not in attributes  # __Host-: this host alone
    assert int(attributes["max-age"]) == 12 * 3600
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", value) and tls_server.org_token not in value
    assert not any(c.startswith("depot_console=") for c in signed_in.set_cookies)
    home = browser.get("/console/")
    assert home.status == 200 and "Sign out" in home.text
    # The cookie under its plain name (as a script on a sibling plain-HTTP origin could plant
    # one) is not this console's cookie over TLS.
    planted = RawBrowser(tls_server.url, verifying, {"depot_console": value})
    assert planted.get("/console/").status == 303
    # Sign-out clears the __Host- cookie, and the old value is refused.
    signed_out = browser.post("/console/sign-out", {"csrf": home.csrf()})
    assert signed_out.status == 303
    assert any(
        c.startswith("__Host-depot_console=;") and "Max-Age=0" in c for c in signed_out.set_cookies
    )
    replayed = RawBrowser(tls_server.url, verifying, {"__Host-depot_console": value})
    assert replayed.get("/console/").status == 303


def test_an_untrusted_certificate_fails_the_handshake(tls_server: ServerProcess) -> None:
    """The client above really verified: without our CA the same request does not happen."""
    with pytest.raises(ssl.SSLCertVerificationError):
        RawBrowser(tls_server.url, ssl.create_default_context()).get("/console/sign-in")


def test_chromium_signs_in_over_tls(tls_server: ServerProcess, browser: Any) -> None:
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    sign_in(page, tls_server.url, tls_server.org_token)
    cookies = {c["name"]: c for c in context.cookies()}
    # Chromium keeps a __Host- cookie only if it is Secure, has Path=/ and no Domain.
    session = cookies["__Host-depot_console"]
    assert session["secure"] is True and session["httpOnly"] is True
    assert session["sameSite"] == "Lax" and session["path"] == "/"
    assert "depot_console" not in cookies
    assert page.evaluate("document.cookie") == ""
    assert "Projects" in page.inner_text("main")
    page.click("text=Sign out")
    page.wait_for_url(f"{tls_server.url}/console/sign-in")
    assert "__Host-depot_console" not in {c["name"] for c in context.cookies()}
    context.close()


# Several workers


@pytest.fixture(scope="module", params=BACKENDS)
def two_workers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Two worker processes, logging one JSON object a line."""
    root = tmp_path_factory.mktemp(f"console-workers-{request.param}")
    with ExitStack() as stack:
        url = stack.enter_context(database(request.param, root))
        yield stack.enter_context(
            running_server(
                root / "data", "--database", url, "--workers", "2", "--log-format", "json"
            )
        )


def test_a_session_works_and_ends_on_every_worker(two_workers: ServerProcess) -> None:
    pid = two_workers.process.pid
    workers = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(workers) == 2, workers  # the processes CONNECTIONS are spread over
    browser = RawBrowser(two_workers.url)
    browser.sign_in(two_workers.org_token)
    pages = [browser.get("/console/machines") for _ in range(CONNECTIONS)]
    assert [p.status for p in pages] == [200] * CONNECTIONS
    assert all("Machines" in p.text for p in pages)
    # Every worker computes the same form token for the session (it is derived, not stored).
    assert len({p.csrf() for p in pages}) == 1
    csrf = pages[0].csrf()
    old = dict(browser.cookies)
    signed_out = browser.post("/console/sign-out", {"csrf": csrf})
    assert (signed_out.status, signed_out.location) == (303, "/console/sign-in")
    thief = RawBrowser(two_workers.url, cookies=old)
    for _ in range(CONNECTIONS // 2):
        refused = thief.get("/console/machines")
        assert refused.status == 303
        assert refused.location == "/console/sign-in?next=%2Fconsole%2Fmachines"
        posted = thief.post("/console/sign-out", {"csrf": csrf})
        assert posted.status == 403 and "session has ended" in posted.text


def test_request_logs_hold_neither_the_token_nor_the_cookie(two_workers: ServerProcess) -> None:
    token = two_workers.org_token
    browser = RawBrowser(two_workers.url)
    form = browser.get("/console/sign-in")
    form_token = form.csrf()
    signed_in = browser.post("/console/sign-in", {"csrf": form_token, "token": token})
    session, _ = _session_cookie(signed_in, "depot_console")
    assert browser.get("/console/").status == 200
    # A failed sign-in too: the wrong token it carried is in no line either.
    wrong = token[:-6] + ("aaaaaa" if not token.endswith("aaaaaa") else "bbbbbb")
    other = RawBrowser(two_workers.url)
    refused = other.post("/console/sign-in", {"csrf": other.get("/console/sign-in").csrf(),
                                              "token": wrong})  # fmt: skip
    assert refused.status == 401
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(x) for x in two_workers.output if x.startswith("{")]
        console = [x for x in lines if x.get("msg") == "request" and x.get("method") == "/console"]
        if len(console) >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(console) >= 5, lines[-10:]  # the pages above were logged
    everything = "".join(two_workers.output)
    for secret in (token, wrong, session, form_token):
        assert secret not in everything


# Expiry


@pytest.fixture(scope="module")
def short_sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("console-expiry") / "data"
    with running_server(data_dir, "--console-session-lifetime", "3") as process:
        yield process


def test_a_session_expires(short_sessions: ServerProcess) -> None:
    browser = RawBrowser(short_sessions.url)
    signed_in = browser.sign_in(short_sessions.org_token)
    started = time.monotonic()
    _, attributes = _session_cookie(signed_in, "depot_console")
    assert attributes["max-age"] == "3"  # the browser forgets it as the server does
    home = browser.get("/console/")
    assert home.status == 200
    csrf = home.csrf()
    time.sleep(max(0.0, 3.5 - (time.monotonic() - started)))
    # The cookie replayed after its end (a browser would have dropped it; a thief would not).
    expired = browser.get("/console/")
    assert (expired.status, expired.location) == (303, "/console/sign-in?next=%2Fconsole%2F")
    posted = browser.post("/console/sign-out", {"csrf": csrf})
    assert posted.status == 403 and "session has ended" in posted.text
    # Signing in again makes a new session.
    assert browser.sign_in(short_sessions.org_token).status == 303
    assert browser.get("/console/").status == 200


@pytest.mark.parametrize("lifetime", ["soon", "0", "0.5", "-1", "nan"])
def test_the_session_lifetime_setting_refuses_nonsense(tmp_path: Path, lifetime: str) -> None:
    """Under a second the cookie (Max-Age in whole seconds) would be dropped at once."""
    with (
        pytest.raises(RuntimeError, match=r"--console-session-lifetime .*1 or more"),
        running_server(tmp_path / "data", "--console-session-lifetime", lifetime),
    ):
        pass
