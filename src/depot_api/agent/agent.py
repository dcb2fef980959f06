"""`depot-api agent`: runs on a BuildKit host and keeps its daemon as the server wants it.

Every heartbeat reports what runs here and answers what should: nothing (Idle), a BuildKit
daemon for one project (Assignment), or nothing ever again (Stop, after a drain). For an
assignment the agent writes the daemon's certificate, key and the project's CA (mode 0600),
a configuration whose garbage collection follows the project's cache policy, and starts the
daemon with BuildKit's own flags on the project's cache directory. A new binding restarts
the daemon; a new cache generation deletes the old cache first.

Failures that may pass (the server unreachable, the daemon exiting or not starting) are
retried with growing delays and logged when they start, change and end, not at every attempt;
an agent whose daemon program is missing waits for it without registering. What no retry can
fix (the token refused, a server that is not depot-api) raises Refused.

State directory layout:

    <state>/bindings/<binding>/{server.pem,server-key.pem,ca.pem,buildkitd.toml}
    <state>/cache/<project>/            the daemon's --root
    <state>/cache/<project>/.generation the cache generation that directory belongs to
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
from dataclasses import dataclass
from pathlib import Path

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from depot_api.agent.retrying import Backoff, Trouble
from depot_api.gen.depotapi.machine.v1 import machine_pb as pb
from depot_api.gen.depotapi.machine.v1.machine_connect import MachineServiceClient

log = logging.getLogger("depot_api.agent")

_GIB = 1 << 30
_STOP_GRACE_SECONDS = 10.0
_DISK_EVERY_SECONDS = 30.0
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


class Refused(Exception):
    """The server turned the agent away for good (its token, its registration), or is not
    depot-api at all: no retry can help. str() is the one line to show."""


@dataclass(frozen=True)
class AgentConfig:
    server: str
    token: str
    platform: str  # amd64 | arm64
    advertise: str  # host:port clients reach
    listen: str  # host:port the daemon binds
    buildkitd: str
    state_dir: Path
    capacity: int = 1


class Daemon:
    """One BuildKit daemon process for one binding."""

    def __init__(
        self, binding_id: str, process: asyncio.subprocess.Process, listen: str, started_at: float
    ) -> None:
        self.binding_id = binding_id
        self.process = process
        self.started_at = started_at  # event loop time
        self._listen = listen

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None

    @property
    def exit_reason(self) -> str:
        status = self.process.returncode
        if status is not None and status < 0:
            return f"buildkitd was killed by signal {signal.Signals(-status).name}"
        return f"buildkitd exited with status {status}"

    async def accepting(self) -> bool:
        """Whether the daemon accepts TCP connections on its address."""
        if self.exited:
            return False
        host, port = self._listen.rsplit(":", 1)
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host.strip("[]")  # noqa: S104
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 1.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def stop(self) -> None:
        if self.exited:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), _STOP_GRACE_SECONDS)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self._config = config
        self._daemon: Daemon | None = None
        self._machine_id = ""
        self._interval = 1.0
        self._disk_used = 0
        self._disk_measured_at = 0.0
        self._headers = {"authorization": f"Bearer {config.token}"}
        self._registrations = Backoff(*_REGISTER_BACKOFF)
        # What keeps the daemon from running ("" when nothing), reported in the heartbeats;
        # after a failure no daemon starts before _restart_at (event loop time).
        self._daemon_error = ""
        self._restart_at = 0.0
        self._restarts = Backoff(*_DAEMON_BACKOFF)
        self._daemon_trouble = Trouble(log)
        self._server_trouble = Trouble(log)

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until stop is set or the server says Stop; returns the exit status.

        Raises Refused when the server turns the agent away for good."""
        if not await self._find_buildkitd(stop):
            return 0
        async with MachineServiceClient(self._config.server, timeout_ms=_CALL_TIMEOUT_MS) as client:
            try:
                while not stop.is_set():
                    if not self._machine_id:
                        retry_in = await self._register(client)
                        if retry_in is not None:
                            await _wait(stop, retry_in)
                            continue
                    self._notice_exit()
                    desired = await self._heartbeat(client)
                    if desired is not None and await self._converge(desired):
                        return 0
                    await _wait(stop, self._interval)
            finally:
                await self._stop_daemon()
        return 0

    async def _find_buildkitd(self, stop: asyncio.Event) -> bool:
        """Wait, without registering, while the daemon's program cannot be found: a machine
        registered without it would be given a project whose builds then wait for nothing.
        False when stopped while waiting."""
        program = self._config.buildkitd
        if shutil.which(program):
            return True
        log.warning(
            "--buildkitd %s: no such executable program%s. Install BuildKit, or pass "
            "--buildkitd PATH (or DEPOT_API_AGENT_BUILDKITD); until then the agent waits, "
            "unregistered, and this host gets no builds",
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
            answer = await client.register(
                pb.RegisterRequest(
                    platform=pb.Platform.ARM64
                    if self._config.platform == "arm64"
                    else pb.Platform.AMD64,
                    endpoint=self._config.advertise,
                    capacity=self._config.capacity,
                ),
                headers=self._headers,
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
        ready = daemon is not None and await daemon.accepting()
        if ready and daemon is not None:
            self._daemon_runs(daemon)
        try:
            answer = await client.heartbeat(
                pb.HeartbeatRequest(
                    machine_id=self._machine_id,
                    running_binding_id="" if daemon is None or daemon.exited else daemon.binding_id,
                    buildkit_ready=ready,
                    disk_used_bytes=await self._disk_usage(),
                    buildkit_error=self._daemon_error,
                ),
                headers=self._headers,
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

    def _daemon_runs(self, daemon: Daemon) -> None:
        """The daemon accepts connections: any earlier failure is over."""
        self._daemon_error = ""
        self._daemon_trouble.clear(f"buildkitd is running again (binding {daemon.binding_id})")
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
            return False
        if choice.field == "stop":
            log.info("drained: stopping")
            await self._stop_daemon()
            return True
        assignment = choice.value
        assert isinstance(assignment, pb.HeartbeatResponse.Assignment)
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
        except OSError as e:
            # Reported with the next heartbeats; the server keeps the machine not ready.
            self._daemon_failed(_start_error(self._config.buildkitd, e))
        return False

    async def _start_daemon(self, a: pb.HeartbeatResponse.Assignment) -> Daemon:
        state = self._config.state_dir
        cache = _prepare_cache(state / "cache" / a.project_id, a.cache_generation)
        binding_dir = state / "bindings" / a.binding_id
        for old in (state / "bindings").glob("*") if (state / "bindings").exists() else ():
            if old != binding_dir:
                shutil.rmtree(old, ignore_errors=True)
        binding_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert = _write_private(binding_dir / "server.pem", a.server_cert)
        key = _write_private(binding_dir / "server-key.pem", a.server_key)
        ca = _write_private(binding_dir / "ca.pem", a.ca_cert)
        config = _write_private(binding_dir / "buildkitd.toml", gc_config(a.keep_gb, a.keep_days))
        argv = [
            self._config.buildkitd,
            "--addr", f"tcp://{self._config.listen}",
            "--tlscert", str(cert),
            "--tlskey", str(key),
            "--tlscacert", str(ca),
            "--root", str(cache),
            "--config", str(config),
        ]  # fmt: skip
        # While the daemon keeps failing, each attempt is a debug line only.
        log.log(
            logging.DEBUG if self._daemon_trouble.current else logging.INFO,
            "starting buildkitd for project %s (binding %s)",
            a.project_id,
            a.binding_id,
        )
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        return Daemon(a.binding_id, process, self._config.listen, asyncio.get_running_loop().time())

    async def _stop_daemon(self) -> None:
        if self._daemon is not None:
            log.info("stopping buildkitd (binding %s)", self._daemon.binding_id)
            await self._daemon.stop()
            self._daemon = None

    async def _disk_usage(self) -> int:
        loop = asyncio.get_running_loop()
        if loop.time() - self._disk_measured_at >= _DISK_EVERY_SECONDS:
            self._disk_measured_at = loop.time()
            self._disk_used = await asyncio.to_thread(_tree_size, self._config.state_dir / "cache")
        return self._disk_used


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


def _tree_size(root: Path) -> int:
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
