"""Abuse limits per token: a call rate (token bucket) and a number of open streams.

Both are kept in the memory of one server process. With N processes behind one port a token
can reach N times the limit; the limits are there to stop a runaway client or a leaked token
from starving everyone else, not to meter usage, so that is a fair price for needing no
shared state on the hot path (docs/security.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from protobuf.wkt.google.protobuf.duration_pb import Duration

from depot_api.gen.google.rpc.error_details_pb import RetryInfo
from depot_api.metrics import RATE_LIMIT_REFUSALS

# Buckets that have filled up again are forgotten once this many tokens have been seen, so
# the table cannot grow without bound however many tokens call.
_FORGET_AFTER = 10_000


@dataclass(slots=True)
class _Bucket:
    level: float
    at: float


class RateLimiter:
    """rate calls a second, sustained, with bursts of up to burst calls; rate 0 = no limit."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> float:
        """Take one call for key: 0.0 when it may go ahead, else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _FORGET_AFTER:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.level = min(float(self.burst), bucket.level + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.level >= 1.0:
            bucket.level -= 1.0
            return 0.0
        return (1.0 - bucket.level) / self.rate

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that would be full by now: forgetting them changes nothing."""
        self._buckets = {
            key: b
            for key, b in self._buckets.items()
            if b.level + (now - b.at) * self.rate < self.burst
        }


class StreamLimiter:
    """At most limit streams open at once per key; limit 0 = no limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def open(self, key: str) -> bool:
        """Count a new stream for key; False (and nothing counted) when it is at its limit."""
        count = self._open.get(key, 0)
        if self.limit and count >= self.limit:
            return False
        self._open[key] = count + 1
        return True

    def close(self, key: str) -> None:
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)

    def open_count(self, key: str) -> int:
        return self._open.get(key, 0)


@dataclass(frozen=True, slots=True)
class Limits:
    """The abuse limits of one server process, shared by all its services."""

    rate: RateLimiter
    streams: StreamLimiter

    def check_rate(self, token_id: str, response_headers: MutableMapping[str, str]) -> None:
        """Count a call; refuse it with resource_exhausted and a retry hint when over the rate."""
        wait = self.rate.take(token_id)
        if not wait:
            return
        RATE_LIMIT_REFUSALS.labels("rate").inc()
        # The hint twice: RetryInfo for gRPC and Connect clients, Retry-After for plain HTTP.
        response_headers["retry-after"] = str(math.ceil(wait))
        delay = Duration(seconds=int(wait), nanos=int((wait % 1) * 1e9))
        raise ConnectError(
            Code.RESOURCE_EXHAUSTED,
            f"rate limit: this token may make {self.rate.rate:g} calls a second "
            f"(bursts of {self.rate.burst}); retry in {wait:.2f}s",
            details=[RetryInfo(retry_delay=delay)],
        )

    def open_stream(self, token_id: str) -> None:
        """Count an open stream; refuse it with resource_exhausted when the token has its
        limit open. Every successful call must be paired with close_stream."""
        if not self.streams.open(token_id):
            RATE_LIMIT_REFUSALS.labels("streams").inc()
            raise ConnectError(
                Code.RESOURCE_EXHAUSTED,
                f"this token already has {self.streams.limit} streams open, the most one token "
                "may hold; close one (or use another token) and retry",
            )

    def close_stream(self, token_id: str) -> None:
        self.streams.close(token_id)
