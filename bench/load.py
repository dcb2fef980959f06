"""The load generators: h2load (nghttp2) for fixed requests over HTTP/1.1 and HTTP/2, and wrk
with a Lua script where every request must differ (unique project names, distinct builds).

Both are C programs from Debian's packages (`make bench-tools` installs them); on these 2-core
machines they share the CPU with the server, which is why every figure is also reported as a
ratio to the bare endpoint measured the same way in the same run.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).resolve().parent / "lua"


@dataclass(frozen=True)
class Load:
    """How hard to push: concurrent requests and for how long."""

    seconds: float
    concurrency: int = 32


@dataclass(frozen=True)
class Result:
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float


def h2load(
    url: str,
    body: bytes,
    headers: dict[str, str],
    load: Load,
    *,
    http1: bool = False,
) -> Result:
    """POST the same body again and again; latencies from h2load's per-request log."""
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "body"
        data.write_bytes(body)
        log = Path(scratch) / "log"
        args = ["h2load", "--duration", str(load.seconds), "--warm-up-time", "1", "-t", "1"]
        args += ["--data", str(data), "--log-file", str(log)]
        if http1:  # one request at a time per connection
            args += ["--h1", "-c", str(load.concurrency), "-m", "1"]
        else:  # four streams on each connection
            args += ["-c", str(max(load.concurrency // 4, 1)), "-m", "4"]
        for name, value in headers.items():
            args += ["-H", f"{name}: {value}"]
        completed = subprocess.run([*args, url], capture_output=True, text=True, timeout=600)
        if completed.returncode != 0:
            raise RuntimeError(f"h2load failed: {completed.stderr or completed.stdout}")
        latencies = sorted(int(line.split("\t")[2]) / 1000 for line in log.read_text().splitlines())
    summary = completed.stdout
    rps = float(_find(r"finished in [\d.]+\w+, ([\d.]+) req/s", summary))
    done = int(_find(r"requests: \d+ total, \d+ started, (\d+) done", summary))
    refused = sum(map(int, _find(r"status codes: \d+ 2xx, (\d+ 3xx, \d+ 4xx, \d+) 5xx", summary)
                  .replace("3xx,", "").replace("4xx,", "").split()))  # fmt: skip
    errored = int(_find(r"(\d+) errored", summary)) + int(_find(r"(\d+) timeout", summary))
    return Result(
        requests=done,
        errors=refused + errored,
        rps=rps,
        p50_ms=statistics.median(latencies) if latencies else 0.0,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0,
    )


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"h2load printed no {pattern!r}:\n{text}")
    return match.group(1)


def wrk(url: str, script: str, load: Load, env: dict[str, str]) -> Result:
    """HTTP/1.1 with a request made by Lua for every call (bench/lua/<script>.lua)."""
    args = ["wrk", "--latency", "-t", "2", "-c", str(load.concurrency), "-d", f"{load.seconds}s"]
    args += ["-s", str(LUA / f"{script}.lua"), url]
    completed = subprocess.run(
        args, capture_output=True, text=True, timeout=600, env={"PATH": "/usr/bin:/bin", **env}
    )
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed: {completed.stderr or completed.stdout}")
    line = next(x for x in completed.stdout.splitlines() if x.startswith("{"))
    summary = json.loads(line)
    return Result(
        requests=summary["requests"],
        errors=summary["errors"],
        rps=summary["requests"] / summary["seconds"],
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
    )
