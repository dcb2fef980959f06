"""The agent's own calls to its BuildKit daemon's Control service, over a unix socket:
readiness (ListWorkers), the cache's size (DiskUsage), a cache reset (Prune), and a build's
status (Status) for a client that never asks for it (build_status.py).

Each check opens a fresh channel: a gRPC channel that once failed to connect waits out its
own reconnect backoff (up to minutes), while a daemon that has just started should be seen
ready at the next heartbeat. A connection over a local socket costs well under a millisecond.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import grpc
import grpc.aio
from protobuf import Message

from depot_api.gen.moby.buildkit.v1 import daemon_pb

_CONTROL = "/moby.buildkit.v1.Control/"
_Answer = TypeVar("_Answer", bound=Message)


class DaemonUnavailable(Exception):
    """The daemon did not answer; str() is one line saying how."""


class Control:
    def __init__(self, socket: Path, *, timeout: float = 5.0) -> None:
        self._target = f"unix:{socket}"
        self._timeout = timeout

    async def workers(self) -> int:
        """How many workers the daemon names: none means it cannot build yet."""
        answer = await self._unary(
            "ListWorkers", daemon_pb.ListWorkersRequest(), daemon_pb.ListWorkersResponse
        )
        return len(answer.record)

    async def cache_bytes(self) -> int:
        """The build cache's size, as the daemon counts it (shared records once)."""
        answer = await self._unary(
            "DiskUsage", daemon_pb.DiskUsageRequest(), daemon_pb.DiskUsageResponse
        )
        return sum(record.Size for record in answer.record)

    async def prune_all(self) -> int:
        """Delete every build cache record the daemon holds; the bytes freed."""
        freed = 0
        async with grpc.aio.insecure_channel(self._target) as channel:
            call = channel.unary_stream(
                _CONTROL + "Prune",
                request_serializer=_serialize,
                response_deserializer=daemon_pb.UsageRecord.from_binary,
            )
            try:
                async for record in call(daemon_pb.PruneRequest(all=True), timeout=300.0):
                    freed += record.Size
            except grpc.aio.AioRpcError as e:
                raise DaemonUnavailable(_describe("Prune", e)) from None
        return freed

    async def status(self, ref: str) -> AsyncIterator[bytes]:
        """The Status stream of one ref: each StatusResponse as the daemon's bytes (they are
        passed on undecoded, as the front door passes on the clients'). It ends when the solve
        does; raises DaemonUnavailable when the call fails."""
        async with grpc.aio.insecure_channel(self._target) as channel:
            call = channel.unary_stream(
                _CONTROL + "Status",
                request_serializer=_status_request,
                response_deserializer=bytes,
            )
            try:
                async for message in call(ref):
                    yield message
            except grpc.aio.AioRpcError as e:
                raise DaemonUnavailable(_describe("Status", e)) from None

    async def _unary(self, method: str, request: Message, answer: type[_Answer]) -> _Answer:
        async with grpc.aio.insecure_channel(self._target) as channel:
            call = channel.unary_unary(
                _CONTROL + method,
                request_serializer=_serialize,
                response_deserializer=answer.from_binary,
            )
            try:
                result: _Answer = await call(request, timeout=self._timeout)
            except grpc.aio.AioRpcError as e:
                raise DaemonUnavailable(_describe(method, e)) from None
        return result


def _serialize(message: Message) -> bytes:
    return message.to_binary()


def _status_request(ref: str) -> bytes:
    """moby.buildkit.v1.StatusRequest{Ref=1}, encoded by hand: the message is not among the
    generated ones, and one string field needs no more."""
    data = ref.encode()
    length = bytearray()
    n = len(data)
    while True:
        byte, n = n & 0x7F, n >> 7
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return b"\x0a" + bytes(length) + data


def _describe(method: str, e: grpc.aio.AioRpcError) -> str:
    details = (e.details() or "").splitlines()[0] if e.details() else ""
    return f"BuildKit's {method} failed ({e.code().name.lower()}: {details or 'no details'})"
