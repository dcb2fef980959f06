"""What tracing costs: the same calls to a server with tracing off (the default) and on
(spans exported over OTLP/HTTP to a sink in this process that only counts them).

    python -m bench.tracing [--quick] [--rounds N] [--seconds S] [--before PROGRAM]

One server process on SQLite, `ListProjects` over Connect binary on HTTP/2 (32 requests in
flight): one RPC span and one database span per call when on. The modes alternate, round after
round, so that the machine's noise falls on both; each row is the median over the rounds.
`--before` adds a third mode: the `depot-api` program of another install (a checkout of the
commit before tracing, with its own environment), to show what tracing costs when off.
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import load, servers
from bench.run import _post
from depot_api.gen.depot.core.v1 import project_pb

_PATH = "depot.core.v1.ProjectService/ListProjects"


class _Sink(http.server.BaseHTTPRequestHandler):
    exports = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        type(self).exports += 1
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def _sink() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _round(env: dict[str, str], seconds: int, program: Path) -> tuple[load.Result, float]:
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch) / "data"
        with servers.depot_api(data_dir, 1, None, env=env, program=program) as server:
            message = project_pb.ListProjectsRequest(page_size=100)
            # Warm the process (imports, first connections) before measuring.
            _post(server.url, _PATH, message, "connect-proto", server.org_token, load.Load(1))
            usage = servers.Usage(server)
            result = _post(server.url, _PATH, message, "connect-proto", server.org_token,
                           load.Load(seconds))  # fmt: skip
            usage.stop()
            return result, usage.cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--before", type=Path, metavar="PROGRAM",
                        help="also measure this depot-api program (another install)")  # fmt: skip
    args = parser.parse_args()
    rounds, seconds = (1, 1) if args.quick else (args.rounds, args.seconds)
    results: dict[str, list[tuple[load.Result, float]]] = {}
    with _sink() as endpoint:
        modes = {
            "off": ({}, servers.BIN / "depot-api"),
            "on": (
                {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"},
                servers.BIN / "depot-api",
            ),
        }
        if args.before is not None:
            modes["before"] = ({}, args.before)
        for _ in range(rounds):
            for mode, (env, program) in modes.items():
                results.setdefault(mode, []).append(_round(env, seconds, program))
    print(
        f"# tracing off and on: {_PATH}, connect-proto over HTTP/2, 1 process, SQLite, "
        f"{rounds} round(s) of {seconds:g} s, medians; {_Sink.exports} OTLP exports received"
    )
    print(f"{'tracing':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'cores':>6}")
    for mode, rows in results.items():
        print(
            f"{mode:<8} {statistics.median(r.rps for r, _ in rows):>9.0f} "
            f"{statistics.median(r.p50_ms for r, _ in rows):>8.2f} "
            f"{statistics.median(r.p99_ms for r, _ in rows):>8.2f} "
            f"{sum(r.errors for r, _ in rows):>7} "
            f"{statistics.median(c for _, c in rows):>6.2f}"
        )


if __name__ == "__main__":
    main()
