"""Starting the servers under test, and watching what their processes use.

The depot-api server runs as `depot-api serve` (a supervisor and its pyvoy workers); the bare
reference runs in the same pyvoy server with the same options (bench/bare_server.py). Both
listen on 127.0.0.1 on a free port and are stopped by their own process IDs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
_LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]
    data_dir: Path | None = None
    org_token: str = ""
    output: list[str] = field(default_factory=list)

    def workers(self) -> list[psutil.Process]:
        """The processes that serve requests: the supervisor's descendants (pyvoy's Envoys)."""
        return psutil.Process(self.process.pid).children(recursive=True)


@contextmanager
def depot_api(
    data_dir: Path,
    workers: int,
    database: str | None,
    env: dict[str, str] | None = None,
    program: Path = BIN / "depot-api",
) -> Iterator[Server]:
    """program: another install's `depot-api`, to compare with (bench/tracing.py)."""
    args = [str(program), "serve", "--port", "0", "--data-dir", str(data_dir)]
    args += ["--workers", str(workers), "--log-level", "warning"]
    # The load generators drive thousands of calls a second with one token, far above the
    # per-token abuse limits; limits this high are never reached, but their bookkeeping runs
    # on every call, so its cost is in the figures.
    args += ["--rate-limit", "1e9", "--rate-burst", "1000000000", "--max-streams-per-token", "0"]
    if database:
        args += ["--database", database]
    with _running(args, env) as server:
        token = data_dir / "initial-org-token"
        server.data_dir = data_dir
        server.org_token = token.read_text().strip() if token.exists() else ""
        yield server


@contextmanager
def bare(workers: int) -> Iterator[Server]:
    args = [sys.executable, "-m", "bench.bare_server", "--workers", str(workers)]
    with _running(args, {"PYTHONPATH": str(ROOT)}) as server:
        yield server


@contextmanager
def _running(args: list[str], env: dict[str, str] | None) -> Iterator[Server]:
    process = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    output: list[str] = []
    try:
        url = _wait_for_url(process, output)
        threading.Thread(target=_drain, args=(process, output), daemon=True).start()
        yield Server(url, process, output=output)
    finally:
        _stop(process)


def _wait_for_url(process: subprocess.Popen[str], output: list[str]) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        match = _LISTENING.search(line)
        if match:
            return match.group(1)
    _stop(process)
    raise RuntimeError("the server did not start:\n" + "".join(output))


def _drain(process: subprocess.Popen[str], output: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line)


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(15)


class Usage:
    """CPU seconds and peak resident memory of a server's worker processes over a span."""

    def __init__(self, server: Server, every: float = 0.1) -> None:
        self._processes = server.workers()
        self._every = every
        self._stop = threading.Event()
        self.peak_rss: dict[int, int] = {p.pid: 0 for p in self._processes}
        self._cpu_start = self._cpu()
        self._started = time.monotonic()
        self.cpu_seconds = 0.0
        self.wall_seconds = 0.0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> Usage:
        self._stop.set()
        self._thread.join()
        self.cpu_seconds = self._cpu() - self._cpu_start
        self.wall_seconds = time.monotonic() - self._started
        return self

    @property
    def max_rss_mb(self) -> float:
        return max(self.peak_rss.values(), default=0) / 2**20

    @property
    def cores(self) -> float:
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds else 0.0

    def _cpu(self) -> float:
        total = 0.0
        for process in self._processes:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def _sample(self) -> None:
        while not self._stop.wait(self._every):
            for process in self._processes:
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                self.peak_rss[process.pid] = max(self.peak_rss[process.pid], rss)
