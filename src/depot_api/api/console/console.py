"""The console's front: routing under /console/, the session cookie, sign-in and sign-out,
the form checks (CSRF), and turning what a handler answers, or raises, into a response.

The session cookie is opaque (domain/console_sessions.py keeps its hash and the hash of the
token signed in with), HttpOnly, SameSite=Lax, and Secure with the __Host- prefix when the
request came over TLS. Every POST must carry the session's form token, and a POST whose Origin
is another site is refused before anything else; the sign-in form, which has no session yet,
carries a random value that must match a cookie of its own (a double submit), so another site
cannot sign a browser in with the other site's token either.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlsplit

from depot_api.api.asgi import Receive, Scope, Send
from depot_api.api.console.web import Fragment, Handler, PageRequest, Redirect, with_query
from depot_api.api.pages import SAME_ORIGIN_REFERRER, render
from depot_api.api.pages import send_page as send_any_page
from depot_api.api.pages import send_redirect as send_any_redirect
from depot_api.api.public_url import PublicURL
from depot_api.domain.console_sessions import ConsoleSessions
from depot_api.domain.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from depot_api.wiring import Domain

log = logging.getLogger("depot_api.console")

PREFIX = "/console"
HOME = f"{PREFIX}/"
SIGN_IN = f"{PREFIX}/sign-in"
SIGN_OUT = f"{PREFIX}/sign-out"
# A form is small: a token, a description, a policy's few fields.
MAX_FORM_BYTES = 16 * 1024
_MAX_FORM_FIELDS = 20
_FORM_TYPE = "application/x-www-form-urlencoded"

_SESSION_COOKIE = "depot_console"
_SIGN_IN_COOKIE = "depot_console_sign_in"

_STATUS_OF_ERROR: dict[type[DomainError], int] = {
    InvalidArgument: 400,
    Unauthenticated: 401,
    PermissionDenied: 403,
    NotFound: 404,
    FailedPrecondition: 409,
    ResourceExhausted: 429,
    Unavailable: 503,
}


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


def route(method: str, path: str, handler: Handler) -> Route:
    """A route: path under /console, with {name} for one path segment (a project's ID)."""
    regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(PREFIX + path))
    return Route(method, re.compile(regex + r"\Z"), handler)


class Refused(Exception):
    """A request the console will not act on, answered with this status and message."""

    def __init__(self, status: int, title: str, message: str, *, allow: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        # A 405's methods, for its Allow header (HTTP requires one).
        self.allow = allow


class Console:
    def __init__(
        self,
        domain: Domain,
        routes: Sequence[Route],
        *,
        session_seconds: int,
        public_url: PublicURL,
    ) -> None:
        self._domain = domain
        self._public_url = public_url
        self._sessions: ConsoleSessions = domain.console_sessions
        # Sign-out is answered here (it clears the cookie); its route makes it a known POST.
        self._routes = [route("POST", "/sign-out", _answered_by_the_console), *routes]
        self._session_seconds = session_seconds

    home = HOME

    @staticmethod
    def serves(path: str) -> bool:
        return path == PREFIX or path.startswith(HOME)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._answer(scope, receive, send)
        except Refused as refusal:
            await self._refusal(send, refusal)
        except DomainError as error:
            status = next(
                (code for kind, code in _STATUS_OF_ERROR.items() if isinstance(error, kind)), 400
            )
            await self._refusal(send, Refused(status, _title(status), error.message))

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = "GET" if scope["method"] == "HEAD" else scope["method"]
        body = await _read_body(receive)
        if path == PREFIX:
            await send_redirect(send, HOME)
            return
        if path == SIGN_IN:
            await self._sign_in(scope, method, body, send)
            return
        handler, params, allowed = self._match(path, method)
        if handler is None:
            if allowed:
                raise Refused(
                    405,
                    "Not allowed",
                    f"{path} is read with {' or '.join(allowed)}",
                    allow=_with_head(allowed),
                )
            raise Refused(404, "Not found", "There is nothing at this address.")
        cookies = _cookies(scope)
        session_id = cookies.get(self._cookie_name(scope, _SESSION_COOKIE))
        principal = await self._sessions.principal(session_id)
        if method == "POST":
            _require_same_origin(scope)
            if principal is None or session_id is None:
                raise Refused(
                    403,
                    "Signed out",
                    "This session has ended (signed out, expired, or its token was revoked). "
                    "Sign in again.",
                )
            form = _form(scope, body)
            if not ConsoleSessions.csrf_ok(session_id, form.get("csrf")):
                raise Refused(
                    403,
                    "Form refused",
                    "This form did not come from this console session. Reload the page and "
                    "try again.",
                )
        else:
            form = {}
            if principal is None or session_id is None:
                if path.endswith("/live"):  # a page's script: it reloads, and signs in
                    raise Refused(401, "Signed out", "Sign in again.")
                await send_redirect(send, with_query(SIGN_IN, next=_local(path, scope)))
                return
        request = PageRequest(
            method=method,
            path=path,
            params=params,
            query=_query(scope),
            form=form,
            principal=principal,
            domain=self._domain,
            csrf=ConsoleSessions.csrf_token(session_id),
            public_url=self._public_url,
        )
        if path == SIGN_OUT:
            await self._sessions.sign_out(session_id)
            await send_redirect(send, SIGN_IN, [self._set_cookie(scope, _SESSION_COOKIE, "", 0)])
            return
        answer = await handler(request)
        if isinstance(answer, Redirect):
            await send_redirect(send, answer.location)
        elif isinstance(answer, Fragment):
            await send_page(send, 200, render(f"console/{answer.template}", **answer.context))
        else:
            context = {
                "csrf": request.csrf,
                "principal": principal,
                "nav_path": path,
                **answer.context,
            }
            await send_page(send, answer.status, render(f"console/{answer.template}", **context))

    def _match(self, path: str, method: str) -> tuple[Handler | None, dict[str, str], list[str]]:
        allowed = []
        for candidate in self._routes:
            found = candidate.pattern.match(path)
            if found is None:
                continue
            if candidate.method == method:
                return candidate.handler, found.groupdict(), []
            allowed.append(candidate.method)
        return None, {}, allowed

    async def _sign_in(self, scope: Scope, method: str, body: bytes, send: Send) -> None:
        query = _query(scope)
        next_path = _safe_next(query.get("next", ""))
        if method == "GET":
            session = _cookies(scope).get(self._cookie_name(scope, _SESSION_COOKIE))
            if await self._sessions.principal(session) is not None:
                await send_redirect(send, next_path)
                return
            await self._sign_in_form(scope, send, next_path, "", 200)
            return
        if method != "POST":
            raise Refused(
                405,
                "Not allowed",
                f"{SIGN_IN} is read with GET and sent with POST",
                allow=_with_head(["GET", "POST"]),
            )
        _require_same_origin(scope)
        form = _form(scope, body)
        expected = _cookies(scope).get(self._cookie_name(scope, _SIGN_IN_COOKIE), "")
        given = form.get("csrf", "")
        if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
            raise Refused(
                403,
                "Form refused",
                "This sign-in form did not come from this console. Reload the page and try again.",
            )
        next_path = _safe_next(form.get("next", ""))
        try:
            session_id, _ = await self._sessions.sign_in(form.get("token", ""))
        except (Unauthenticated, PermissionDenied, InvalidArgument) as refusal:
            status = 403 if isinstance(refusal, PermissionDenied) else 401
            await self._sign_in_form(scope, send, next_path, refusal.message, status)
            return
        await send_redirect(
            send,
            next_path,
            [
                self._set_cookie(scope, _SESSION_COOKIE, session_id, self._session_seconds),
                self._set_cookie(scope, _SIGN_IN_COOKIE, "", 0),
            ],
        )

    async def _sign_in_form(
        self, scope: Scope, send: Send, next_path: str, error: str, status: int
    ) -> None:
        form_token = secrets.token_urlsafe(32)
        html = render("console/sign_in.html", csrf=form_token, next=next_path, error=error)
        # The form's own cookie lives as long as someone might leave the form open.
        cookie = self._set_cookie(scope, _SIGN_IN_COOKIE, form_token, 3600)
        await send_page(send, status, html, [cookie])

    def _secure(self, scope: Scope) -> bool:
        """Cookies are Secure when this request came over TLS, or when --public-url is https:
        behind a proxy that ends TLS, the server itself sees plain HTTP."""
        return scope.get("scheme") == "https" or self._public_url.is_https

    def _cookie_name(self, scope: Scope, name: str) -> str:
        # __Host-: the browser takes the cookie only from a secure origin, for this host and
        # path / alone, so no other site (not even a sibling subdomain) can plant one.
        return f"__Host-{name}" if self._secure(scope) else name

    def _set_cookie(self, scope: Scope, name: str, value: str, max_age: int) -> tuple[bytes, bytes]:
        secure = self._secure(scope)
        parts = [
            f"{self._cookie_name(scope, name)}={value}",
            "Path=/",
            f"Max-Age={max_age}",
            "HttpOnly",
            "SameSite=Lax",
        ]
        if secure:
            parts.append("Secure")
        return b"set-cookie", "; ".join(parts).encode()

    async def _refusal(self, send: Send, refusal: Refused) -> None:
        html = render("console/refused.html", title=refusal.title, message=refusal.message)
        headers = [(b"allow", ", ".join(refusal.allow).encode())] if refusal.allow else None
        await send_page(send, refusal.status, html, headers)


async def send_page(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send_any_page(send, status, body, headers=headers, referrer=SAME_ORIGIN_REFERRER)


async def send_redirect(
    send: Send, location: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send_any_redirect(send, location, headers, referrer=SAME_ORIGIN_REFERRER)


async def _answered_by_the_console(request: PageRequest) -> Redirect:
    raise AssertionError(f"{request.path} is answered by Console itself")


def _with_head(methods: Sequence[str]) -> list[str]:
    """The methods a path takes: HEAD too wherever GET is (it is answered as a GET)."""
    return [*methods, "HEAD"] if "GET" in methods else list(methods)


def _title(status: int) -> str:
    return {
        400: "Not accepted",
        401: "Sign in",
        403: "Not allowed",
        404: "Not found",
        409: "Not possible now",
        429: "Too many",
        503: "Unavailable",
    }.get(status, "Not accepted")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _cookies(scope: Scope) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in scope.get("headers", []):
        if key.lower() != b"cookie":
            continue
        for pair in bytes(value).decode("latin-1").split(";"):
            name, _, cookie = pair.strip().partition("=")
            found.setdefault(name, cookie)
    return found


def _query(scope: Scope) -> dict[str, str]:
    raw = bytes(scope.get("query_string", b"")).decode("latin-1")
    try:
        return dict(parse_qsl(raw, max_num_fields=_MAX_FORM_FIELDS, errors="strict"))
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "Not accepted", "This address's query is not understood.") from None


async def _read_body(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return bytes(body)
        body += message.get("body", b"")
        if len(body) > MAX_FORM_BYTES:
            raise Refused(413, "Too large", f"A form here is at most {MAX_FORM_BYTES} bytes.")
        if not message.get("more_body", False):
            return bytes(body)


def _form(scope: Scope, body: bytes) -> dict[str, str]:
    content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
    if content_type != _FORM_TYPE:
        raise Refused(415, "Not accepted", f"Forms are sent as {_FORM_TYPE}.")
    try:
        text = body.decode("utf-8")
        return dict(
            parse_qsl(
                text, keep_blank_values=True, max_num_fields=_MAX_FORM_FIELDS, errors="strict"
            )
        )
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "Not accepted", "This form's fields are not understood.") from None


def _require_same_origin(scope: Scope) -> None:
    """Refuse a POST that another site's page made: browsers send Origin on every POST."""
    origin = _header(scope, b"origin")
    if origin is None:  # not a browser (curl, a script): the form token still decides
        return
    host = _header(scope, b"host") or ""
    if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
        raise Refused(403, "Form refused", "A form from another site cannot act here.")


def _local(path: str, scope: Scope) -> str:
    """The address asked for, as it came (the path encoded again): where sign-in goes back to."""
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    encoded = quote(path, safe=_PATH_SAFE, errors="replace")
    return f"{encoded}?{query}" if query else encoded


# What a path keeps unencoded (RFC 3986's pchar and "/"), so _local's answer passes _safe_next.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
# Printable ASCII without spaces: an address as it travels (percent-encoded). Anything else
# (a CR or LF, a NUL, a tab a browser would drop, a letter beyond ASCII) does not go into the
# Location header: a CR LF there would split the response, and the server refuses it anyway.
_ADDRESS = re.compile(r"[\x21-\x7e]*")


def _safe_next(candidate: str) -> str:
    """Where to go after signing in: a console page of this server, never another site."""
    if (
        candidate.startswith(HOME)
        and _ADDRESS.fullmatch(candidate)
        and "//" not in candidate
        and "\\" not in candidate
    ):
        return candidate
    return HOME
