"""Shared test helpers: an in-process app over a real SQLite file, and a real server process."""

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depot_api.store.urls import sqlite_url

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass
class ServerProcess:
    """A `depot-api serve` process listening on 127.0.0.1."""

    url: str
    port: int
    data_dir: Path
    database: str
    org_token: str
    process: subprocess.Popen[str]
    output: list[str]


@contextmanager
def running_server(
    data_dir: Path,
    *extra_args: str,
    env: dict[str, str] | None = None,
    new_session: bool = False,
) -> Iterator[ServerProcess]:
    """Start the real server on a free port; stop it (by its own PID) when the block ends.

    new_session: in a session and process group of its own (its PID is the group's ID), as a
    terminal or a service manager would start it, so that a test can signal the whole group."""
    if "--workers" not in extra_args:
        extra_args = (*extra_args, "--workers", "1")
    process = subprocess.Popen(
        [str(BIN / "depot-api"), "serve", "--port", "0", "--data-dir", str(data_dir), *extra_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=new_session,
    )
    output: list[str] = []
    drain = threading.Thread(target=_drain, args=(process, output), daemon=True)
    try:
        url = _wait_for_listening(process, output)
        # Keep draining the server's output so a full pipe can never block it.
        drain.start()
        token_file = data_dir / "initial-org-token"
        org_token = token_file.read_text().strip() if token_file.exists() else ""
        port = int(url.rsplit(":", 1)[1])
        database = (
            extra_args[extra_args.index("--database") + 1] if "--database" in extra_args else ""
        )
        yield ServerProcess(
            url, port, data_dir, database or sqlite_url(data_dir), org_token, process, output
        )
    finally:
        stop_process(process)
        if drain.is_alive():
            drain.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


def _wait_for_listening(process: subprocess.Popen[str], output: list[str]) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        match = re.search(r"listening on (https?://[\d.]+:\d+)", line)
        if match:
            return match.group(1)
    process.kill()
    raise RuntimeError("server did not start:\n" + "".join(output))


def _drain(process: subprocess.Popen[str], output: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line)


def stop_process(process: subprocess.Popen[Any], grace: float = 20.0) -> None:
    """Stop a process this test suite started: SIGTERM, then SIGKILL after the grace period."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
