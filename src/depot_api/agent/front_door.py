"""The machine's front door: the only way in to its BuildKit daemon.

Each connection on --listen is taken through these gates, and forwarded byte for byte to the
daemon only past the last one; the daemon itself listens on nothing but a unix socket.

1. TLS with the server certificate of the binding the agent serves, requiring a client
   certificate that the binding's project CA signed and that has not expired. No binding, no
   certificate, another project's certificate, or not TLS at all: refused.
2. The certificate names a build (its URI SAN, urn:depot-api:build:<id>).
3. The client speaks first, and BuildKit speaks only gRPC: the first 24 bytes must be the
   HTTP/2 connection preface, within the handshake timeout. Silence or garbage: refused.
4. The server admits the build on this machine now (AdmitConnection): it is running, within
   its deadline, and bound to this machine under this binding.

Every connection, admitted or not, is recorded (`ConnectionLog`) for the server. Admitted
connections are asked about again while they last (`recheck`): a build that ended or was
canceled loses its connections, and so does every connection of a binding the agent no
longer serves.

With build insights on, each admitted connection is also read, as forwarded, by a passive
HTTP/2 reader (build_status.py, http2_reader.py): the status BuildKit sends the build's client
is kept for the server. Reading never changes, delays or breaks the forwarding.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from depot_api.agent.build_status import Insights
from depot_api.agent.daemons import Daemon, DaemonFailed
from depot_api.agent.splice import Counts, splice

log = logging.getLogger("depot_api.agent")

_BUILD_URI_PREFIX = "urn:depot-api:build:"
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_BUFFER = 1 << 18

# Answers "" to admit, else the refusal in one line; raises AdmissionUnknown when the server
# cannot be asked.
Gatekeeper = Callable[[str, str], Awaitable[str]]


class AdmissionUnknown(Exception):
    """The server could not be asked about a build; str() says why."""


@dataclass(frozen=True)
class Door:
    """What the front door serves: one binding's TLS material and its daemon."""

    binding_id: str
    tls: ssl.SSLContext
    daemon: Daemon


def tls_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """Server TLS for a binding: its certificate, and client certificates from its CA only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    return context


@dataclass
class Connection:
    """One client connection, as reported to the server."""

    id: str
    peer: str
    binding_id: str
    opened_at: float  # epoch seconds
    build_id: str = ""
    admitted: bool = False
    refusal: str = ""
    closed_at: float | None = None
    counts: Counts = field(default_factory=Counts)
    reported_at: float = 0.0  # monotonic, of the last interim report


class ConnectionLog:
    """Connections to report: every one once it ended, and open ones now and then.

    Bounded: while the server cannot be reached, the oldest ended connections are dropped
    first (and counted in the log), so a flood of refused connections cannot fill memory."""

    def __init__(self, *, limit: int = 10_000, interim_every: float = 30.0) -> None:
        self._ended: list[Connection] = []
        self._open: dict[str, Connection] = {}
        self._limit = limit
        self._interim_every = interim_every
        self._dropped = 0

    def opened(self, connection: Connection) -> None:
        connection.reported_at = time.monotonic()
        self._open[connection.id] = connection

    def closed(self, connection: Connection) -> None:
        connection.closed_at = time.time()
        self._open.pop(connection.id, None)
        self._ended.append(connection)
        if len(self._ended) > self._limit:
            excess = len(self._ended) - self._limit
            del self._ended[:excess]
            self._dropped += excess
            if self._dropped in (excess, 1) or self._dropped % 1000 < excess:
                log.warning(
                    "%d connection reports dropped so far: the server has not taken them",
                    self._dropped,
                )

    def due(self) -> list[Connection]:
        """What to report now (taken off the log: give it back with `retry` on failure)."""
        now = time.monotonic()
        interim = [
            c
            for c in self._open.values()
            if c.admitted and now - c.reported_at >= self._interim_every
        ]
        for connection in interim:
            connection.reported_at = now
        due, self._ended = self._ended, []
        return due + interim

    def retry(self, connections: list[Connection]) -> None:
        ended = [c for c in connections if c.closed_at is not None]
        self._ended[:0] = ended


class FrontDoor:
    def __init__(
        self,
        listen: str,
        admit: Gatekeeper,
        connections: ConnectionLog,
        *,
        handshake_timeout: float = 10.0,
        max_waiting: int = 256,
        insights: Insights | None = None,
    ) -> None:
        host, port = listen.rsplit(":", 1)
        self._host = host.strip("[]") or None
        self._port = int(port)
        self._admit = admit
        self._connections = connections
        self._handshake_timeout = handshake_timeout
        self._insights = insights
        # Connections not yet past the gates: each costs a socket and a TLS state for up to
        # the handshake timeout, so a flood of them is refused at once beyond this many.
        self._max_waiting = max_waiting
        self._waiting = 0
        self._door: Door | None = None
        self._server: asyncio.Server | None = None
        # Admitted connections being forwarded, with the task that forwards each.
        self._forwarding: dict[str, tuple[Connection, asyncio.Task[None]]] = {}
        # Every connection's task, held so that none is garbage-collected while it runs.
        self._tasks: set[asyncio.Task[None]] = set()

    def _arrived(self, transport: asyncio.Transport) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(transport))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def open(self) -> None:
        """Listen; raises OSError when the address cannot be had."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Arrival(self._arrived), self._host, self._port, reuse_address=True
        )

    def use(self, door: Door | None) -> None:
        """Serve this binding from now on (None: refuse every connection). Connections of
        any other binding are cut at once: their project no longer owns this machine."""
        self._door = door
        keep = door.binding_id if door is not None else None
        for connection, task in list(self._forwarding.values()):
            if connection.binding_id != keep:
                connection.refusal = "cut: the machine serves another binding now"
                task.cancel()

    async def recheck(self) -> None:
        """Ask again about every build with forwarded connections, all at once; cut those the
        server refuses now. A server that cannot be asked cuts nothing: a build in flight is
        not failed for the server's moment of trouble."""
        builds = {(c.binding_id, c.build_id) for c, _ in self._forwarding.values()}
        await asyncio.gather(*(self._recheck(binding, build) for binding, build in builds))

    async def _recheck(self, binding_id: str, build_id: str) -> None:
        try:
            refusal = await self._admit(binding_id, build_id)
        except AdmissionUnknown as e:
            log.debug("build %s not asked about again: %s", build_id, e)
            return
        if refusal:
            for connection, task in list(self._forwarding.values()):
                if connection.build_id == build_id:
                    log.info(
                        "cutting connection %s of build %s: %s", connection.peer, build_id, refusal
                    )
                    connection.refusal = f"cut: {refusal}"
                    task.cancel()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for _, task in list(self._forwarding.values()):
            task.cancel()
        if self._forwarding:
            await asyncio.wait([task for _, task in self._forwarding.values()], timeout=5)
        if self._insights is not None:
            await self._insights.close()

    async def _serve(self, transport: asyncio.Transport) -> None:
        door = self._door
        connection = Connection(
            id=secrets.token_hex(8),
            peer=_peer(transport),
            binding_id=door.binding_id if door is not None else "",
            opened_at=time.time(),
        )
        self._connections.opened(connection)
        writer: asyncio.StreamWriter | None = None
        try:
            if self._waiting >= self._max_waiting:
                connection.refusal = f"{self._waiting} connections are already at the gates"
            else:
                self._waiting += 1
                try:
                    streams = await self._tls(door, connection, transport)
                    if streams is not None:
                        reader, writer = streams
                        connection.refusal = await self._gates(door, connection, reader, writer)
                finally:
                    self._waiting -= 1
            if connection.refusal:
                log.info("refused %s: %s", connection.peer, connection.refusal)
                # At once, without a goodbye: a transport whose TLS start failed never
                # finishes a graceful close.
                (writer.transport if writer is not None else transport).abort()
                return
            assert door is not None
            assert writer is not None
            try:
                daemon = await door.daemon.connect()
            except (OSError, DaemonFailed) as e:
                connection.refusal = f"the daemon cannot be reached: {e}"
                log.warning("build %s: %s", connection.build_id, connection.refusal)
                writer.transport.abort()
                return
            connection.admitted = True
            daemon[1].write(_HTTP2_PREFACE)
            connection.counts.from_client = len(_HTTP2_PREFACE)
            task = asyncio.current_task()
            assert task is not None
            self._forwarding[connection.id] = (connection, task)
            insights = self._insights
            status = (
                insights.reader(connection.build_id, door.daemon.control.status)
                if insights is not None
                else None
            )
            try:
                await splice(
                    (reader, writer),
                    daemon,
                    connection.counts,
                    None if status is None else (status.from_client, status.from_daemon),
                )
            except asyncio.CancelledError:
                if not connection.refusal.startswith("cut:"):
                    raise  # the agent is stopping
            finally:
                del self._forwarding[connection.id]
                if insights is not None and status is not None:
                    insights.closed(connection.build_id, status)
        finally:
            transport.abort()  # after the splice or a refusal, already closed: a no-op
            self._connections.closed(connection)

    async def _tls(
        self, door: Door | None, connection: Connection, transport: asyncio.Transport
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The connection's streams over TLS, or None with the refusal set."""
        if door is None:
            connection.refusal = "no project is bound to this machine"
            return None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_BUFFER, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            # asyncio's own handshake timeout aborts with a ConnectionAbortedError; this one
            # comes first and says what happened.
            tls = await asyncio.wait_for(
                loop.start_tls(
                    transport,
                    protocol,
                    door.tls,
                    server_side=True,
                    ssl_handshake_timeout=self._handshake_timeout + 5,
                ),
                self._handshake_timeout,
            )
        except TimeoutError:
            connection.refusal = f"no TLS handshake within {self._handshake_timeout:g} s"
            return None
        except ssl.SSLError as e:
            connection.refusal = _tls_refusal(e)
            return None
        except (ConnectionError, OSError) as e:
            connection.refusal = (
                f"the client went away during the TLS handshake ({e.__class__.__name__})"
            )
            return None
        if tls is None:  # the connection closed as the handshake ended
            connection.refusal = "the client went away during the TLS handshake"
            return None
        protocol.connection_made(tls)  # start_tls leaves that to its caller
        return reader, asyncio.StreamWriter(tls, protocol, reader, loop)

    async def _gates(
        self,
        door: Door | None,
        connection: Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> str:
        """The refusal, or "" once every gate past TLS but the daemon's is passed."""
        assert door is not None
        build_id = _build_id(writer.get_extra_info("peercert"))
        if not build_id:
            return "the client certificate names no build"
        connection.build_id = build_id
        try:
            preface = await asyncio.wait_for(
                reader.readexactly(len(_HTTP2_PREFACE)), self._handshake_timeout
            )
        except TimeoutError:
            return f"the client sent nothing within {self._handshake_timeout:g} s of its handshake"
        except asyncio.IncompleteReadError as e:
            return f"the client closed after {len(e.partial)} bytes, before speaking HTTP/2"
        except (ConnectionError, OSError, ssl.SSLError) as e:
            return f"the connection broke before the client spoke ({e.__class__.__name__})"
        if preface != _HTTP2_PREFACE:
            return "the client does not speak HTTP/2 (gRPC), the only protocol BuildKit serves"
        try:
            return await self._admit(door.binding_id, build_id)
        except AdmissionUnknown as e:
            # Fail closed: a build the server cannot vouch for does not get in.
            return f"the server could not be asked ({e})"


def _tls_refusal(e: ssl.SSLError) -> str:
    if isinstance(e, ssl.SSLCertVerificationError) or e.reason == "CERTIFICATE_VERIFY_FAILED":
        why = getattr(e, "verify_message", "") or "not signed by this machine's project CA"
        return f"the client certificate is refused: {why}"
    if e.reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED"):
        return "the client sent no certificate"
    if e.reason in (
        "HTTP_REQUEST",
        "WRONG_VERSION_NUMBER",
        "UNSUPPORTED_PROTOCOL",
        "RECORD_LAYER_FAILURE",
    ):
        return "the client does not speak TLS"
    return f"TLS handshake failed: {e.reason or e}"


def _build_id(peercert: object) -> str:
    """The build a verified client certificate names, from its URI SAN."""
    if not isinstance(peercert, dict):
        return ""
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "URI" and value.startswith(_BUILD_URI_PREFIX):
            return str(value[len(_BUILD_URI_PREFIX) :])
    return ""


class _Arrival(asyncio.Protocol):
    """A new connection, of which nothing is read until its TLS starts: bytes a stream had
    read ahead of the handshake would never reach TLS."""

    def __init__(self, arrived: Callable[[asyncio.Transport], None]) -> None:
        self._arrived = arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self._arrived(transport)


def _peer(transport: asyncio.BaseTransport) -> str:
    address = transport.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        host = f"[{address[0]}]" if ":" in str(address[0]) else str(address[0])
        return f"{host}:{address[1]}"
    return str(address or "")
