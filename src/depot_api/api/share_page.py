"""The shared build page: GET /share/<secret>, server-rendered HTML, read-only, no sign-in.

Build names, step names and logs are attacker-controlled text: the templates autoescape
everything, and every response carries a Content-Security-Policy that forbids inline script
(and script from anywhere else), so even a slip in escaping runs nothing. The link is a
secret: Referrer-Policy no-referrer keeps it out of the Referer of anything the page links to,
and an unknown link and a stopped one get the very same 404.
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources

from jinja2 import Environment, PackageLoader, select_autoescape

from depot_api.api.asgi import Send
from depot_api.api.public_url import SHARE_PATH
from depot_api.domain.builds import duration_seconds
from depot_api.domain.shares import Shares

STYLESHEET_PATH = "/static/console.css"
_STYLESHEET = resources.files("depot_api").joinpath("static/console.css").read_bytes()

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]

_templates = Environment(
    loader=PackageLoader("depot_api", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    auto_reload=False,
)


def _when(micros: int | None) -> str:
    if micros is None:
        return "—"
    return datetime.fromtimestamp(micros / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes}m {seconds:02d}s"


def _step_seconds(started_us: int | None, completed_us: int | None) -> float | None:
    if started_us is None or completed_us is None:
        return None
    return max(completed_us - started_us, 0) / 1e6


_templates.filters["when"] = _when
_templates.filters["seconds"] = _seconds
_templates.globals["step_seconds"] = _step_seconds
_templates.globals["stylesheet"] = STYLESHEET_PATH


class SharePage:
    def __init__(self, shares: Shares) -> None:
        self._shares = shares

    async def page(self, path: str, send: Send) -> None:
        view = await self._shares.view(path.removeprefix(SHARE_PATH))
        if view is None:
            await self.not_found(send)
            return
        html = _templates.get_template("shared_build.html").render(
            view=view, duration=duration_seconds(view.build)
        )
        await _send(send, 200, html.encode(), b"text/html; charset=utf-8", cache=False)

    async def not_found(self, send: Send) -> None:
        html = _templates.get_template("not_found.html").render()
        await _send(send, 404, html.encode(), b"text/html; charset=utf-8", cache=False)

    async def stylesheet(self, send: Send) -> None:
        await _send(send, 200, _STYLESHEET, b"text/css; charset=utf-8", cache=True)


async def _send(send: Send, status: int, body: bytes, content_type: bytes, *, cache: bool) -> None:
    # A shared page is never cached anywhere: it must stop showing the moment sharing stops.
    caching = b"public, max-age=3600" if cache else b"no-store"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"cache-control", caching),
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
