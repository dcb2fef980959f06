"""Running the server: N pyvoy processes sharing one port, kept alive until told to stop.

Each process is an Envoy with the application loaded in its own Python interpreter; the
kernel spreads connections across them (SO_REUSEPORT). No state that matters lives in a
process, so any of them may answer any request.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from pyvoy import PyvoyServer

from depot_api.config import Settings

log = logging.getLogger("depot_api.server")

# How long a crashed worker waits before it is started again.
_RESTART_DELAY_SECONDS = 1.0


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._port = settings.port
        self._stopping = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        first = await self._start()
        # Workers after the first bind the port the first one got (which matters for port 0).
        self._port = first.listener_port
        servers = [first] + [await self._start() for _ in range(self._settings.worker_count - 1)]
        scheme = "https" if self._settings.tls_cert is not None else "http"
        print(
            f"depot-api listening on {scheme}://{first.listener_address}:{self._port} "
            f"({len(servers)} worker{'s' if len(servers) > 1 else ''})",
            flush=True,
        )
        try:
            await asyncio.gather(*(self._keep_alive(i, s) for i, s in enumerate(servers)))
        finally:
            await asyncio.gather(*(s.stop() for s in servers), return_exceptions=True)
        return 0

    async def _keep_alive(self, index: int, server: PyvoyServer) -> None:
        """Wait for stop; restart this worker if it dies on its own."""
        while True:
            exited = asyncio.ensure_future(server.wait())
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done():
                exited.cancel()
                await server.stop()
                return
            stopping.cancel()
            log.error("worker %d exited with status %s; restarting it", index, exited.result())
            await asyncio.sleep(_RESTART_DELAY_SECONDS)
            server = await self._start()

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


def _resolved(path: Path | None) -> Path | None:
    return None if path is None else path.resolve()
