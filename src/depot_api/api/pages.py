"""What every HTML page shares: the templates, their filters, the security headers, the
static files, and the ways to answer (a page, a redirect, a static file).

Build names, step names and logs are attacker-controlled text: the templates autoescape
everything, and every response carries a Content-Security-Policy that forbids inline script
(script comes only from this server's own /static/ files), so even a slip in escaping runs
nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources

from jinja2 import Environment, PackageLoader, select_autoescape

from depot_api.api.asgi import Send

STATIC_PREFIX = "/static/"
STYLESHEET_PATH = f"{STATIC_PREFIX}console.css"
SCRIPT_PATH = f"{STATIC_PREFIX}console.js"

# The static files, read once: path -> (content type, bytes).
STATIC_FILES = {
    f"{STATIC_PREFIX}{name}": (
        content_type,
        resources.files("depot_api").joinpath(f"static/{name}").read_bytes(),
    )
    for name, content_type in (
        ("console.css", b"text/css; charset=utf-8"),
        ("console.js", b"text/javascript; charset=utf-8"),
    )
}

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
]
# A shared build's link is a secret: no Referer at all. The console's pages send their Referer
# (and so a true Origin on their forms: under no-referrer, Chromium sends `Origin: null`,
# which the console refuses) to this server alone.
NO_REFERRER = b"no-referrer"
SAME_ORIGIN_REFERRER = b"same-origin"
HTML = b"text/html; charset=utf-8"

templates = Environment(
    loader=PackageLoader("depot_api", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    auto_reload=False,
)


def _when(micros: int | None) -> str:
    if micros is None:
        return "—"
    return datetime.fromtimestamp(micros / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _when_datetime(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _step_time(value: float | None) -> str:
    """A step's time: most steps take well under a second, so those show milliseconds."""
    if value is not None and value < 1:
        return f"{value * 1000:.0f} ms"
    return _seconds(value)


def _bytes(value: int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _step_seconds(started_us: int | None, completed_us: int | None) -> float | None:
    if started_us is None or completed_us is None:
        return None
    return max(completed_us - started_us, 0) / 1e6


templates.filters["when"] = _when
templates.filters["when_datetime"] = _when_datetime
templates.filters["seconds"] = _seconds
templates.filters["step_time"] = _step_time
templates.filters["bytes"] = _bytes
templates.globals["step_seconds"] = _step_seconds
templates.globals["stylesheet"] = STYLESHEET_PATH
templates.globals["script"] = SCRIPT_PATH


def render(template: str, **context: object) -> bytes:
    return templates.get_template(template).render(**context).encode()


async def send_page(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: bytes = HTML,
    headers: list[tuple[bytes, bytes]] | None = None,
    referrer: bytes = NO_REFERRER,
) -> None:
    """A page: never cached anywhere (it shows what the caller may see now: a stopped share
    link, a revoked token, a signed-out session must stop showing at once)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"cache-control", b"no-store"),
                *SECURITY_HEADERS,
                (b"referrer-policy", referrer),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_redirect(
    send: Send,
    location: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    referrer: bytes = NO_REFERRER,
) -> None:
    """303 See Other: after a form's POST, the browser GETs the next page."""
    await send_page(
        send,
        303,
        b"",
        headers=[(b"location", location.encode()), *(headers or [])],
        referrer=referrer,
    )


async def send_static(send: Send, path: str) -> bool:
    """The static file at path, if there is one."""
    found = STATIC_FILES.get(path)
    if found is None:
        return False
    content_type, body = found
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type),
                (b"cache-control", b"public, max-age=3600"),
                *SECURITY_HEADERS,
                (b"referrer-policy", NO_REFERRER),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
    return True
