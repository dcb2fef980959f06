"""The ASGI application: the RPC services (services.py), gRPC reflection, the seed's plain
JSON GetEndpoint, /healthz, /readyz and /openapi.yaml.

Routing is one dictionary lookup on the service prefix of the path. Starlette's Mount did the
same job at a measured cost of about 15% of throughput on this hot path (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

from connectrpc.codec import proto_binary_codec
from connectrpc_grpcreflect import (
    ServerReflectionAlphaASGIApplication,
    ServerReflectionAlphaService,
    ServerReflectionASGIApplication,
    ServerReflectionService,
)

from depot_api.api import seed_endpoint
from depot_api.api.asgi import ASGIApp, Receive, Scope, Send
from depot_api.api.console.console import PREFIX as CONSOLE_PREFIX
from depot_api.api.console.console import Console
from depot_api.api.console.routes import ROUTES as CONSOLE_ROUTES
from depot_api.api.drain import DRAIN_REQUEST, DRAINED_PREFIX, Drain
from depot_api.api.guard import Admission, Guard, guard_interceptors
from depot_api.api.json_codec import LenientKeysJSONCodec
from depot_api.api.limits import Limits, RateLimiter, StreamLimiter
from depot_api.api.observing import Observer
from depot_api.api.pages import STATIC_FILES, send_redirect, send_static
from depot_api.api.public_url import SHARE_PATH, note_arrival
from depot_api.api.refusals import Catalog, connect_error, explaining_refusals
from depot_api.api.seed_endpoint import SeedGetEndpoint
from depot_api.api.server_shims import (
    exit_with_the_supervisor,
    read_body_first,
    reads_body_first,
    receive_waiting_for_disconnect,
    stop_watching_the_supervisor,
    utf8_headers,
)
from depot_api.api.share_page import SharePage
from depot_api.config import Settings
from depot_api.domain.errors import Unavailable
from depot_api.metrics import CONTENT_TYPE, exposition
from depot_api.services import public_url_of, served
from depot_api.wiring import Domain, domain_for

log = logging.getLogger("depot_api")

_SWEEP_EVERY_SECONDS = 5.0
# How often a worker looks for the supervisor's request to drain (see _watch_for_drain).
_DRAIN_POLL_SECONDS = 0.2
# The HTTP/JSON view's OpenAPI document (package data; tests/test_openapi.py keeps it true),
# read once: it is served as is.
_OPENAPI_YAML = resources.files("depot_api").joinpath("openapi.yaml").read_bytes()
# The paths that are not RPCs (and /metrics, unless it has an address of its own).
_PLAIN_ROUTES = ("/healthz", "/readyz", "/openapi.yaml")
_METRICS = "/metrics"
# The read-only pages (GET or HEAD): the static files, and shared builds under SHARE_PATH.
_PAGE_ROUTES = tuple(STATIC_FILES)


def create_app(settings: Settings, domain: Domain | None = None) -> DepotAPI:
    """The application over the settings' database (opened lazily, on first use)."""
    return DepotAPI(domain_for(settings) if domain is None else domain, settings)


class DepotAPI:
    def __init__(self, domain: Domain, settings: Settings) -> None:
        self.domain = domain
        self.limits = limits = Limits(
            RateLimiter(settings.rate_limit, settings.rate_burst),
            StreamLimiter(settings.max_streams_per_token),
        )
        self.drain = drain = Drain()
        interceptors = guard_interceptors(domain.authenticator, limits, drain)
        max_bytes = settings.max_message_bytes
        codecs = [proto_binary_codec(), LenientKeysJSONCodec()]
        services = served(domain, settings)
        applications = [
            service.application(
                service.implementation,
                interceptors=interceptors[service.guard],
                read_max_bytes=max_bytes,
                codecs=codecs,
            )
            for service in services
        ]
        files = [service.descriptor for service in services]
        # gRPC reflection, of every service in the table: it takes no token and reads with
        # connectrpc's own codecs; its requests are held to the same size limit.
        unguarded: dict[str, Any] = {
            "interceptors": interceptors[Guard.NONE],
            "read_max_bytes": max_bytes,
        }
        reflections = [
            ServerReflectionASGIApplication(ServerReflectionService(*files), **unguarded),
            ServerReflectionAlphaASGIApplication(ServerReflectionAlphaService(*files), **unguarded),
        ]
        self._routes: dict[str, ASGIApp] = {app.path: app for app in [*applications, *reflections]}
        # What each RPC path takes, for the answers to requests that reach none (refusals.py).
        self._catalog = Catalog(files, plain_json=[seed_endpoint.PATH])
        for reflection in reflections:  # one bidi method, named by the reflection protocol
            self._catalog.add_service(
                reflection.path.removeprefix("/"), ["ServerReflectionInfo"], "bidi_streaming"
            )
        self._seed_get_endpoint = SeedGetEndpoint(
            Admission(domain.authenticator, limits, drain, machines=False),
            drain,
            domain.endpoints,
            max_bytes,
        )
        self._share_page = SharePage(domain.shares)
        self._console = Console(
            domain,
            CONSOLE_ROUTES,
            session_seconds=int(settings.console_session_lifetime.total_seconds()),
            public_url=public_url_of(settings),
        )
        self._links_from_arrival = not settings.public_url
        self._drain_dir = settings.drain_dir
        self._drain_watch: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._liveness_window = settings.liveness_window.total_seconds()
        self._max_bytes = max_bytes
        # /metrics is served here unless the supervisor serves it on an address of its own.
        self._plain_routes: tuple[str, ...] = _PLAIN_ROUTES
        if not settings.metrics_address:
            self._plain_routes += (_METRICS,)
        self.observer = Observer(
            self._routes,
            self._catalog.knows,
            self._plain_routes,
            (*_PAGE_ROUTES, SHARE_PATH, CONSOLE_PREFIX),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            # Counted so that a draining process knows when its last call has ended.
            self._in_flight += 1
            try:
                await self.observer(scope, receive, send, self._http)
            finally:
                self._in_flight -= 1
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        service = self._routes.get(path.rsplit("/", 1)[0])
        # Only a POST is the seed's view; any other method goes on to connectrpc, which
        # answers 405 as for every RPC (the fuzzing found a 501 here).
        if (
            path == seed_endpoint.PATH
            and scope["method"] == "POST"
            and seed_endpoint.is_plain_json(scope)
        ):
            body = await read_body_first(receive, self._max_bytes)
            receive = receive_waiting_for_disconnect(receive, body)
            await self._seed_get_endpoint(scope, receive, send)
        elif service is not None:
            if self._links_from_arrival:  # for the links an RPC makes (public_url.py)
                note_arrival(scope)
            body = []
            if reads_body_first(scope):
                body = await read_body_first(receive, self._max_bytes)
            send = explaining_refusals(self._catalog, scope, send)
            await service(utf8_headers(scope), receive_waiting_for_disconnect(receive, body), send)
        elif _is_page(path):
            await read_body_first(receive, self._max_bytes)  # answer cleanly; see there
            if scope["method"] not in ("GET", "HEAD"):
                message = f"{path.split(SHARE_PATH)[0] or SHARE_PATH} is read with GET\n"
                await _plain(send, 405, message.encode(), headers=[(b"allow", b"GET, HEAD")])
            elif not await send_static(send, path):
                await self._share_page.page(path, send)
        elif self._console.serves(path):
            if self._links_from_arrival:  # the console's share links, as ShareBuild's
                note_arrival(scope)
            await self._console(scope, receive, send)
        elif path == "/" and scope["method"] in ("GET", "HEAD") and _wants_html(scope):
            # A browser opening the server's address lands in the console; an API client
            # (gRPC, Connect, curl) gets the 404 that lists the paths, in its own terms.
            await read_body_first(receive, self._max_bytes)
            await send_redirect(send, self._console.home)
        elif path in self._plain_routes and scope["method"] not in ("GET", "HEAD"):
            await read_body_first(receive, self._max_bytes)  # answer cleanly; see there
            message = f"{path} is read with GET (or HEAD), not {scope['method']}\n"
            await _plain(send, 405, message.encode(), headers=[(b"allow", b"GET, HEAD")])
        elif path == "/healthz":
            await _plain(send, 200, b"ok\n")
        elif path == "/readyz":
            await self._ready(send)
        elif path == "/openapi.yaml":
            await _plain(send, 200, _OPENAPI_YAML, b"application/yaml")
        elif path == _METRICS and path in self._plain_routes:
            await self._metrics(send)
        else:
            await read_body_first(receive, self._max_bytes)  # answer cleanly; see there
            await self._not_found(path, send)

    async def _not_found(self, path: str, send: Send) -> None:
        """404 naming the path: a Connect error for an RPC's path, plain text elsewhere."""
        if self._catalog.is_rpc_path(path):
            error = connect_error("unimplemented", self._catalog.not_found(path))
            await _plain(send, 404, error, b"application/json")
            return
        message = (
            f"{path} not found: RPCs are POSTed to /package.Service/Method; "
            f"the other paths are {', '.join(self._plain_routes)}, and the console at /console/\n"
        )
        await _plain(send, 404, message.encode("utf-8", "backslashreplace"))

    async def _metrics(self, send: Send) -> None:
        """The metrics of every worker; this worker's samples taken now."""
        try:
            await self._sample_for_metrics()
        except Exception:  # the rest is worth serving without a database
            log.warning("/metrics: cannot count the machines now", exc_info=True)
        await _plain(send, 200, exposition(), CONTENT_TYPE.encode())

    async def _sample_for_metrics(self) -> None:
        """The gauges that are sampled rather than kept: this worker's database connections,
        and the machines by state (from the database)."""
        await self.domain.machines.count_for_metrics()
        self.domain.store.database.sample_connections()

    async def _ready(self, send: Send) -> None:
        if self.drain.draining:  # so that a load balancer sends new calls elsewhere
            await _plain(send, 503, b"shutting down\n")
            return
        try:
            await self.domain.health.check()
        except Unavailable:
            await _plain(send, 503, b"database unavailable\n")
            return
        await _plain(send, 200, b"ready\n")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._sweeper = asyncio.create_task(self._sweep_silent_builds())
                if self._drain_dir is not None:  # run by a supervisor (server/supervisor.py)
                    self._drain_watch = asyncio.create_task(self._watch_for_drain(self._drain_dir))
                    exit_with_the_supervisor()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._drain_dir is not None:
                    stop_watching_the_supervisor()
                for task in (self._sweeper, self._drain_watch):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                await self.domain.endpoints.close()
                await self.domain.issuer_documents.close()
                await self.domain.store.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _watch_for_drain(self, directory: Path) -> None:
        """Drain when the supervisor asks, then tell it when no call is left in flight.

        Both ways go through files in a directory the supervisor made for this run: a worker
        runs inside an Envoy process, whose signals are Envoy's own (SIGTERM stops it at once,
        breaking every open stream).
        """
        request = directory / DRAIN_REQUEST
        # Polled: a file cannot wake an Event, and a stat five times a second costs nothing.
        while not request.exists():  # noqa: ASYNC110
            await asyncio.sleep(_DRAIN_POLL_SECONDS)
        self.drain.start()
        log.info("shutting down: draining %d call(s) in flight", self._in_flight)
        while self._in_flight:  # noqa: ASYNC110 (as above: a short poll, once, at the end)
            await asyncio.sleep(_DRAIN_POLL_SECONDS)
        (directory / f"{DRAINED_PREFIX}{os.getpid()}").touch()
        log.info("drained: no call in flight")

    async def _sweep_silent_builds(self) -> None:
        """Cancel builds whose clients went silent. Every process sweeps; the cancel is a
        conditional update, so overlapping sweeps are harmless."""
        every = min(_SWEEP_EVERY_SECONDS, self._liveness_window / 3)
        while True:
            await asyncio.sleep(every)
            try:
                canceled = await self.domain.endpoints.cancel_silent_builds()
            except Exception:
                log.exception("liveness sweep failed; trying again later")
                continue
            if canceled:
                log.info("canceled %d silent build(s): %s", len(canceled), ", ".join(canceled))
            # For a /metrics served by the supervisor, which has no database of its own.
            with contextlib.suppress(Exception):
                await self._sample_for_metrics()


def _wants_html(scope: Scope) -> bool:
    """The request is a browser's: it asks for HTML (every browser does when it navigates)."""
    return any(
        key.lower() == b"accept" and b"text/html" in bytes(value).lower()
        for key, value in scope.get("headers", [])
    )


def _is_page(path: str) -> bool:
    return path in _PAGE_ROUTES or path.startswith(SHARE_PATH)


async def _plain(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = b"text/plain; charset=utf-8",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), *(headers or ())],
        }
    )
    await send({"type": "http.response.body", "body": body})
