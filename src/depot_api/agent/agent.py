"""`depot-api agent`: runs on a BuildKit host, keeps its daemon as the server wants it, and is
the machine's front door (front_door.py): clients reach the daemon only through the agent.

Every heartbeat reports what runs here and answers what should: nothing (Idle), a BuildKit
daemon for one project (Assignment), or nothing ever again (Stop, after a drain). For an
assignment the agent writes the binding's certificate, key and the project's CA (mode 0600),
which its front door serves TLS with, and readies the daemon (daemons.py): either a
`buildkitd` it starts on a unix socket, with the project's cache directory and garbage
collection that follows the project's cache policy, or an existing Docker Engine's BuildKit.
A new binding restarts the daemon; a new cache generation starts from an empty cache.
Readiness is BuildKit's own answer (ListWorkers), and the cache size its DiskUsage.

Failures that may pass (the server unreachable, the daemon exiting or not starting) are
retried with growing delays and logged when they start, change and end, not at every attempt;
an agent whose daemon program is missing waits for it without registering. What no retry can
fix (the token refused, a server that is not depot-api) raises Refused.

State directory layout:

    <state>/bindings/<binding>/{server.pem,server-key.pem,ca.pem,buildkitd.toml}
    <state>/cache/<project>/            buildkitd's --root
    <state>/cache/<project>/.generation the cache generation that directory belongs to
    <state>/run/buildkitd.sock          buildkitd's socket (the only one it listens on)
    <state>/run/engine.sock             with a Docker Engine: the agent's own way to its BuildKit
    <state>/engine-cache                with a Docker Engine: the project and cache generation
                                        its build cache belongs to
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from depot_api import tracing
from depot_api.agent.build_status import DEFAULT_CAP_BYTES, Batch, Insights, StatusQueue
from depot_api.agent.control import DaemonUnavailable
from depot_api.agent.daemons import (
    Buildkitd,
    Daemon,
    DaemonFailed,
    DockerEngine,
    open_engine_buildkit,
    reset_engine_cache,
)
from depot_api.agent.front_door import (
    AdmissionUnknown,
    Connection,
    ConnectionLog,
    Door,
    FrontDoor,
    tls_context,
)
from depot_api.agent.retrying import Backoff, Trouble
from depot_api.gen.depotapi.machine.v1 import machine_pb as pb
from depot_api.gen.depotapi.machine.v1.machine_connect import MachineServiceClient

log = logging.getLogger("depot_api.agent")

_GIB = 1 << 30
_DISK_EVERY_SECONDS = 30.0
# How often the builds of forwarded connections are asked about again.
_RECHECK_EVERY_SECONDS = 5.0
# A buildkitd that has not answered this long after its start is reported as not answering.
_DAEMON_START_GRACE = 30.0
# A server that accepts the connection and then never answers must not hang the agent.
_CALL_TIMEOUT_MS = 10_000
# Retry delays, in seconds (first, cap), doubling while the failure lasts. Registering retries
# up to every 30 s so agents find a restarted server soon; the daemon, whose failures usually
# need a person, up to every 60 s. A daemon that has accepted connections for a minute is
# healthy: its next failure is retried after a second again.
_REGISTER_BACKOFF = (1.0, 30.0)
_DAEMON_BACKOFF = (1.0, 60.0)
_DAEMON_HEALTHY_AFTER = 60.0
_PR_SET_PDEATHSIG = 1
_REPORTS_PER_CALL = 500  # what the server takes in one ReportConnections
# Build status goes to the server this often while it answers; while it does not, retries
# back off up to the cap, and the queue (bounded) holds what comes meanwhile.
_STATUS_EVERY_SECONDS = 0.5
_STATUS_BACKOFF = (1.0, 10.0)


class Refused(Exception):
    """The server turned the agent away for good (its token, its registration), or is not
    depot-api at all: no retry can help. str() is the one line to show."""


@dataclass(frozen=True)
class AgentConfig:
    server: str
    token: str
    platform: str  # amd64 | arm64
    advertise: str  # host:port clients reach
    listen: str  # host:port the front door binds
    buildkitd: str
    state_dir: Path
    capacity: int = 1
    # Front an existing Docker Engine's BuildKit through this API socket, instead of
    # starting buildkitd.
    docker_socket: Path | None = None
    # How long a client may take to complete TLS and send its first bytes.
    handshake_timeout: float = 10.0
    # Read the status BuildKit sends each build's client, and report it (build_status.py).
    build_insights: bool = True
    insights_buffer_bytes: int = DEFAULT_CAP_BYTES

    @property
    def daemon_name(self) -> str:
        if self.docker_socket is not None:
            return f"the Docker Engine at {self.docker_socket}"
        return "buildkitd"


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self._config = config
        self._daemon: Daemon | None = None
        self._machine_id = ""
        self._interval = 1.0
        self._disk_used = 0
        self._disk_measured_at = -_DISK_EVERY_SECONDS
        self._headers = {"authorization": f"Bearer {config.token}"}
        self._registrations = Backoff(*_REGISTER_BACKOFF)
        # What keeps the daemon from running ("" when nothing), reported in the heartbeats;
        # after a failure no daemon starts before _restart_at (event loop time).
        self._daemon_error = ""
        self._restart_at = 0.0
        self._restarts = Backoff(*_DAEMON_BACKOFF)
        self._daemon_trouble = Trouble(log)
        self._server_trouble = Trouble(log)
        self._door_trouble = Trouble(log)
        self._connections = ConnectionLog()
        self._status = StatusQueue(config.insights_buffer_bytes)
        self._status_trouble = Trouble(log)
        self._door: FrontDoor | None = None
        self._rechecked_at = 0.0

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until stop is set or the server says Stop; returns the exit status.

        Raises Refused when the server turns the agent away for good."""
        if self._config.docker_socket is None and not await self._find_buildkitd(stop):
            return 0
        async with MachineServiceClient(self._config.server, timeout_ms=_CALL_TIMEOUT_MS) as client:
            self._door = FrontDoor(
                self._config.listen,
                lambda binding_id, build_id: self._admit(client, binding_id, build_id),
                self._connections,
                handshake_timeout=self._config.handshake_timeout,
                insights=Insights(self._status) if self._config.build_insights else None,
            )
            reporter = asyncio.create_task(self._report_build_status_forever(client, stop))
            try:
                while not stop.is_set():
                    if not self._machine_id:
                        retry_in = await self._register(client)
                        if retry_in is not None:
                            await _wait(stop, retry_in)
                            continue
                    # Once registered: an agent the server turns away says one line, not two.
                    await self._open_door()
                    self._notice_exit()
                    desired = await self._heartbeat(client)
                    if desired is not None and await self._converge(desired):
                        return 0
                    await self._report_connections(client)
                    await self._recheck_connections()
                    await _wait(stop, self._interval)
            finally:
                reporter.cancel()
                await self._door.close()
                await self._stop_daemon()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._report_connections(client), 2.0)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._report_build_status(client), 2.0)
        return 0

    async def _open_door(self) -> None:
        """Listen on --listen, unless already; a failure is reported and tried again."""
        assert self._door is not None
        if self._door.listening:
            return
        try:
            await self._door.open()
        except OSError as e:
            self._door_trouble.report(
                str(e.errno),
                f"cannot listen on {self._config.listen} ({e.strerror or e}); this machine gets "
                "no builds until it can, and the agent keeps trying",
            )
            return
        self._door_trouble.clear(f"listening on {self._config.listen} again")
        log.info("front door listening on %s", self._config.listen)

    @contextlib.contextmanager
    def _traced(self, method: str) -> Iterator[dict[str, str]]:
        """The headers of one machine call: with tracing on (tracing.py), the call is a span
        and its `traceparent` goes along, so that the server's span of it joins this trace."""
        if not tracing.enabled():
            yield self._headers
            return
        headers = dict(self._headers)
        with tracing.client_call_span(f"depotapi.machine.v1.MachineService/{method}", headers):
            yield headers

    async def _admit(self, client: MachineServiceClient, binding_id: str, build_id: str) -> str:
        """The server's word on a build's connection: "" to admit, else the refusal; raises
        AdmissionUnknown when the server cannot be asked."""
        if not self._machine_id:
            return "the agent is not registered yet"
        try:
            with self._traced("AdmitConnection") as headers:
                answer = await client.admit_connection(
                    pb.AdmitConnectionRequest(
                        machine_id=self._machine_id, binding_id=binding_id, build_id=build_id
                    ),
                    headers=headers,
                    timeout_ms=5_000,
                )
        except ConnectError as e:
            raise AdmissionUnknown(f"{e.code.value}: {e.message}") from None
        if answer.admitted:
            return ""
        return answer.refusal or "refused by the server"

    async def _report_connections(self, client: MachineServiceClient) -> None:
        due = self._connections.due()
        if not due or not self._machine_id:
            self._connections.retry(due)
            return
        try:
            for start in range(0, len(due), _REPORTS_PER_CALL):
                batch = due[start : start + _REPORTS_PER_CALL]
                with self._traced("ReportConnections") as headers:
                    await client.report_connections(
                        pb.ReportConnectionsRequest(
                            machine_id=self._machine_id,
                            connections=[_connection_report(c) for c in batch],
                        ),
                        headers=headers,
                    )
                due = due[start + _REPORTS_PER_CALL :]
        except ConnectError as e:
            if e.code == Code.INVALID_ARGUMENT:
                # Sending the same batch again would be refused again, forever.
                log.warning(
                    "the server refused %d connection reports (%s); they are dropped",
                    len(due),
                    e.message,
                )
                return
            log.debug("connection reports not taken (%s: %s); kept for later", e.code.value, e)
            self._connections.retry(due)

    async def _report_build_status_forever(
        self, client: MachineServiceClient, stop: asyncio.Event
    ) -> None:
        """Apart from the heartbeats, so that a server slow to take status delays neither them
        nor, through them, anything else; the front door only ever adds to the queue."""
        backoff = Backoff(*_STATUS_BACKOFF)
        while not stop.is_set():
            delay = _STATUS_EVERY_SECONDS
            if self._machine_id and not await self._report_build_status(client):
                delay = backoff.next()
            else:
                backoff.reset()
            await _wait(stop, delay)

    async def _report_build_status(self, client: MachineServiceClient) -> bool:
        """Send what the queue holds, a call per build's batch; False when the server did not
        take it (it stays queued, at the front, for the next attempt)."""
        batches = self._status.take()
        for n, batch in enumerate(batches):
            try:
                with self._traced("ReportBuildStatus") as headers:
                    await client.report_build_status(
                        pb.ReportBuildStatusRequest(
                            machine_id=self._machine_id, builds=[_status_batch(batch)]
                        ),
                        headers=headers,
                    )
            except asyncio.CancelledError:
                # Stopping: what was not acknowledged goes back, for the last report.
                for unsent in batches[n:]:
                    self._status.retry(unsent)
                raise
            except ConnectError as e:
                if e.code in (Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.PERMISSION_DENIED):
                    # Sending the same batch again would be refused again, forever.
                    log.warning(
                        "the server refused build %s's status (%s: %s); %d messages dropped",
                        batch.build_id,
                        e.code.value,
                        e.message,
                        len(batch.messages),
                    )
                    self._status.sent(batch)
                    continue
                self._status_trouble.report(
                    e.code.value,
                    f"build status not taken ({e.code.value}: {e.message}); kept, up to "
                    f"{self._config.insights_buffer_bytes >> 20} MiB, and sent again",
                )
                for unsent in batches[n:]:
                    self._status.retry(unsent)
                return False
            self._status.sent(batch)
        if batches:
            self._status_trouble.clear("the server takes build status again")
        return True

    async def _recheck_connections(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._door is not None and now - self._rechecked_at >= _RECHECK_EVERY_SECONDS:
            self._rechecked_at = now
            await self._door.recheck()

    async def _find_buildkitd(self, stop: asyncio.Event) -> bool:
        """Wait, without registering, while the daemon's program cannot be found: a machine
        registered without it would be given a project whose builds then wait for nothing.
        False when stopped while waiting."""
        program = self._config.buildkitd
        if shutil.which(program):
            return True
        log.warning(
            "--buildkitd %s: no such executable program%s. Install BuildKit, or pass "
            "--buildkitd PATH (or DEPOT_API_AGENT_BUILDKITD), or --docker-socket PATH to use "
            "a Docker Engine's BuildKit; until then the agent waits, unregistered, and this "
            "host gets no builds",
            program,
            "" if os.sep in program else " on PATH",
        )
        backoff = Backoff(*_DAEMON_BACKOFF)
        while True:
            delay = backoff.next()
            log.debug("looking for %s again in %g s", program, delay)
            await _wait(stop, delay)
            if stop.is_set():
                return False
            if found := shutil.which(program):
                log.info("found buildkitd: %s", found)
                return True

    async def _register(self, client: MachineServiceClient) -> float | None:
        """Register; None once registered, else the seconds to wait before trying again."""
        server = self._config.server
        try:
            with self._traced("Register") as headers:
                answer = await client.register(
                    pb.RegisterRequest(
                        platform=pb.Platform.ARM64
                        if self._config.platform == "arm64"
                        else pb.Platform.AMD64,
                        endpoint=self._config.advertise,
                        capacity=self._config.capacity,
                    ),
                    headers=headers,
                )
        except ConnectError as e:
            cause = _refusal(e, server)
            if cause is not None:
                raise Refused(f"{cause} ({e.code.value}: {e.message})") from None
            delay = self._registrations.next()
            self._server_trouble.report(
                e.code.value,
                f"cannot register with {server} ({e.code.value}: {e.message}); trying again "
                f"in {delay:g} s, then less often (up to every {self._registrations.cap:g} s)",
            )
            return delay
        self._registrations.reset()
        self._server_trouble.clear(f"{server} answers again")
        self._machine_id = answer.machine_id
        self._interval = max(answer.heartbeat_interval_ms, 100) / 1000
        log.info(
            "registered as machine %s (%s at %s)",
            self._machine_id,
            self._config.platform,
            self._config.advertise,
        )
        return None

    async def _heartbeat(self, client: MachineServiceClient) -> pb.HeartbeatResponse | None:
        daemon = self._daemon
        ready, error = await self._readiness(daemon)
        try:
            with self._traced("Heartbeat") as headers:
                answer = await client.heartbeat(
                    pb.HeartbeatRequest(
                        machine_id=self._machine_id,
                        running_binding_id=""
                        if daemon is None or daemon.exited
                        else daemon.binding_id,
                        buildkit_ready=ready,
                        disk_used_bytes=await self._disk_usage(daemon if ready else None),
                        buildkit_error=error,
                    ),
                    headers=headers,
                )
        except ConnectError as e:
            if e.code == Code.NOT_FOUND:
                log.warning("the server does not know this machine any more; registering again")
                self._machine_id = ""
            elif e.code in (Code.UNAUTHENTICATED, Code.PERMISSION_DENIED):
                # The token was revoked or has expired: it will not work again.
                raise Refused(
                    f"{self._config.server} no longer accepts the machine token "
                    f"({e.code.value}: {e.message})"
                ) from None
            else:
                self._server_trouble.report(
                    e.code.value,
                    f"heartbeat failed ({e.code.value}: {e.message}); the daemon stays as it "
                    f"is, and heartbeats go on every {self._interval:g} s",
                )
            return None
        self._server_trouble.clear(f"{self._config.server} answers heartbeats again")
        return answer

    async def _readiness(self, daemon: Daemon | None) -> tuple[bool, str]:
        """Whether builds may come (BuildKit names a worker, and the front door listens), and
        what keeps them from coming ("" when nothing, or nothing worth saying yet)."""
        if self._door is None or not self._door.listening:
            return (
                False,
                f"cannot listen on {self._config.listen}" if self._door_trouble.current else "",
            )
        if daemon is None:
            # Bound, while its start keeps failing: that failure keeps builds away (an idle
            # agent has none: _converge forgets it, an earlier binding's says nothing now).
            if self._daemon_error:
                return False, self._daemon_error
            # Idle. An engine that is not there is worth saying now: no project should be
            # bound to a machine that cannot build for it.
            if self._config.docker_socket is not None:
                return False, await self._engine_absence()
            return False, ""
        if daemon.exited:
            return False, self._daemon_error
        try:
            workers = await daemon.control.workers()
        except DaemonUnavailable as e:
            loop = asyncio.get_running_loop()
            if (
                isinstance(daemon, Buildkitd)
                and loop.time() - daemon.started_at < _DAEMON_START_GRACE
            ):
                return False, ""  # still starting
            error = f"{self._config.daemon_name} does not answer: {e}"
            self._daemon_trouble.report(error, f"{error}; asking again with every heartbeat")
            self._daemon_error = error
            return False, error
        if workers == 0:
            error = f"{self._config.daemon_name} names no BuildKit workers; it cannot build"
            self._daemon_trouble.report(error, error)
            self._daemon_error = error
            return False, error
        self._daemon_runs(daemon)
        return True, ""

    async def _engine_absence(self) -> str:
        """Why the Docker Engine cannot build for this machine now ("" when it can)."""
        assert self._config.docker_socket is not None
        try:
            _, writer = await open_engine_buildkit(self._config.docker_socket)
        except DaemonFailed as e:
            error = str(e)
            self._daemon_trouble.report(
                error, f"{error}; this machine gets no builds, and the agent keeps trying"
            )
            return error
        writer.close()
        self._daemon_trouble.clear(f"{self._config.daemon_name} answers again")
        return ""

    def _daemon_runs(self, daemon: Daemon) -> None:
        """The daemon answers: any earlier failure is over."""
        self._daemon_error = ""
        self._daemon_trouble.clear(
            f"{self._config.daemon_name} is ready again (binding {daemon.binding_id})"
        )
        if asyncio.get_running_loop().time() - daemon.started_at >= _DAEMON_HEALTHY_AFTER:
            self._restarts.reset()

    def _notice_exit(self) -> None:
        """A daemon that exited by itself is a failure: started again after a backoff."""
        daemon = self._daemon
        if daemon is not None and daemon.exited:
            self._daemon = None
            self._daemon_failed(daemon.exit_reason)

    def _daemon_failed(self, error: str) -> None:
        delay = self._restarts.next()
        self._restart_at = asyncio.get_running_loop().time() + delay
        self._daemon_error = error
        self._daemon_trouble.report(
            error,
            f"{error}; starting it again in {delay:g} s, then less often "
            f"(up to every {self._restarts.cap:g} s) while it fails",
        )

    async def _converge(self, desired: pb.HeartbeatResponse) -> bool:
        """Make the daemon match the desired state; True when the agent should exit."""
        choice = desired.desired
        if choice is None or choice.field == "idle":
            await self._stop_daemon()
            self._daemon_error = ""
            return False
        if choice.field == "stop":
            log.info("drained: stopping")
            await self._stop_daemon()
            return True
        assignment = choice.value
        assert isinstance(assignment, pb.HeartbeatResponse.Assignment)
        # A daemon that exited during the heartbeat is a failure too (logged, backed off),
        # not a daemon to replace at once.
        self._notice_exit()
        daemon = self._daemon
        if daemon is not None and daemon.binding_id == assignment.binding_id and not daemon.exited:
            return False
        if not assignment.server_cert:
            return False  # the material comes with the next heartbeat
        if asyncio.get_running_loop().time() < self._restart_at:
            return False  # backing off after a failure
        await self._stop_daemon()
        try:
            self._daemon = await self._start_daemon(assignment)
        except DaemonFailed as e:
            self._daemon_failed(str(e))
        except OSError as e:
            # Reported with the next heartbeats; the server keeps the machine not ready.
            self._daemon_failed(_start_error(self._config.buildkitd, e))
        return False

    async def _start_daemon(self, a: pb.HeartbeatResponse.Assignment) -> Daemon:
        state = self._config.state_dir
        binding_dir = state / "bindings" / a.binding_id
        for old in (state / "bindings").glob("*") if (state / "bindings").exists() else ():
            if old != binding_dir:
                shutil.rmtree(old, ignore_errors=True)
        binding_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert = _write_private(binding_dir / "server.pem", a.server_cert)
        key = _write_private(binding_dir / "server-key.pem", a.server_key)
        ca = _write_private(binding_dir / "ca.pem", a.ca_cert)
        try:
            tls = tls_context(cert, key, ca)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise DaemonFailed(f"the binding's TLS material is unusable: {e}") from None
        # While the daemon keeps failing, each attempt is a debug line only.
        log.log(
            logging.DEBUG if self._daemon_trouble.current else logging.INFO,
            "%s %s for project %s (binding %s)",
            "starting" if self._config.docker_socket is None else "readying",
            self._config.daemon_name,
            a.project_id,
            a.binding_id,
        )
        if self._config.docker_socket is not None:
            daemon: Daemon = await self._ready_engine(a, self._config.docker_socket)
        else:
            daemon = await self._start_buildkitd(a, binding_dir)
        assert self._door is not None
        self._door.use(Door(a.binding_id, tls, daemon))
        return daemon

    async def _start_buildkitd(
        self, a: pb.HeartbeatResponse.Assignment, binding_dir: Path
    ) -> Buildkitd:
        cache = _prepare_cache(self._config.state_dir / "cache" / a.project_id, a.cache_generation)
        config = _write_private(binding_dir / "buildkitd.toml", gc_config(a.keep_gb, a.keep_days))
        socket = self._run_dir() / "buildkitd.sock"
        with contextlib.suppress(FileNotFoundError):
            socket.unlink()
        argv = [
            self._config.buildkitd,
            "--addr", f"unix://{socket}",
            "--root", str(cache),
            "--config", str(config),
        ]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        return Buildkitd(a.binding_id, process, socket, asyncio.get_running_loop().time())

    async def _ready_engine(
        self, a: pb.HeartbeatResponse.Assignment, engine_socket: Path
    ) -> DockerEngine:
        """The engine's BuildKit for this binding: its build cache pruned first when it was
        another project's or an older generation's, so that no project builds on another's."""
        engine = DockerEngine(
            a.binding_id,
            engine_socket,
            self._run_dir() / "engine.sock",
            asyncio.get_running_loop().time(),
        )
        await engine.open()
        marker = self._config.state_dir / "engine-cache"
        wanted = f"{a.project_id} {a.cache_generation}"
        try:
            current = marker.read_text().strip()
        except OSError:
            current = ""
        if current != wanted:
            try:
                freed = await reset_engine_cache(engine)
            except DaemonFailed:
                await engine.stop()
                raise
            log.info(
                "Docker Engine build cache pruned (%s → project %s, generation %s): %d bytes freed",
                current or "unknown",
                a.project_id,
                a.cache_generation,
                freed,
            )
            marker.write_text(wanted + "\n")
        return engine

    def _run_dir(self) -> Path:
        run = self._config.state_dir / "run"
        run.mkdir(parents=True, exist_ok=True, mode=0o700)
        return run

    async def _stop_daemon(self) -> None:
        if self._door is not None:
            self._door.use(None)
        if self._daemon is not None:
            log.info("stopping %s (binding %s)", self._config.daemon_name, self._daemon.binding_id)
            await self._daemon.stop()
            self._daemon = None

    async def _disk_usage(self, daemon: Daemon | None) -> int:
        """The daemon's cache size, measured now and then (the last one while it is down)."""
        loop = asyncio.get_running_loop()
        if daemon is not None and loop.time() - self._disk_measured_at >= _DISK_EVERY_SECONDS:
            self._disk_measured_at = loop.time()
            with contextlib.suppress(DaemonUnavailable):
                self._disk_used = await daemon.control.cache_bytes()
        return self._disk_used


def _connection_report(c: Connection) -> pb.ConnectionReport:
    return pb.ConnectionReport(
        connection_id=c.id,
        build_id=c.build_id,
        binding_id=c.binding_id,
        peer=c.peer,
        opened_at=_timestamp(c.opened_at),
        closed_at=None if c.closed_at is None else _timestamp(c.closed_at),
        admitted=c.admitted,
        refusal=c.refusal,
        bytes_from_client=c.counts.from_client,
        bytes_to_client=c.counts.to_client,
    )


def _status_batch(batch: Batch) -> pb.BuildStatusBatch:
    return pb.BuildStatusBatch(
        build_id=batch.build_id,
        status_responses=batch.messages,
        dropped=batch.dropped,
        side_listener=batch.side_listener,
    )


def _timestamp(epoch_seconds: float) -> Timestamp:
    micros = round(epoch_seconds * 1_000_000)
    return Timestamp(seconds=micros // 1_000_000, nanos=micros % 1_000_000 * 1000)


def _refusal(e: ConnectError, server: str) -> str | None:
    """Why a registration error is final, or None when a retry may succeed."""
    if e.code in (Code.UNAUTHENTICATED, Code.PERMISSION_DENIED):
        return f"{server} refused the machine token"
    if e.code == Code.INVALID_ARGUMENT:
        return f"{server} refused the registration"
    # A 404 (unimplemented), or an answer that is not Connect at all: another program serves
    # that address. (A proxy's 502/503 is `unavailable`, and retried.)
    if e.code == Code.UNIMPLEMENTED or e.message.startswith("invalid content-type"):
        return f"{server} does not serve depot-api's machine service; check --server"
    return None


def _start_error(program: str, e: OSError) -> str:
    if e.filename == program and isinstance(e, FileNotFoundError | PermissionError):
        return f"cannot start {program}: {e.strerror}; install BuildKit or pass --buildkitd PATH"
    return f"cannot start buildkitd: {e}"


def _die_with_parent() -> None:
    """In the daemon's process, before it starts: ask Linux to end it if the agent dies, so a
    crashed agent never leaves a daemon holding the port its successor needs."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def gc_config(keep_gb: int, keep_days: int) -> str:
    """BuildKit's configuration: garbage collection that follows the project's cache policy."""
    policy = [f"    keepBytes = {keep_gb * _GIB}"]
    if keep_days > 0:
        policy.append(f'    keepDuration = "{keep_days * 24}h"')
    lines = []
    for worker in ("oci", "containerd"):
        lines += [
            f"[worker.{worker}]",
            "  gc = true",
            f"  gckeepstorage = {keep_gb * _GIB}",
            f"  [[worker.{worker}.gcpolicy]]",
            "    all = true",
            *policy,
            "",
        ]
    return "\n".join(lines)


def _prepare_cache(directory: Path, generation: int) -> Path:
    """The project's cache directory for this generation; an older generation is deleted."""
    marker = directory / ".generation"
    if directory.exists():
        try:
            current = int(marker.read_text().strip())
        except (OSError, ValueError):
            current = -1
        if current != generation:
            log.info("cache generation %s → %s: deleting %s", current, generation, directory)
            shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    marker.write_text(f"{generation}\n")
    return directory


def _write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
