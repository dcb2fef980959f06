"""A `depot-api serve` process for a campaign: on 127.0.0.1, on a free port, one worker.

Each start is a new session, so the server's process group holds exactly the supervisor the
campaign started and its pyvoy worker: `kill` sends SIGKILL to that group, and the worker
(where requests run and transactions commit) dies at the same instant as the supervisor, with
no chance to shut down. `stop` is the clean way (SIGTERM). Either can be followed by `start`
again, on the same data directory and database.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0
_LISTENING = re.compile(r"listening on http://[\d.]+:(\d+)")


class ServerProcess:
    def __init__(self, data_dir: Path, *extra_args: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra_args = extra_args
        self.env = env
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.output: list[str] = []

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def org_token(self) -> str:
        """The token the first start made (it is in this file, and not in the output)."""
        return (self.data_dir / "initial-org-token").read_text().strip()

    def start(self) -> None:
        """Start the server and return once it listens (self.port)."""
        args = [str(BIN / "depot-api"), "serve", "--host", HOST, "--port", "0"]
        args += ["--data-dir", str(self.data_dir), "--workers", "1", *self.extra_args]
        self.port = 0
        process = subprocess.Popen(  # noqa: S603 (our own server, our own arguments)
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(self.env or {})},
            start_new_session=True,
        )
        self.process = process
        assert process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            match = _LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
                break
        if not self.port:
            self.kill()
            raise RuntimeError("the server did not start:\n" + "".join(self.output[-30:]))
        # Keep reading its output so a full pipe can never block it.
        threading.Thread(target=self._drain, args=(process,), daemon=True).start()

    def kill(self) -> None:
        """SIGKILL the server's process group (the process this campaign started, and its
        children), then make sure each of them is gone."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        children = psutil.Process(process.pid).children(recursive=True)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        # A child that had left the group would still be running: kill it by its PID.
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:
            child.kill()
        self.port = 0

    def stop(self) -> None:
        """A clean stop (SIGTERM), then SIGKILL if it does not come."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def _drain(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.output.append(line)
