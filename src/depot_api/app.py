"""The ASGI application: every Connect service, gRPC reflection, /healthz, /readyz and
/openapi.yaml.

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
from depot_api.api.asgi import ASGIApp, ASGIMessage, Receive, Scope, Send, media_type
from depot_api.api.build_service import BuildServiceImpl
from depot_api.api.buildkit_service import BuildKitServiceImpl
from depot_api.api.cli_build_service import CliBuildServiceImpl
from depot_api.api.cli_projects_service import CliProjectsServiceImpl
from depot_api.api.cli_unserved import CliLoginServiceImpl, CliPushServiceImpl
from depot_api.api.core_build_service import CoreBuildServiceImpl
from depot_api.api.drain import DRAIN_REQUEST, DRAINED_PREFIX, Drain, DrainInterceptor
from depot_api.api.errors import ErrorMapping
from depot_api.api.guard import RequestGuard
from depot_api.api.json_codec import LenientKeysJSONCodec
from depot_api.api.limits import Limits, RateLimiter, StreamLimiter
from depot_api.api.machine_service import MachineServiceImpl
from depot_api.api.organization_service import OrganizationServiceImpl
from depot_api.api.project_service import ProjectServiceImpl
from depot_api.api.refusals import Catalog, connect_error, explaining_refusals
from depot_api.api.seed_endpoint import SeedGetEndpoint
from depot_api.config import Settings
from depot_api.gen.depot.build.v1 import build_connect, build_pb
from depot_api.gen.depot.buildkit.v1 import buildkit_connect, buildkit_pb
from depot_api.gen.depot.cli.v1 import build_connect as cli_build_connect
from depot_api.gen.depot.cli.v1 import build_pb as cli_build_pb
from depot_api.gen.depot.cli.v1 import push_connect, push_pb
from depot_api.gen.depot.cli.v1beta1 import login_connect, login_pb, projects_connect, projects_pb
from depot_api.gen.depot.core.v1 import (
    build_connect as core_build_connect,
)
from depot_api.gen.depot.core.v1 import (
    build_pb as core_build_pb,
)
from depot_api.gen.depot.core.v1 import (
    org_connect,
    org_pb,
    project_connect,
    project_pb,
)
from depot_api.gen.depotapi.machine.v1 import machine_connect, machine_pb
from depot_api.store import open_store
from depot_api.store.errors import StoreUnavailable
from depot_api.wiring import Domain, build_domain

log = logging.getLogger("depot_api")

_SWEEP_EVERY_SECONDS = 5.0
# How often a worker looks for the supervisor's request to drain (see _watch_for_drain).
_DRAIN_POLL_SECONDS = 0.2
# A worker's standard input: the supervisor's end of it closes only when the supervisor dies.
_LIFELINE = 0
# How soon a client that went away mid-call is noticed (see _guarded). Each waiting stream
# polls this often: 1 000 waiting GetEndpoint streams cost 1 000 wake-ups a second at 1 s.
_DISCONNECT_POLL_SECONDS = 5.0
# The HTTP/JSON view's OpenAPI document (package data; tests/test_openapi.py keeps it true),
# read once: it is served as is.
_OPENAPI_YAML = resources.files("depot_api").joinpath("openapi.yaml").read_bytes()
# The paths that are not RPCs.
_PLAIN_ROUTES = ("/healthz", "/readyz", "/openapi.yaml")


def create_app(settings: Settings, domain: Domain | None = None) -> DepotAPI:
    """The application over the settings' database (opened lazily, on first use)."""
    if domain is None:
        domain = build_domain(open_store(settings.database_url), settings)
    return DepotAPI(domain, settings)


class DepotAPI:
    def __init__(self, domain: Domain, settings: Settings) -> None:
        self.domain = domain
        self.limits = limits = Limits(
            RateLimiter(settings.rate_limit, settings.rate_burst),
            StreamLimiter(settings.max_streams_per_token),
        )
        self.drain = Drain()
        # The guard first: the drain runs calls in tasks that must see the caller it found.
        options: dict[str, Any] = {
            "interceptors": [
                RequestGuard(domain.authenticator, limits),
                DrainInterceptor(self.drain),
            ],
            "read_max_bytes": settings.max_message_bytes,
            "codecs": [proto_binary_codec(), LenientKeysJSONCodec()],
        }
        machine_options = {
            **options,
            "interceptors": [
                RequestGuard(domain.authenticator, limits, machines=True),
                DrainInterceptor(self.drain),
            ],
        }
        services: list[Any] = [
            project_connect.ProjectServiceASGIApplication(
                ProjectServiceImpl(domain.projects, domain.tokens), **options
            ),
            build_connect.BuildServiceASGIApplication(BuildServiceImpl(domain.builds), **options),
            core_build_connect.BuildServiceASGIApplication(
                CoreBuildServiceImpl(domain.builds), **options
            ),
            org_connect.OrganizationServiceASGIApplication(
                OrganizationServiceImpl(domain.organizations), **options
            ),
            buildkit_connect.BuildKitServiceASGIApplication(
                BuildKitServiceImpl(domain.endpoints), **options
            ),
            machine_connect.MachineServiceASGIApplication(
                MachineServiceImpl(
                    domain.machines, int(settings.machine_heartbeat.total_seconds() * 1000)
                ),
                **machine_options,
            ),
            cli_build_connect.BuildServiceASGIApplication(
                CliBuildServiceImpl(
                    domain.builds, domain.endpoints, domain.build_reports, settings.build_url
                ),
                **options,
            ),
            projects_connect.ProjectsServiceASGIApplication(
                CliProjectsServiceImpl(domain.projects, domain.organizations), **options
            ),
            push_connect.PushServiceASGIApplication(CliPushServiceImpl(), **options),
            # Login is called without a token: it must reach its handler to explain itself.
            login_connect.LoginServiceASGIApplication(
                CliLoginServiceImpl(), **{**options, "interceptors": [ErrorMapping()]}
            ),
        ]
        files = [
            project_pb.desc(),
            build_pb.desc(),
            core_build_pb.desc(),
            org_pb.desc(),
            buildkit_pb.desc(),
            machine_pb.desc(),
            cli_build_pb.desc(),
            projects_pb.desc(),
            push_pb.desc(),
            login_pb.desc(),
        ]
        # Reflection takes no token; its requests are held to the same size limit.
        reflection: dict[str, Any] = {
            "interceptors": [ErrorMapping()],
            "read_max_bytes": settings.max_message_bytes,
        }
        reflections = [
            ServerReflectionASGIApplication(ServerReflectionService(*files), **reflection),
            ServerReflectionAlphaASGIApplication(
                ServerReflectionAlphaService(*files), **reflection
            ),
        ]
        services.extend(reflections)
        self._routes: dict[str, ASGIApp] = {app.path: app for app in services}
        # What each RPC path takes, for the answers to requests that reach none (refusals.py).
        self._catalog = Catalog(files, plain_json=[seed_endpoint.PATH])
        for app in reflections:  # one bidi method, named by the reflection protocol
            self._catalog.add_service(
                app.path.removeprefix("/"), ["ServerReflectionInfo"], "bidi_streaming"
            )
        self._seed_get_endpoint = SeedGetEndpoint(
            domain, limits, self.drain, settings.max_message_bytes
        )
        self._drain_dir = settings.drain_dir
        self._drain_watch: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._liveness_window = settings.liveness_window.total_seconds()
        self._max_bytes = settings.max_message_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            # Counted so that a draining process knows when its last call has ended.
            self._in_flight += 1
            try:
                await self._http(scope, receive, send)
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
            body = await _read_body_first(receive, self._max_bytes)
            await self._seed_get_endpoint(scope, _guarded(receive, body), send)
        elif service is not None:
            body = []
            if _reads_body_first(scope):
                body = await _read_body_first(receive, self._max_bytes)
            send = explaining_refusals(self._catalog, scope, send)
            await service(_utf8_headers(scope), _guarded(receive, body), send)
        elif path in _PLAIN_ROUTES and scope["method"] not in ("GET", "HEAD"):
            await _read_body_first(receive, self._max_bytes)  # answer cleanly; see there
            message = f"{path} is read with GET (or HEAD), not {scope['method']}\n"
            await _plain(send, 405, message.encode(), headers=[(b"allow", b"GET, HEAD")])
        elif path == "/healthz":
            await _plain(send, 200, b"ok\n")
        elif path == "/readyz":
            await self._ready(send)
        elif path == "/openapi.yaml":
            await _plain(send, 200, _OPENAPI_YAML, b"application/yaml")
        else:
            await _read_body_first(receive, self._max_bytes)  # answer cleanly; see there
            await self._not_found(path, send)

    async def _not_found(self, path: str, send: Send) -> None:
        """404 naming the path: a Connect error for an RPC's path, plain text elsewhere."""
        if self._catalog.is_rpc_path(path):
            error = connect_error("unimplemented", self._catalog.not_found(path))
            await _plain(send, 404, error, b"application/json")
            return
        message = (
            f"{path} not found: RPCs are POSTed to /package.Service/Method; "
            f"the other paths are {', '.join(_PLAIN_ROUTES)}\n"
        )
        await _plain(send, 404, message.encode("utf-8", "backslashreplace"))

    async def _ready(self, send: Send) -> None:
        if self.drain.draining:  # so that a load balancer sends new calls elsewhere
            await _plain(send, 503, b"shutting down\n")
            return
        try:
            await self.domain.store.ping()
        except StoreUnavailable:
            await _plain(send, 503, b"database unavailable\n")
            return
        await _plain(send, 200, b"ready\n")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._sweeper = asyncio.create_task(self._sweep_silent_builds())
                if self._drain_dir is not None:  # run by a supervisor (server.py)
                    self._drain_watch = asyncio.create_task(self._watch_for_drain(self._drain_dir))
                    asyncio.get_running_loop().add_reader(_LIFELINE, _supervisor_gone)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._drain_dir is not None:
                    asyncio.get_running_loop().remove_reader(_LIFELINE)
                for task in (self._sweeper, self._drain_watch):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                await self.domain.endpoints.close()
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


def _reads_body_first(scope: Scope) -> bool:
    """A Connect unary call (its body is one message), or a request that no protocol takes,
    which is refused at once (415). Streams (application/connect+…, gRPC, gRPC-Web) are read
    as they come."""
    return not media_type(scope).startswith((b"application/connect+", b"application/grpc"))


def _supervisor_gone() -> None:
    """The supervisor died without stopping this worker (it was killed outright): go too, at
    once, so that the port is free for the next server.

    A worker ignores SIGTERM (worker.py), and with it the signal Envoy asks Linux to send when
    its parent dies; so the supervisor gives it a pipe as standard input instead, and never
    writes to it: the pipe ends (it becomes readable) only when the supervisor is gone.
    """
    log.error("the supervisor is gone: stopping at once")
    os._exit(1)


async def _read_body_first(receive: Receive, limit: int) -> list[ASGIMessage]:
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


def _utf8_headers(scope: Scope) -> Scope:
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


def _guarded(receive: Receive, already_read: list[ASGIMessage]) -> Receive:
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

    Messages in already_read (see _read_body_first) are returned first.
    """
    body_done = False

    async def receive_once() -> ASGIMessage:
        pending = receive()
        if isinstance(pending, asyncio.Future):  # pyvoy's: a plain future, cheap to shield
            return await asyncio.shield(pending)
        return await pending

    async def guarded_receive() -> ASGIMessage:
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

    return guarded_receive


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
