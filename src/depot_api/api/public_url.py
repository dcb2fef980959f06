"""The base of the links the server makes (ShareBuild): --public-url, or else the address the
request arrived at: the listening socket's own (ASGI scope "server"), never the Host header,
which the caller writes. The socket's address is the one that is right for port 0 (any free
port) and for a server listening on every address; the settings' host and port are the last
resort, for a server that does not say."""

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
    _arrival.set(origin(scope.get("scheme", "http"), server[0], server[1]))


def origin(scheme: str, host: str, port: int) -> str:
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


class PublicURL:
    def __init__(self, configured: str, listening: str) -> None:
        """configured: --public-url (empty: none); listening: the settings' own address."""
        self._configured = configured
        self._listening = listening

    @property
    def is_https(self) -> bool:
        """People reach the server over HTTPS (--public-url says so), whatever the socket."""
        return self._configured.startswith("https://")

    def share_link(self, secret: str) -> str:
        base = self._configured or _arrival.get() or self._listening
        return f"{base}{SHARE_PATH}{secret}"
