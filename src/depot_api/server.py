"""Running the server: N pyvoy processes sharing one port, kept alive until told to stop.

Each process is an Envoy with the application loaded in its own Python interpreter; the
kernel spreads connections across them (SO_REUSEPORT). No state that matters lives in a
process, so any of them may answer any request.

Stopping is graceful (api/drain.py): on SIGTERM or SIGINT the workers drain, finishing the
calls in flight and ending streams with `unavailable`, for at most the shutdown grace period;
then they are stopped. A second signal stops them at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

from pyvoy import PyvoyServer

from depot_api.api.drain import DRAIN_REQUEST, DRAINED_PREFIX
from depot_api.config import Settings

log = logging.getLogger("depot_api.server")

# How long a crashed worker waits before it is started again.
_RESTART_DELAY_SECONDS = 1.0
# How often the supervisor looks for its workers' answers while they drain.
_DRAIN_POLL_SECONDS = 0.1


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self._drain_dir = _new_drain_dir(settings.data_dir)
        self._settings = replace(settings, drain_dir=self._drain_dir)
        self._port = settings.port
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._servers: list[PyvoyServer] = []

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._signalled)
        try:
            first = await self._start()
            self._servers.append(first)
            # Workers after the first bind the port the first one got (which matters for port 0).
            self._port = first.listener_port
            for _ in range(self._settings.worker_count - 1):
                self._servers.append(await self._start())
            scheme = "https" if self._settings.tls_cert is not None else "http"
            count = len(self._servers)
            print(
                f"depot-api listening on {scheme}://{first.listener_address}:{self._port} "
                f"({count} worker{'s' if count > 1 else ''})",
                flush=True,
            )
            await asyncio.gather(*(self._keep_alive(i) for i in range(count)))
            await self._drain()
        finally:
            await asyncio.gather(*(s.stop() for s in self._servers), return_exceptions=True)
            shutil.rmtree(self._drain_dir, ignore_errors=True)
        return 0

    def _signalled(self) -> None:
        if self._stopping.is_set():
            self._hurry.set()
        self._stopping.set()

    async def _keep_alive(self, index: int) -> None:
        """Wait for stop; restart this worker if it dies on its own."""
        while True:
            server = self._servers[index]
            exited = asyncio.ensure_future(server.wait())
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done():
                exited.cancel()
                return
            stopping.cancel()
            log.error("worker %d exited with status %s; restarting it", index, exited.result())
            await asyncio.sleep(_RESTART_DELAY_SECONDS)
            self._servers[index] = await self._start()

    async def _drain(self) -> None:
        """Ask every worker to drain and wait until all have, for at most the grace period."""
        (self._drain_dir / DRAIN_REQUEST).touch()
        grace = self._settings.shutdown_grace.total_seconds()
        deadline = time.monotonic() + grace
        while not self._hurry.is_set():
            drained = sum(1 for _ in self._drain_dir.glob(DRAINED_PREFIX + "*"))
            if drained >= len(self._servers):
                return
            if time.monotonic() >= deadline:
                log.warning("calls still in flight after %.0fs: stopping anyway", grace)
                return
            await asyncio.sleep(_DRAIN_POLL_SECONDS)

    async def _start(self) -> PyvoyServer:
        settings = self._settings
        server = PyvoyServer(
            "depot_api.asgi:app",
            address=settings.host,
            port=self._port,
            env=settings.to_env(),
            lifespan=True,
            tls_enable_http3=False,
            stdout=None,
            stderr=None,
            tls_cert=_resolved(settings.tls_cert),
            tls_key=_resolved(settings.tls_key),
        )
        await server.start()
        return server


def _new_drain_dir(data_dir: Path) -> Path:
    """This run's drain directory, in the data directory: `run/drain-<supervisor PID>`.

    A supervisor killed outright leaves its directory behind; the next start removes the ones
    whose supervisor is gone."""
    runs = data_dir / "run"
    runs.mkdir(mode=0o700, exist_ok=True)
    for stale in runs.glob("drain-*"):
        pid = stale.name.removeprefix("drain-")
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    mine = runs / f"drain-{os.getpid()}"
    shutil.rmtree(mine, ignore_errors=True)  # a dead supervisor's, whose PID we reuse
    mine.mkdir(mode=0o700)
    return mine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _resolved(path: Path | None) -> Path | None:
    return None if path is None else path.resolve()
