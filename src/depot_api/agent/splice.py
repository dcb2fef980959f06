"""Forwarding the bytes of one connection both ways, counting them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# Shown each chunk once it is written on: it may read it, never change or hold it (it must not
# raise either: http2_reader.ConnectionReader never does).
Tap = Callable[[bytes], None]

_CHUNK = 1 << 18


@dataclass
class Counts:
    """Bytes forwarded so far, each way; read while the splice runs."""

    from_client: int = 0
    to_client: int = 0


async def splice(
    client: Streams,
    daemon: Streams,
    counts: Counts | None = None,
    taps: tuple[Tap, Tap] | None = None,
) -> None:
    """Copy client→daemon and daemon→client, then close both. It ends when the daemon's side
    ends (a daemon that closed has nothing more to say: HTTP/2 has no half-open use), or when
    either side breaks; a client's half-close is passed on and the daemon's answer awaited.
    Cancelling it closes both at once. `taps` (client→daemon, daemon→client) see the bytes
    after they were written on."""
    counts = counts if counts is not None else Counts()
    up_tap, down_tap = taps if taps is not None else (None, None)
    upstream = asyncio.create_task(_copy(client[0], daemon[1], counts, "from_client", up_tap))
    downstream = asyncio.create_task(_copy(daemon[0], client[1], counts, "to_client", down_tap))
    try:
        done, _ = await asyncio.wait((upstream, downstream), return_when=asyncio.FIRST_COMPLETED)
        if downstream not in done and upstream.exception() is None:
            await asyncio.wait((downstream,))
    finally:
        upstream.cancel()
        downstream.cancel()
        for _, writer in (client, daemon):
            writer.close()
        for _, writer in (client, daemon):
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(upstream, downstream, return_exceptions=True)


async def _copy(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    counts: Counts,
    field: str,
    tap: Tap | None,
) -> None:
    while data := await reader.read(_CHUNK):
        writer.write(data)
        if tap is not None:
            tap(data)
        setattr(counts, field, getattr(counts, field) + len(data))
        await writer.drain()
    # The sender is done: tell the other side, which may still answer (a TLS stream cannot
    # half-close; its writer then just stays open until the other direction ends).
    if writer.can_write_eof():
        writer.write_eof()
