"""Running the server: N pyvoy processes sharing one port, kept alive until told to stop.

Each process is an Envoy with the application loaded in its own Python interpreter; the
kernel spreads connections across them (SO_REUSEPORT). No state that matters lives in a
process, so any of them may answer any request.

Stopping is graceful (api/drain.py): on SIGTERM or SIGINT the workers drain, finishing the
calls in flight and ending streams with `unavailable`, for at most the shutdown grace period;
then they are stopped. A second signal stops them at once. The signal may be sent to every
process of the server at once (Ctrl-C, `timeout`, systemd): the workers do not act on it
(worker.py), so it drains the same.
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
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from pyvoy import PyvoyServer

from depot_api.api.drain import DRAIN_REQUEST, DRAINED_PREFIX
from depot_api.config import Settings
from depot_api.metrics import MULTIPROCESS_ENV, forget_process, multiprocess_registry
from depot_api.server.errors import ServeError
from depot_api.server.path_guard import add_path_guard
from depot_api.server.worker import Worker

log = logging.getLogger("depot_api.server")

# How long a crashed worker waits before it is started again.
_RESTART_DELAY_SECONDS = 1.0
# How often the supervisor looks for its workers' answers while they drain.
_DRAIN_POLL_SECONDS = 0.1


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self._drain_dir = _new_run_dir(settings.data_dir, "drain")
        # Where the workers keep their metrics, summed by whoever serves /metrics (metrics.py).
        self._metrics_dir = _new_run_dir(settings.data_dir, "metrics")
        self._settings = replace(settings, drain_dir=self._drain_dir)
        self._port = settings.port
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._workers: list[Worker] = []

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._signalled)
        metrics_server = None
        try:
            if self._settings.metrics_address:
                metrics_server = _serve_metrics(self._settings.metrics_address, self._metrics_dir)
            first = await self._start()
            self._workers.append(first)
            # Workers after the first bind the port the first one got (which matters for port 0).
            self._port = first.port
            for _ in range(self._settings.worker_count - 1):
                self._workers.append(await self._start())
            scheme = "https" if self._settings.tls_cert is not None else "http"
            count = len(self._workers)
            print(
                f"depot-api listening on {scheme}://{first.address}:{self._port} "
                f"({count} worker{'s' if count > 1 else ''})",
                flush=True,
            )
            await asyncio.gather(*(self._keep_alive(i) for i in range(count)))
            await self._drain()
        finally:
            self._stopping.set()  # no worker is restarted from here on
            await asyncio.gather(*(w.stop() for w in self._workers), return_exceptions=True)
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            shutil.rmtree(self._drain_dir, ignore_errors=True)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        return 0

    def _signalled(self) -> None:
        if self._stopping.is_set():
            self._hurry.set()
        self._stopping.set()

    async def _keep_alive(self, index: int) -> None:
        """Wait for stop; restart this worker if it dies on its own."""
        while True:
            worker = self._workers[index]
            exited = asyncio.ensure_future(worker.wait())
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done():
                exited.cancel()
                return
            stopping.cancel()
            log.error("worker %d exited with status %s; restarting it", index, exited.result())
            # Its counters still count; its share of the live gauges no longer does.
            forget_process(worker.pid, self._metrics_dir)
            await asyncio.sleep(_RESTART_DELAY_SECONDS)
            if self._stopping.is_set():
                return
            self._workers[index] = await self._start()

    async def _drain(self) -> None:
        """Ask every worker to drain and wait until all have, for at most the grace period.

        A worker has drained when it says so, or when it has exited (it has no call left)."""
        (self._drain_dir / DRAIN_REQUEST).touch()
        grace = self._settings.shutdown_grace.total_seconds()
        deadline = time.monotonic() + grace
        while not self._hurry.is_set():
            busy = [
                w.pid
                for w in self._workers
                if not w.exited and not (self._drain_dir / f"{DRAINED_PREFIX}{w.pid}").exists()
            ]
            if not busy:
                return
            if time.monotonic() >= deadline:
                log.warning(
                    "calls still in flight after %.0fs in worker(s) %s: stopping anyway",
                    grace,
                    ", ".join(map(str, busy)),
                )
                return
            await asyncio.sleep(_DRAIN_POLL_SECONDS)

    async def _start(self) -> Worker:
        settings = self._settings
        # PyvoyServer only makes the Envoy configuration here: worker.py starts the process.
        envoy_config = PyvoyServer(
            "depot_api.asgi:app",
            address=settings.host,
            port=self._port,
            lifespan=True,
            tls_enable_http3=False,
            tls_cert=_resolved(settings.tls_cert),
            tls_key=_resolved(settings.tls_key),
        ).get_envoy_config()
        if not add_path_guard(envoy_config):
            raise ServeError("pyvoy's Envoy configuration has no pyvoy filter to guard")
        env = {**settings.to_env(), MULTIPROCESS_ENV: str(self._metrics_dir.resolve())}
        return await Worker.start(envoy_config, env)


def _serve_metrics(address: str, directory: Path) -> WSGIServer:
    """/metrics on an address of its own, served from the supervisor's process (a thread of
    prometheus-client's): the sum over the workers' files."""
    host, _, port = address.rpartition(":")
    try:
        server, _thread = start_http_server(
            int(port), host.strip("[]"), registry=multiprocess_registry(directory)
        )
    except OSError as e:
        raise ServeError(f"--metrics-address {address}: cannot listen there: {e}") from None
    log.info("metrics on http://%s/metrics", address)
    return server


def _new_run_dir(data_dir: Path, kind: str) -> Path:
    """A directory of this run, in the data directory: `run/<kind>-<supervisor PID>`.

    A supervisor killed outright leaves its directories behind; the next start removes the
    ones whose supervisor is gone."""
    runs = data_dir / "run"
    runs.mkdir(mode=0o700, exist_ok=True)
    for stale in runs.glob(f"{kind}-*"):
        pid = stale.name.removeprefix(f"{kind}-")
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    mine = runs / f"{kind}-{os.getpid()}"
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
