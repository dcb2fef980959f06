"""What every request leaves behind for the people who run the server: its request ID (taken
from X-Request-Id when a proxy set a usable one, made otherwise, and sent back), and when it
ends one log line, its metrics (metrics.py) and its span (tracing.py).

A CallRecord is made per request and put in a ContextVar before the application runs; the
parts that learn something about the call write it there: the admission its principal
(guard.py), the error mapping its code (errors.py). A stream's tasks copy the context, so they
write into the same record.

Labels are bounded: service and method are the ones served here or `unknown`, never a path as
the client wrote it; the protocol is one of a few words; the code is a Connect code (an RPC) or
an HTTP status (the plain routes).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram

from depot_api import tracing
from depot_api.api.asgi import ASGIMessage, Receive, Scope, Send, media_type
from depot_api.domain.principal import Principal
from depot_api.domain.token_format import PREFIXES
from depot_api.metrics import RPC_DURATION, RPC_REQUESTS

log = logging.getLogger("depot_api.requests")

REQUEST_ID_HEADER = b"x-request-id"
# What is kept of a request ID a proxy set: printable, no blanks or quotes, at most this long.
# Anything else is replaced by an ID made here (and the proxy's is not logged: it could be
# anything a client sent).
_REQUEST_ID_MAX = 128
_USABLE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,%d}" % _REQUEST_ID_MAX)
_TOKEN_PREFIXES = tuple(PREFIXES.values())
UNKNOWN = "unknown"
# The service label of the routes that are not RPCs (/healthz, /metrics, ...).
PLAIN_HTTP = "http"

# gRPC's numeric status codes, as Connect names them.
_GRPC_CODES = (
    "ok", "canceled", "unknown", "invalid_argument", "deadline_exceeded", "not_found",
    "already_exists", "permission_denied", "resource_exhausted", "failed_precondition",
    "aborted", "out_of_range", "unimplemented", "internal", "unavailable", "data_loss",
    "unauthenticated",
)  # fmt: skip
# An RPC answered with an HTTP status and no code of ours (a refusal of connectrpc's own):
# the code the Connect protocol gives that status.
_HTTP_CODES = {
    400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied",
    404: "unimplemented", 405: "unimplemented", 408: "deadline_exceeded",
    409: "aborted", 412: "failed_precondition", 413: "resource_exhausted",
    415: "unimplemented", 429: "unavailable", 499: "canceled", 501: "unimplemented",
    502: "unavailable", 503: "unavailable", 504: "unavailable",
}  # fmt: skip
_GRPC_WEB_STATUS = re.compile(rb"grpc-status:\s*(\d+)")
_NO_SPAN: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()


@dataclass(slots=True)
class CallRecord:
    request_id: str
    service: str
    method: str
    protocol: str
    started: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None
    # Set by the error mapping when the call failed with a Connect error.
    error_code: str | None = None
    status: int = 0
    grpc_status: str | None = None

    @property
    def code(self) -> str:
        if self.service == PLAIN_HTTP:
            return str(self.status)
        if self.error_code is not None:
            return self.error_code
        if self.grpc_status is not None:
            number = int(self.grpc_status) if self.grpc_status.isdigit() else -1
            return _GRPC_CODES[number] if 0 <= number < len(_GRPC_CODES) else UNKNOWN
        if self.status == 200:
            return "ok"
        return _HTTP_CODES.get(self.status, UNKNOWN)


_current: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar(
    "depot_api_call", default=None
)


def current_call() -> CallRecord | None:
    """The record of the request being handled, if any (none outside a request)."""
    return _current.get()


def note_principal(principal: Principal) -> None:
    record = _current.get()
    if record is not None:
        record.principal = principal


def note_error_code(code: str) -> None:
    record = _current.get()
    if record is not None:
        record.error_code = code


def request_id_of(scope: Scope) -> str:
    """The proxy's X-Request-Id when usable, else a new one."""
    for name, value in scope.get("headers", ()):
        if name.lower() == REQUEST_ID_HEADER:
            if _USABLE_REQUEST_ID.fullmatch(value):
                given = bytes(value).decode("ascii")
                if not _looks_secret(given):
                    return given
            break
    return os.urandom(16).hex()  # as random as uuid4's 122 bits, at a quarter of the cost


def _looks_secret(request_id: str) -> bool:
    """Whether a client's request ID looks like a token of ours (even cut short) or a JWT: it
    is logged and echoed, so a client that pastes a secret there must not see it logged."""
    return request_id.startswith(_TOKEN_PREFIXES) or "eyJ" in request_id


def protocol_of(scope: Scope) -> str:
    """grpc, grpc-web, connect, or http (a plain GET, or the seed's plain JSON)."""
    kind = media_type(scope)
    if kind.startswith(b"application/grpc-web"):
        return "grpc-web"
    if kind.startswith(b"application/grpc"):
        return "grpc"
    if kind.startswith(b"application/connect+") or kind in (b"application/proto",
                                                            b"application/json"):  # fmt: skip
        return "connect"
    return "http"


Ended = Callable[[CallRecord, float], None]


class Observer:
    """Wraps the handling of each HTTP request: request ID, record, and what is done at its
    end (a log line, then whatever else is registered with on_end)."""

    def __init__(
        self,
        services: Collection[str],
        knows_method: Callable[[str], bool],
        plain_routes: Collection[str],
        page_prefixes: Collection[str] = (),
    ) -> None:
        # The service paths served here ("/depot.build.v1.BuildService").
        self._services = frozenset(services)
        self._knows_method = knows_method
        self._plain_routes = frozenset(plain_routes)
        # Pages are labelled by their prefix: the rest of a page's path may be a secret (a
        # shared build's link), which must be in no label and no log line.
        self._page_prefixes = tuple(page_prefixes)
        self._ended: list[Ended] = [log_line, count_call]

    def on_end(self, ended: Ended) -> None:
        self._ended.append(ended)

    def labels(self, path: str) -> tuple[str, str]:
        """The bounded (service, method) of a path."""
        if path in self._plain_routes:
            return PLAIN_HTTP, path
        for prefix in self._page_prefixes:
            if path.startswith(prefix):
                return PLAIN_HTTP, prefix
        service_path, _, method = path.rpartition("/")
        if service_path in self._services:
            return service_path.removeprefix("/"), method if self._knows_method(path) else UNKNOWN
        return UNKNOWN, UNKNOWN

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        handle: Callable[[Scope, Receive, Send], Awaitable[None]],
    ) -> None:
        service, method = self.labels(scope["path"])
        protocol = protocol_of(scope) if service != PLAIN_HTTP else "http"
        record = CallRecord(request_id_of(scope), service, method, protocol)
        echoed = (REQUEST_ID_HEADER, record.request_id.encode("ascii"))
        grpc_web = protocol == "grpc-web"

        async def observed_send(message: ASGIMessage) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                record.status = message["status"]
                headers = list(message.get("headers", ()))
                record.grpc_status = _grpc_status(headers) or record.grpc_status
                message = {**message, "headers": [*headers, echoed]}
            elif kind == "http.response.trailers":
                record.grpc_status = _grpc_status(message.get("headers", ())) or record.grpc_status
            elif grpc_web and kind == "http.response.body":
                # gRPC-Web carries its trailers in the body's last frame.
                found = _GRPC_WEB_STATUS.search(message.get("body", b"")[-512:])
                if found is not None:
                    record.grpc_status = found[1].decode("ascii")
            await send(message)

        reset = _current.set(record)
        spanning: contextlib.AbstractContextManager[Any] = _NO_SPAN
        if tracing.enabled():
            spanning = tracing.rpc_server_span(
                f"{service}/{method}",
                scope.get("headers", ()),
                {
                    "rpc.system": "http" if service == PLAIN_HTTP else "connect_rpc",
                    "rpc.service": service,
                    "rpc.method": method,
                    "depot_api.protocol": protocol,
                    "depot_api.request_id": record.request_id,
                },
            )
        with spanning as span:
            try:
                await handle(scope, receive, observed_send)
            finally:
                _current.reset(reset)
                duration = time.perf_counter() - record.started
                if span is not None:
                    tracing.end_rpc_span(span, record.code, _principal_attributes(record))
                for ended in self._ended:
                    try:
                        ended(record, duration)
                    except Exception:  # what is observed must never break the call
                        log.exception("observing a request failed")


def _grpc_status(headers: Collection[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"grpc-status":
            return bytes(value).decode("ascii", "replace")
    return None


def _principal_attributes(record: CallRecord) -> dict[str, str]:
    principal = record.principal
    if principal is None:
        return {}
    return {"depot_api.principal.kind": principal.kind.value,
            "depot_api.principal.id": principal.token_id}  # fmt: skip


# The metrics' children by their labels: looked up once each (the label sets are bounded).
_counted: dict[tuple[str, str, str, str], tuple[Counter, Histogram]] = {}


def count_call(record: CallRecord, duration: float) -> None:
    key = (record.service, record.method, record.protocol, record.code)
    children = _counted.get(key)
    if children is None:
        children = _counted[key] = (RPC_REQUESTS.labels(*key), RPC_DURATION.labels(*key[:3]))
    children[0].inc()
    children[1].observe(duration)


def log_line(record: CallRecord, duration: float) -> None:
    """One line per request. Only names and IDs: never a header, a body or a token."""
    if not log.isEnabledFor(logging.INFO):
        return
    principal = record.principal
    log.info(
        "request",
        extra={
            "fields": {
                "request_id": record.request_id,
                "service": record.service,
                "method": record.method,
                "protocol": record.protocol,
                "code": record.code,
                "duration_ms": round(duration * 1000, 3),
                "principal_kind": principal.kind.value if principal is not None else None,
                "principal_id": principal.token_id if principal is not None else None,
            }
        },
    )
