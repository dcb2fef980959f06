"""Docker Engine's built-in BuildKit, reached through the Engine's API socket.

dockerd serves BuildKit's Control API on its own API socket: a `POST /grpc` request asking to
upgrade to `h2c` is answered `101 Switching Protocols`, and from then on the connection is plain
HTTP/2 on which the client speaks first (the connection preface). This is how `docker buildx`'s
"docker" driver reaches it; open_buildkit() does the upgrade and hands back the connection.
"""

from __future__ import annotations

import asyncio

UPGRADE_REQUEST = (
    b"POST /grpc HTTP/1.1\r\nHost: docker\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
)
HEAD_END = b"\r\n\r\n"
# The longest response head accepted; also the reader's buffer limit (asyncio's default).
HEAD_LIMIT = 64 * 1024
# How much of a peer's status line an error message quotes.
QUOTED_STATUS = 120


class EngineError(Exception):
    """The Docker Engine's BuildKit cannot be used; str() is one line saying why."""


class EngineAbsent(EngineError):
    """Nothing answers on the socket: no such file, nothing listening, or no permission."""


class EngineRefused(EngineError):
    """Something answers on the socket, but does not switch the connection to BuildKit."""


async def open_buildkit(
    socket_path: str, *, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the Docker Engine API at socket_path and upgrade to its BuildKit.

    Returns the connection's streams right after the `101 Switching Protocols` head: the next
    byte written should be the HTTP/2 preface. Bytes the Engine sent after the head (it may send
    its HTTP/2 SETTINGS at once) are still in the reader, so a forwarder that copies from
    reader.read() passes them on first. timeout bounds connecting, sending the request and
    reading the answer's head together. Raises EngineAbsent or EngineRefused.
    """
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(socket_path, limit=HEAD_LIMIT)
    except TimeoutError:
        raise EngineAbsent(
            f"Docker Engine at {socket_path} did not accept a connection within {timeout:g} s"
        ) from None
    except OSError as error:
        reason = error.strerror or str(error)
        raise EngineAbsent(
            f"Docker Engine at {socket_path} cannot be reached: {reason}; "
            "is dockerd running, and is this its API socket?"
        ) from None
    try:
        async with asyncio.timeout(timeout):
            writer.write(UPGRADE_REQUEST)
            await writer.drain()
            head = await reader.readuntil(HEAD_END)
        status_line = head.split(b"\r\n", 1)[0]
        if not _is_switching_protocols(status_line):
            raise EngineRefused(
                f"Docker Engine at {socket_path} refused the BuildKit upgrade: "
                f"{_quote(status_line)}; is this Docker Engine 20.10 or newer with BuildKit?"
            )
    except BaseException as error:
        writer.close()
        if isinstance(error, EngineRefused):
            raise
        if isinstance(error, TimeoutError):
            raise EngineRefused(
                f"Docker Engine at {socket_path} did not answer the BuildKit upgrade "
                f"within {timeout:g} s"
            ) from None
        if isinstance(error, asyncio.IncompleteReadError):
            raise EngineRefused(
                f"Docker Engine at {socket_path} closed the connection before answering "
                "the BuildKit upgrade"
            ) from None
        if isinstance(error, asyncio.LimitOverrunError):
            raise EngineRefused(
                f"Docker Engine at {socket_path} answered the BuildKit upgrade with a head "
                f"longer than {HEAD_LIMIT} bytes"
            ) from None
        if isinstance(error, OSError):
            raise EngineRefused(
                f"Docker Engine at {socket_path} dropped the BuildKit upgrade: "
                f"{error.strerror or error}"
            ) from None
        raise
    return reader, writer


def _is_switching_protocols(status_line: bytes) -> bool:
    parts = status_line.split(b" ", 2)
    return len(parts) >= 2 and parts[0] in (b"HTTP/1.1", b"HTTP/1.0") and parts[1] == b"101"


def _quote(status_line: bytes) -> str:
    """The peer's status line, printable and short enough for one log line."""
    text = status_line.decode("latin-1")
    shown = "".join(c if c.isprintable() else "?" for c in text[:QUOTED_STATUS])
    if len(text) > QUOTED_STATUS:
        shown += "…"
    return shown or "(an empty status line)"
