"""Run every benchmark scenario against real server processes and print one table.

    python -m bench.run            # the full run (see bench/README.md for what it does)
    python -m bench.run --quick    # a bounded run: short loads, small projects (CI)

Each row: requests per second, its ratio to the bare endpoint (same protocol, same number of
processes, same run), p50/p99 latency, errors, the server's CPU (cores) and the largest
resident memory of any one server process while the load ran.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench import front_door, load, seed, servers
from bench.endpoint_waiters import waiting_streams
from depot_api.domain.paging import encode_page_token
from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.core.v1 import build_pb as core_build_pb
from depot_api.gen.depot.core.v1 import project_pb
from depot_api.models import BuildStatus

POSTGRES = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
PROTOCOLS = ("connect-json", "connect-proto", "grpc")
_CONTENT_TYPES = {
    "connect-json": "application/json",
    "connect-proto": "application/proto",
    "grpc": "application/grpc",
}


@dataclass(frozen=True)
class Plan:
    seconds: float
    sizes: tuple[int, ...]
    finishable: int
    workers: tuple[int, ...]
    backends: tuple[str, ...]
    waiters: int


FULL = Plan(5, (1_000, 100_000, 1_000_000), 150_000, (1, 0), ("sqlite", "postgresql"), 1000)
QUICK = Plan(1, (1_000, 10_000), 20_000, (1, 0), ("sqlite", "postgresql"), 200)


@dataclass
class Row:
    scenario: str
    protocol: str
    backend: str
    processes: int
    result: load.Result
    cores: float
    rss_mb: float
    ratio: float | None = None


@dataclass
class Fixture:
    """What the scenarios need in one server's database."""

    project: str
    build: str
    list_projects: dict[int, str]
    deep_tokens: dict[int, str]
    finish_ids: Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short, bounded run")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), action="append")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument(
        "--waiters-only", action="store_true", help="only the waiting GetEndpoint streams"
    )
    parser.add_argument(
        "--only",
        metavar="TEXT",
        action="append",
        help="only the rows whose scenario contains TEXT (repeatable), with their bare "
        "endpoints, and the front door's scenarios whose name contains it; no waiting streams",
    )
    parser.add_argument(
        "--processes", type=int, action="append", help="only runs with this many processes"
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.waiters_only:
        print(asyncio.run(waiting_streams(plan.waiters)).describe())
        return
    backends = tuple(args.backend) if args.backend else plan.backends

    cores = os.cpu_count() or 1
    print(f"# depot-api benchmark, {time.strftime('%Y-%m-%d %H:%M')} UTC")
    print(f"# {platform.processor() or platform.machine()}, {cores} cores, Python "
          f"{platform.python_version()}; load: {load.Load(plan.seconds).concurrency} concurrent "
          f"requests, {plan.seconds:g} s per row")  # fmt: skip
    rows: list[Row] = []
    bare_rps: dict[tuple[str, int], float] = {}
    # --only with nothing but the front door's scenarios names no row of the table.
    table = not args.only or not all(
        any(text in scenario for scenario in front_door.SCENARIOS) for text in args.only
    )
    for workers in plan.workers if table else ():
        processes = workers or cores
        if args.processes and processes not in args.processes:
            continue
        with servers.bare(processes) as bare:
            for protocol in PROTOCOLS:
                row = _measure(
                    bare, "bare endpoint", protocol, "-", processes, plan, _bare(bare, protocol)
                )
                bare_rps[(protocol, processes)] = row.result.rps
                row.ratio = 1.0
                rows.append(_print(row))
        for backend in backends:
            with _database(backend) as database, tempfile.TemporaryDirectory() as scratch:
                data_dir = Path(scratch) / "data"
                with servers.depot_api(data_dir, processes, database) as server:
                    fixture = _prepare(server, database, data_dir, plan)
                    for scenario, protocol, run in _scenarios(server, fixture, plan):
                        if args.only and not any(text in scenario for text in args.only):
                            continue
                        row = _measure(server, scenario, protocol, backend, processes, plan, run)
                        row.ratio = row.result.rps / bare_rps[(protocol, processes)]
                        rows.append(_print(row))
    if not args.only:
        waiting = asyncio.run(waiting_streams(plan.waiters))
        print()
        print(waiting.describe())
    for described in front_door.run(front_door.QUICK if args.quick else front_door.FULL, args.only):
        print()
        print(described, flush=True)
    if args.json:
        args.json.write_text(json.dumps([_as_dict(r) for r in rows], indent=1))


def _scenarios(
    server: servers.Server, fixture: Fixture, plan: Plan
) -> Iterator[tuple[str, str, Callable[[load.Load], load.Result]]]:
    token = server.org_token
    for protocol in PROTOCOLS:

        def fixed(
            path: str, message: object, protocol: str = protocol
        ) -> Callable[[load.Load], load.Result]:
            return lambda shape: _post(server.url, path, message, protocol, token, shape)

        yield (
            "CreateBuild",
            protocol,
            fixed(
                "depot.build.v1.BuildService/CreateBuild",
                build_pb.CreateBuildRequest(project_id=fixture.project),
            ),
        )
        yield (
            "GetBuild (seed)",
            protocol,
            fixed(
                "depot.build.v1.BuildService/GetBuild",
                build_pb.GetBuildRequest(build_id=fixture.build),
            ),
        )
        yield (
            "GetBuild (real)",
            protocol,
            fixed(
                "depot.core.v1.BuildService/GetBuild",
                core_build_pb.GetBuildRequest(build_id=fixture.build),
            ),
        )
        # An explicit page size: h2load cannot send an empty body (the default request's).
        yield (
            "ListProjects",
            protocol,
            fixed(
                "depot.core.v1.ProjectService/ListProjects",
                project_pb.ListProjectsRequest(page_size=100),
            ),
        )
        for size in plan.sizes:
            project = fixture.list_projects[size]
            yield (
                f"ListBuilds first page, {size:,}",
                protocol,
                fixed(
                    "depot.build.v1.BuildService/ListBuilds",
                    build_pb.ListBuildsRequest(project_id=project),
                ),
            )
            yield (
                f"ListBuilds deep page, {size:,}",
                protocol,
                fixed(
                    "depot.build.v1.BuildService/ListBuilds",
                    build_pb.ListBuildsRequest(
                        project_id=project, page_token=fixture.deep_tokens[size]
                    ),
                ),
            )
        if protocol == "connect-json":
            env = {
                "BENCH_TOKEN": token,
                "BENCH_LUA": str(load.LUA),
                "BENCH_BUILD_IDS": str(fixture.finish_ids),
                "BENCH_THREADS": "2",
                "BENCH_PREFIX": f"bench{secrets.token_hex(3)}",
            }
            yield (
                "FinishBuild",
                protocol,
                lambda shape, env=env: load.wrk(
                    f"{server.url}/depot.build.v1.BuildService/FinishBuild",
                    "finish_build",
                    shape,
                    env,
                ),
            )
            yield (
                "CreateProject",
                protocol,
                lambda shape, env=env: load.wrk(
                    f"{server.url}/depot.core.v1.ProjectService/CreateProject",
                    "create_project",
                    shape,
                    env,
                ),
            )


def _measure(
    server: servers.Server,
    scenario: str,
    protocol: str,
    backend: str,
    processes: int,
    plan: Plan,
    run: Callable[[load.Load], load.Result],
) -> Row:
    usage = servers.Usage(server)
    result = run(load.Load(plan.seconds))
    usage.stop()
    return Row(scenario, protocol, backend, processes, result, usage.cores, usage.max_rss_mb)


def _bare(bare: servers.Server, protocol: str) -> Callable[[load.Load], load.Result]:
    """The same request as GetBuild's, to an endpoint that answers without looking at it."""
    message = core_build_pb.GetBuildRequest(build_id="0000000000")
    path = "depot.core.v1.BuildService/GetBuild"
    return lambda shape: _post(bare.url, path, message, protocol, "none", shape)


def _post(
    url: str, path: str, message: object, protocol: str, token: str, shape: load.Load
) -> load.Result:
    body: bytes = message.to_binary()  # type: ignore[attr-defined]
    headers = {"content-type": _CONTENT_TYPES[protocol], "authorization": f"Bearer {token}"}
    if protocol == "connect-json":
        body = message.to_json().encode()  # type: ignore[attr-defined]
    elif protocol == "grpc":
        body = b"\x00" + len(body).to_bytes(4, "big") + body
        headers["te"] = "trailers"
    return load.h2load(f"{url}/{path}", body, headers, shape, http1=protocol == "connect-json")


def _prepare(server: servers.Server, database: str | None, data_dir: Path, plan: Plan) -> Fixture:
    call = _caller(server)

    def new_project(name: str) -> dict[str, str]:
        body = {"name": name, "regionId": "us-east-1"}
        project: dict[str, str] = call("depot.core.v1.ProjectService/CreateProject", body)[
            "project"
        ]  # type: ignore[assignment]
        return project

    project = new_project("bench")
    org_id = project["organizationId"]
    build = call("depot.build.v1.BuildService/CreateBuild", {"projectId": project["projectId"]})
    db = database or ""
    list_projects: dict[int, str] = {}
    deep_tokens: dict[int, str] = {}
    for index, size in enumerate(plan.sizes):
        listed = new_project(f"list-{size}")["projectId"]
        rows = seed.build_rows(f"l{index}", listed, org_id, size, BuildStatus.SUCCESS)
        seed.insert(db, data_dir, rows)
        list_projects[size] = listed
        middle = rows[size // 2]  # newest first: about half the builds come after it
        deep_tokens[size] = encode_page_token((int(str(middle[4])), str(middle[0])))
    finish_project = new_project("finish")["projectId"]
    running = seed.build_rows("f", finish_project, org_id, plan.finishable, BuildStatus.RUNNING)
    seed.insert(db, data_dir, running)
    finish_ids = data_dir / "finish-ids"
    finish_ids.write_text("".join(f"{r[0]}\n" for r in running))
    return Fixture(
        project["projectId"], str(build["buildId"]), list_projects, deep_tokens, finish_ids
    )


def _caller(server: servers.Server) -> Callable[[str, dict[str, object]], dict[str, object]]:
    def call(path: str, body: dict[str, object]) -> dict[str, object]:
        request = urllib.request.Request(
            f"{server.url}/{path}",
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {server.org_token}",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            parsed: dict[str, object] = json.load(answer)
            return parsed

    return call


@contextmanager
def _database(backend: str) -> Iterator[str | None]:
    if backend == "sqlite":
        yield None
        return
    name = f"depot_bench_{secrets.token_hex(4)}"
    asyncio.run(_on_server(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(_on_server(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _on_server(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


_HEADER = (
    f"{'scenario':<32} {'protocol':<14} {'backend':<10} {'procs':>5} {'req/s':>9} "
    f"{'ratio':>6} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'cores':>6} {'RSS MB':>7}"
)
_printed_header = False


def _print(row: Row) -> Row:
    global _printed_header
    if not _printed_header:
        print(_HEADER)
        _printed_header = True
    r = row.result
    ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
    print(
        f"{row.scenario:<32} {row.protocol:<14} {row.backend:<10} {row.processes:>5} "
        f"{r.rps:>9,.0f} {ratio:>6} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>7} "
        f"{row.cores:>6.2f} {row.rss_mb:>7.0f}",
        flush=True,
    )
    return row


def _as_dict(row: Row) -> dict[str, object]:
    return {
        "scenario": row.scenario,
        "protocol": row.protocol,
        "backend": row.backend,
        "processes": row.processes,
        "rps": row.result.rps,
        "ratio": row.ratio,
        "p50_ms": row.result.p50_ms,
        "p99_ms": row.result.p99_ms,
        "errors": row.result.errors,
        "requests": row.result.requests,
        "cores": row.cores,
        "rss_mb": row.rss_mb,
    }


if __name__ == "__main__":
    main()
