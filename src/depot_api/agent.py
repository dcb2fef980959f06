"""`depot-api agent`: runs on a BuildKit host and keeps its daemon as the server wants it.

Every heartbeat reports what runs here and answers what should: nothing (Idle), a BuildKit
daemon for one project (Assignment), or nothing ever again (Stop, after a drain). For an
assignment the agent writes the daemon's certificate, key and the project's CA (mode 0600),
a configuration whose garbage collection follows the project's cache policy, and starts the
daemon with BuildKit's own flags on the project's cache directory. A new binding restarts
the daemon; a new cache generation deletes the old cache first.

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

from depot_api.gen.depotapi.machine.v1 import machine_pb as pb
from depot_api.gen.depotapi.machine.v1.machine_connect import MachineServiceClient

log = logging.getLogger("depot_api.agent")

_GIB = 1 << 30
_STOP_GRACE_SECONDS = 10.0
_DISK_EVERY_SECONDS = 30.0
_RETRY_SECONDS = 2.0
_PR_SET_PDEATHSIG = 1


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

    def __init__(self, binding_id: str, process: asyncio.subprocess.Process, listen: str) -> None:
        self.binding_id = binding_id
        self.process = process
        self._listen = listen

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None

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
        self._start_error = ""
        self._headers = {"authorization": f"Bearer {config.token}"}

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until stop is set or the server says Stop; returns the exit status."""
        async with MachineServiceClient(self._config.server) as client:
            try:
                while not stop.is_set():
                    if not self._machine_id and not await self._register(client):
                        await _wait(stop, _RETRY_SECONDS)
                        continue
                    desired = await self._heartbeat(client)
                    if desired is not None and await self._converge(desired):
                        return 0
                    await _wait(stop, self._interval)
            finally:
                await self._stop_daemon()
        return 0

    async def _register(self, client: MachineServiceClient) -> bool:
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
            log.warning("register failed (%s): %s; retrying", e.code.value, e.message)
            if e.code in (Code.UNAUTHENTICATED, Code.PERMISSION_DENIED, Code.INVALID_ARGUMENT):
                raise
            return False
        self._machine_id = answer.machine_id
        self._interval = max(answer.heartbeat_interval_ms, 100) / 1000
        log.info(
            "registered as machine %s (%s at %s)",
            self._machine_id,
            self._config.platform,
            self._config.advertise,
        )
        return True

    async def _heartbeat(self, client: MachineServiceClient) -> pb.HeartbeatResponse | None:
        daemon = self._daemon
        ready = daemon is not None and await daemon.accepting()
        error = self._start_error
        if daemon is not None and daemon.exited:
            error = f"buildkitd exited with status {daemon.process.returncode}"
        try:
            return await client.heartbeat(
                pb.HeartbeatRequest(
                    machine_id=self._machine_id,
                    running_binding_id="" if daemon is None or daemon.exited else daemon.binding_id,
                    buildkit_ready=ready,
                    disk_used_bytes=await self._disk_usage(),
                    buildkit_error=error,
                ),
                headers=self._headers,
            )
        except ConnectError as e:
            if e.code == Code.NOT_FOUND:
                log.warning("the server does not know this machine any more; registering again")
                self._machine_id = ""
            else:
                log.warning("heartbeat failed (%s): %s", e.code.value, e.message)
            return None

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
        await self._stop_daemon()
        try:
            self._daemon = await self._start_daemon(assignment)
        except OSError as e:
            # Reported with the next heartbeats; the server keeps the machine not ready.
            self._start_error = f"cannot start {self._config.buildkitd}: {e}"
            log.error("%s", self._start_error)
        else:
            self._start_error = ""
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
        log.info("starting buildkitd for project %s (binding %s)", a.project_id, a.binding_id)
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        return Daemon(a.binding_id, process, self._config.listen)

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
