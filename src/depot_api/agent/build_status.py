"""Build insights at the front door: what BuildKit told each build's client about its steps,
kept in a bounded queue until the server takes it (ReportBuildStatus).

The source is the client's own `Control/Status` stream, read on its way to the client
(http2_reader.py). Only a build whose client runs a Solve and never asks for its status gets a
listener of the agent's own (a `Status` call to the daemon, opened at once when the Solve's ref
is first seen, and kept only if no client Status stream for that ref shows up within a grace
period): such a listener may miss the start of a build on a BuildKit without replay, so its
batches say `side_listener` (docs/decisions.md).

The queue never blocks and never grows past its cap: past it the oldest messages of the build
at hand are dropped, and counted, so the build's record says its insights are incomplete.
Messages taken for a report still count against the cap until the server has them, and go back
to the front of their build's queue when a report fails: the server's merge is idempotent, and
the end of a build survives an outage the queue can hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from depot_api.agent.http2_reader import SOLVE, STATUS, ConnectionReader

log = logging.getLogger("depot_api.agent")

DEFAULT_CAP_BYTES = 64 << 20
# What one ReportBuildStatus carries at most (a message bigger than this goes alone), well
# within the server's request size (4 MiB by default) and message count (10 000).
BATCH_BYTES = 1 << 20
BATCH_MESSAGES = 1000
# A status message bigger than this could not be sent at all: it is dropped, and counted.
MAX_MESSAGE_BYTES = 3 << 20
# How long a Solve's ref waits for the client's own Status stream before the agent's side
# listener, opened at once, is kept. The depot CLI and buildx open it within milliseconds.
SIDE_LISTENER_GRACE = 3.0
# How long a side listener may outlive the build's last connection: on a BuildKit without
# build history, a Status stream can hang after its solve ended.
SIDE_LISTENER_LINGER = 10.0
# Each side listener is a call to the daemon: a client that solves ref after ref without ever
# asking for status gets this many at once, no more.
MAX_SIDE_LISTENERS = 16


@dataclass
class Batch:
    """What one build's report carries; taken from the queue, given back with `retry`."""

    build_id: str
    messages: list[bytes]
    dropped: int
    side_listener: bool

    @property
    def size(self) -> int:
        return sum(len(m) for m in self.messages)


@dataclass
class _Build:
    pending: deque[bytes] = field(default_factory=deque)
    pending_bytes: int = 0
    dropped: int = 0  # since the agent started serving the build
    reported_dropped: int = 0
    side_listener: bool = False
    reported_side_listener: bool = False
    in_flight: int = 0  # batches taken and not yet sent or given back


class StatusQueue:
    """StatusResponse messages per build, in order, bounded in bytes (pending and in flight)."""

    def __init__(self, cap_bytes: int = DEFAULT_CAP_BYTES, batch_bytes: int = BATCH_BYTES) -> None:
        if cap_bytes <= 0 or batch_bytes <= 0:
            raise ValueError("the queue's cap and batch size must be positive")
        self._cap = cap_bytes
        self._batch = batch_bytes
        self._builds: dict[str, _Build] = {}
        self.bytes = 0  # pending and in flight
        self.dropped = 0  # over all builds, for the log

    def add(self, build_id: str, message: bytes, *, side_listener: bool = False) -> None:
        build = self._builds.setdefault(build_id, _Build())
        build.side_listener |= side_listener
        if len(message) > MAX_MESSAGE_BYTES:
            self._drop(build_id, build)
            return
        # Oldest first: BuildKit sends each vertex whole again as it changes, so the newest
        # messages hold the latest state of the steps, and the end of the build is kept.
        while self.bytes + len(message) > self._cap and build.pending:
            old = build.pending.popleft()
            build.pending_bytes -= len(old)
            self.bytes -= len(old)
            self._drop(build_id, build)
        if self.bytes + len(message) > self._cap:
            self._drop(build_id, build)
            return
        build.pending.append(message)
        build.pending_bytes += len(message)
        self.bytes += len(message)

    def lost(self, build_id: str, count: int = 1) -> None:
        """Messages that were never read (the reader lost track of a connection with status)."""
        self._drop(build_id, self._builds.setdefault(build_id, _Build()), count)

    def _drop(self, build_id: str, build: _Build, count: int = 1) -> None:
        build.dropped += count
        before, self.dropped = self.dropped, self.dropped + count
        if before == 0 or before // 1000 != self.dropped // 1000:
            log.warning(
                "%d build status messages dropped so far (build %s: %d): the server has not "
                "taken them and the agent's buffer (%d bytes) is full",
                self.dropped,
                build_id,
                build.dropped,
                self._cap,
            )

    def take(self) -> list[Batch]:
        """A batch for each build with something new to say (off the queue: hand each back
        with `sent` or `retry`). A build already in flight waits, so its order holds."""
        batches = []
        for build_id, build in self._builds.items():
            if build.in_flight:
                continue
            news = (
                build.dropped != build.reported_dropped
                or build.side_listener != build.reported_side_listener
            )
            if not build.pending and not news:
                continue
            messages: list[bytes] = []
            size = 0
            while (
                build.pending
                and len(messages) < BATCH_MESSAGES
                and (not messages or size + len(build.pending[0]) <= self._batch)
            ):
                message = build.pending.popleft()
                messages.append(message)
                size += len(message)
            build.pending_bytes -= size
            build.in_flight += 1
            batches.append(Batch(build_id, messages, build.dropped, build.side_listener))
        return batches

    def sent(self, batch: Batch) -> None:
        build = self._builds[batch.build_id]
        build.in_flight -= 1
        self.bytes -= batch.size
        build.reported_dropped = max(build.reported_dropped, batch.dropped)
        build.reported_side_listener |= batch.side_listener
        if (
            not build.pending
            and not build.in_flight
            and build.dropped == build.reported_dropped
            and build.dropped == 0
            and not build.side_listener
        ):
            # Nothing to remember: a build that dropped nothing and was read from its client
            # starts over at no cost.
            del self._builds[batch.build_id]

    def retry(self, batch: Batch) -> None:
        build = self._builds[batch.build_id]
        build.in_flight -= 1
        build.pending.extendleft(reversed(batch.messages))
        build.pending_bytes += batch.size

    def pending_bytes(self) -> int:
        return sum(b.pending_bytes for b in self._builds.values())


# Opens a Status(ref) stream of the daemon's; yields each StatusResponse's bytes.
StatusListener = Callable[[str], AsyncIterator[bytes]]


@dataclass
class _Side:
    """A side listener: its messages are held until its grace ends, then kept (or, when the
    client's own Status stream showed up meanwhile, it is canceled and they are dropped)."""

    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    held: list[bytes] = field(default_factory=list)
    kept: bool = False
    ended: bool = False


class Insights:
    """The front door's part: a reader for each admitted connection, feeding the queue, and
    side listeners for builds whose client never asks for status."""

    def __init__(
        self,
        queue: StatusQueue,
        *,
        grace: float = SIDE_LISTENER_GRACE,
        linger: float = SIDE_LISTENER_LINGER,
        max_side_listeners: int = MAX_SIDE_LISTENERS,
    ) -> None:
        self.queue = queue
        self._grace = grace
        self._linger = linger
        self._max_sides = max_side_listeners
        self._with_status: set[tuple[str, str]] = set()  # (build, ref) a client asked about
        self._sides: dict[tuple[str, str], _Side] = {}
        self._open: dict[str, int] = {}  # connections per build

    def reader(self, build_id: str, listen: StatusListener | None) -> ConnectionReader:
        """The reader of one admitted connection of a build; `listen` opens side listeners
        (None: none are opened)."""
        self._open[build_id] = self._open.get(build_id, 0) + 1

        def on_ref(ref: str, path: str) -> None:
            key = (build_id, ref)
            if path == STATUS:
                self._with_status.add(key)
                side = self._sides.get(key)
                if side is not None and not side.kept:
                    self._drop_side(key)  # the client's own stream is the source
            elif (
                path == SOLVE
                and listen is not None
                and key not in self._with_status
                and key not in self._sides
            ):
                self._side_listen(key, listen)

        def on_status(ref: str, message: bytes) -> None:
            self.queue.add(build_id, message)

        return ConnectionReader(on_ref, on_status)

    def closed(self, build_id: str, reader: ConnectionReader) -> None:
        if reader.lost:
            log.info("build %s: stopped reading a connection: %s", build_id, reader.lost)
            if reader.status_streams:
                # Its status was no longer read: the build's insights are incomplete.
                self.queue.lost(build_id)
        self._open[build_id] -= 1
        if self._open[build_id]:
            return
        del self._open[build_id]
        self._with_status = {k for k in self._with_status if k[0] != build_id}
        loop = asyncio.get_running_loop()
        for key in [k for k in self._sides if k[0] == build_id]:
            loop.call_later(self._linger, self._drop_side, key)

    def _side_listen(self, key: tuple[str, str], listen: StatusListener) -> None:
        build_id, ref = key
        if len(self._sides) >= self._max_sides:
            log.info(
                "build %s: %d side status listeners already; %s gets none, and its status is "
                "not read",
                build_id,
                len(self._sides),
                ref,
            )
            self.queue.lost(build_id)
            return
        side = _Side()
        loop = asyncio.get_running_loop()

        async def run() -> None:
            try:
                async for message in listen(ref):
                    if side.kept:
                        self.queue.add(build_id, message, side_listener=True)
                    else:
                        side.held.append(message)
            except Exception as e:  # the daemon's trouble; the build goes on
                log.info("build %s: side status listener for %s ended: %s", build_id, ref, e)
            finally:
                side.ended = True
                if side.kept:
                    self._sides.pop(key, None)

        def keep() -> None:
            if self._sides.get(key) is not side:
                return
            side.kept = True
            log.info(
                "build %s: no client asked for the status of %s within %g s; it is read from "
                "the side, and may be partial",
                build_id,
                ref,
                self._grace,
            )
            for message in side.held:
                self.queue.add(build_id, message, side_listener=True)
            side.held.clear()
            if side.ended:
                del self._sides[key]

        self._sides[key] = side
        side.task = loop.create_task(run())
        side.timer = loop.call_later(self._grace, keep)

    def _drop_side(self, key: tuple[str, str]) -> None:
        side = self._sides.pop(key, None)
        if side is None:
            return
        if side.timer is not None:
            side.timer.cancel()
        if side.task is not None:
            side.task.cancel()

    async def close(self) -> None:
        """Stop every side listener (the agent stops, or serves no binding)."""
        tasks = [side.task for side in self._sides.values() if side.task is not None]
        for key in list(self._sides):
            self._drop_side(key)
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
