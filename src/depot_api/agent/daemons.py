"""The two kinds of BuildKit daemon an agent can front, behind one shape.

- `Buildkitd`: a `buildkitd` the agent starts for one binding, on a unix socket in its state
  directory (nothing else: clients come in through the agent's front door), with the
  project's cache directory as --root and garbage collection from its cache policy.
- `DockerEngine`: an existing Docker Engine, whose built-in BuildKit answers on the engine's
  API socket after an HTTP `/grpc` upgrade. Nothing is started. The engine's build cache is
  one for every project, so it is pruned through the Control API whenever the machine starts
  serving another project or a new cache generation: no project builds on another's cache.

Both give the front door a connection that speaks BuildKit's gRPC (h2c) at once (`connect`),
and the agent a unix socket for its own Control calls (`socket`). For the engine that socket
is the agent's own, forwarding each connection through the upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Protocol

from depot_api.agent.control import Control, DaemonUnavailable
from depot_api.agent.docker_engine import EngineError, open_buildkit
from depot_api.agent.splice import Streams, splice

log = logging.getLogger("depot_api.agent")

_STOP_GRACE_SECONDS = 10.0
_ENGINE_TIMEOUT = 5.0


class DaemonFailed(Exception):
    """The daemon cannot be started or set up for a binding; str() is one line."""


class Daemon(Protocol):
    binding_id: str
    started_at: float  # event loop time

    @property
    def control(self) -> Control: ...

    @property
    def exited(self) -> bool:
        """Whether it ended by itself (an engine the agent did not start never does)."""
        ...

    @property
    def exit_reason(self) -> str: ...

    async def connect(self) -> Streams:
        """A fresh connection to BuildKit's API; raises OSError or DaemonFailed."""
        ...

    async def stop(self) -> None: ...


class Buildkitd:
    """One buildkitd process for one binding, listening on a unix socket only."""

    def __init__(
        self, binding_id: str, process: asyncio.subprocess.Process, socket: Path, started_at: float
    ) -> None:
        self.binding_id = binding_id
        self.process = process
        self.socket = socket
        self.started_at = started_at
        self.control = Control(socket)

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None

    @property
    def exit_reason(self) -> str:
        status = self.process.returncode
        if status is not None and status < 0:
            return f"buildkitd was killed by signal {signal.Signals(-status).name}"
        return f"buildkitd exited with status {status}"

    async def connect(self) -> Streams:
        return await asyncio.open_unix_connection(self.socket, limit=_BUFFER)

    async def stop(self) -> None:
        if self.exited:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), _STOP_GRACE_SECONDS)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        with contextlib.suppress(OSError):
            self.socket.unlink()


class DockerEngine:
    """The BuildKit inside an existing Docker Engine, for one binding."""

    def __init__(self, binding_id: str, engine_socket: Path, own_socket: Path, started_at: float):
        self.binding_id = binding_id
        self.started_at = started_at
        self._engine_socket = engine_socket
        self._own_socket = own_socket
        self._server: asyncio.Server | None = None
        self.control = Control(own_socket)

    @property
    def exited(self) -> bool:
        return False

    @property
    def exit_reason(self) -> str:
        return ""

    async def open(self) -> None:
        """Serve the agent's own socket for Control calls."""
        with contextlib.suppress(FileNotFoundError):
            self._own_socket.unlink()
        self._server = await asyncio.start_unix_server(
            self._forward, path=self._own_socket, limit=_BUFFER
        )

    async def connect(self) -> Streams:
        return await open_engine_buildkit(self._engine_socket)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(OSError):
            self._own_socket.unlink()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            engine = await self.connect()
        except (OSError, DaemonFailed) as e:
            log.debug("Control call to the engine: %s", e)
            writer.close()
            return
        await splice((reader, writer), engine)


async def open_engine_buildkit(engine_socket: Path) -> Streams:
    """A connection to the BuildKit of the Docker Engine at engine_socket, upgraded; raises
    DaemonFailed saying why not (the engine absent, or refusing the upgrade)."""
    try:
        return await open_buildkit(str(engine_socket), timeout=_ENGINE_TIMEOUT)
    except EngineError as e:
        raise DaemonFailed(str(e)) from None


async def reset_engine_cache(engine: DockerEngine) -> int:
    """Prune the engine's whole build cache; the bytes freed."""
    try:
        return await engine.control.prune_all()
    except DaemonUnavailable as e:
        raise DaemonFailed(f"cannot reset the Docker Engine's build cache: {e}") from None


# Reads of up to 256 KiB at a time: a build context streams through in few, large copies.
_BUFFER = 1 << 18
