"""Graceful shutdown: finish the calls in flight, end the waiting ones with `unavailable`.

When the server is told to stop, each process drains. A new call is refused with
`unavailable` (clients retry: against another process, or after the restart). A unary call in
flight runs to its end. A stream (a build waiting for its machine, a client streaming health
or status) is ended at once with `unavailable`: it could otherwise last for hours, and ending
it cleanly tells the client to retry rather than leaving it with a broken connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext

T = TypeVar("T")

SHUTTING_DOWN = "the server is shutting down; retry the call"
# The supervisor asks its workers to drain with a file of this name in a directory it made
# for the run; each worker answers with a file named DRAINED_PREFIX + its process ID.
DRAIN_REQUEST = "drain"
DRAINED_PREFIX = "drained-"


class Drain:
    """One process's shutdown state: set once, never cleared."""

    def __init__(self) -> None:
        self._started = asyncio.Event()

    @property
    def draining(self) -> bool:
        return self._started.is_set()

    def start(self) -> None:
        self._started.set()

    def refuse_if_draining(self) -> None:
        if self._started.is_set():
            raise ConnectError(Code.UNAVAILABLE, SHUTTING_DOWN)

    async def race(self, work: Awaitable[T]) -> T:
        """The result of work, unless draining starts first: then work is cancelled and the
        call ends with unavailable."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._started.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the call itself was cancelled: take the work with it
            task.cancel()
            raise
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ConnectError(Code.UNAVAILABLE, SHUTTING_DOWN)


class DrainInterceptor:
    """Ends the streams in flight with `unavailable` when draining starts; a unary call in
    flight runs to its end. (A new call is refused by the admission, api/guard.py.)

    It must come after the RequestGuard in the interceptor list: the work it races runs in new
    tasks, which copy the context, and the caller's Principal must already be in that context.
    """

    def __init__(self, drain: Drain) -> None:
        self._drain = drain

    async def intercept_client_stream(
        self,
        call_next: Callable[[AsyncIterator[Any], RequestContext[Any, Any]], Awaitable[Any]],
        request: AsyncIterator[Any],
        ctx: RequestContext[Any, Any],
        /,
    ) -> Any:
        return await self._drain.race(call_next(request, ctx))

    async def intercept_server_stream(
        self,
        call_next: Callable[[Any, RequestContext[Any, Any]], AsyncIterator[Any]],
        request: Any,
        ctx: RequestContext[Any, Any],
        /,
    ) -> AsyncIterator[Any]:
        responses = call_next(request, ctx)
        while True:
            try:
                response = await self._drain.race(anext(responses))
            except StopAsyncIteration:
                return
            yield response
