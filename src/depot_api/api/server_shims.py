"""Adaptations between the server (pyvoy, inside Envoy) and the application (connectrpc).

Each works around a mismatch that was measured or found by fuzzing; its docstring says which.
They run on every request, so each costs as little as it can on the usual path.
"""

from __future__ import annotations

import asyncio
import logging
import os

from depot_api.api.asgi import ASGIMessage, Receive, Scope, media_type

log = logging.getLogger("depot_api")

# How soon a client that went away mid-call is noticed (see receive_waiting_for_disconnect).
# Each waiting stream polls this often: 1 000 waiting GetEndpoint streams cost 1 000 wake-ups
# a second at 1 s.
_DISCONNECT_POLL_SECONDS = 5.0
# A worker's standard input: the supervisor's end of it closes only when the supervisor dies.
_LIFELINE = 0


def reads_body_first(scope: Scope) -> bool:
    """A Connect unary call (its body is one message), or a request that no protocol takes,
    which is refused at once (415). Streams (application/connect+…, gRPC, gRPC-Web) are read
    as they come."""
    return not media_type(scope).startswith((b"application/connect+", b"application/grpc"))


async def read_body_first(receive: Receive, limit: int) -> list[ASGIMessage]:
    """Read a unary request's whole body (up to limit bytes) before anything answers.

    A call refused before its body is read (a missing token) was answered while the body was
    still arriving; over HTTP/2 the server then resets the stream, and curl reported the reset
    instead of the answer about one time in ten. Reading the body first, as the handler would
    anyway, makes every answer arrive cleanly. Beyond the limit, the rest is left to the
    application, which refuses an oversized message.
    """
    buffered: list[ASGIMessage] = []
    size = 0
    while True:
        message = await receive()
        buffered.append(message)
        size += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
        if size > limit:
            break
    return buffered


def utf8_headers(scope: Scope) -> Scope:
    """The scope with every header name and value valid UTF-8, as connectrpc needs them.

    connectrpc decodes headers as UTF-8 and, on a byte sequence that is not (HTTP allows any
    byte from 0x80 up in a value), fails with an exception: HTTP 500, `unknown`. Such a header
    is read as Latin-1 instead, HTTP's historical charset, so a garbled token or content type
    is refused like any other bad one. Plain ASCII, the usual case, is checked cheaply.
    """
    headers = scope["headers"]
    if all(name.isascii() and value.isascii() for name, value in headers):
        return scope
    return {**scope, "headers": [(_utf8(name), _utf8(value)) for name, value in headers]}


def _utf8(raw: bytes) -> bytes:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1").encode()
    return raw


def receive_waiting_for_disconnect(receive: Receive, already_read: list[ASGIMessage]) -> Receive:
    """Adapt pyvoy's receive() to what connectrpc's disconnect watch expects.

    Two mismatches, both measured:
    - After the request body is complete, ASGI says receive() waits until the client goes
      away. pyvoy answers at once with empty body messages instead, so connectrpc's watch for
      a disconnect (running during every handler and every response stream) spun a whole core.
      Here, once the body is complete, receive() asks pyvoy only every
      _DISCONNECT_POLL_SECONDS and returns only the disconnect.
    - connectrpc cancels that watch when the handler ends, and pyvoy then completes the
      cancelled future anyway, logging an InvalidStateError per request. Shielding pyvoy's
      own future avoids it (only our wrapper is cancelled).

    Messages in already_read (see read_body_first) are returned first.
    """
    body_done = False

    async def receive_once() -> ASGIMessage:
        pending = receive()
        if isinstance(pending, asyncio.Future):  # pyvoy's: a plain future, cheap to shield
            return await asyncio.shield(pending)
        return await pending

    async def waiting_receive() -> ASGIMessage:
        nonlocal body_done
        if not body_done:
            message = already_read.pop(0) if already_read else await receive_once()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message
        while True:
            message = await receive_once()
            if message["type"] != "http.request":
                return message
            await asyncio.sleep(_DISCONNECT_POLL_SECONDS)

    return waiting_receive


def exit_with_the_supervisor() -> None:
    """Exit at once when the supervisor dies without stopping this worker (it was killed
    outright), so that the port is free for the next server.

    A worker ignores SIGTERM (server/worker.py), and with it the signal Envoy asks Linux to
    send when its parent dies; so the supervisor gives it a pipe as standard input instead,
    and never writes to it: the pipe ends (it becomes readable) only when the supervisor is
    gone.
    """
    asyncio.get_running_loop().add_reader(_LIFELINE, _supervisor_gone)


def stop_watching_the_supervisor() -> None:
    asyncio.get_running_loop().remove_reader(_LIFELINE)


def _supervisor_gone() -> None:
    log.error("the supervisor is gone: stopping at once")
    os._exit(1)
