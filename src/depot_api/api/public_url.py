"""The base of the links the server makes (ShareBuild): --public-url, or else the address the
request arrived at: the listening socket's own (ASGI scope "server"), never the Host header,
which the caller writes."""

from __future__ import annotations

from contextvars import ContextVar

from depot_api.api.asgi import Scope

SHARE_PATH = "/share/"

_arrival: ContextVar[str] = ContextVar("arrival", default="")


def note_arrival(scope: Scope) -> None:
    """Remember where this request arrived (called by the application for each RPC)."""
    server = scope.get("server")
    if not server or server[1] is None:
        return
    host, port = server
    if ":" in host:  # IPv6
        host = f"[{host}]"
    _arrival.set(f"{scope.get('scheme', 'http')}://{host}:{port}")


class PublicURL:
    def __init__(self, configured: str) -> None:
        self._configured = configured

    def share_link(self, secret: str) -> str:
        return f"{self._configured or _arrival.get()}{SHARE_PATH}{secret}"
