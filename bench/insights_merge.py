"""The build insights merge and its readers, timed in one process against each backend (the
domain over a real SQLite file and a fresh PostgreSQL database), with real StatusResponse
bytes as an agent sends them:

    python -m bench.insights_merge [--backend sqlite|postgresql]

- 10 000 steps in one ReportBuildStatus call (ten messages of 1 000 vertexes), then the same
  call again (all of it already merged);
- 50 MiB of one step's output in 50 calls of 1 MiB (the log capped at 16 MiB);
- every step read back with GetBuildSteps (pages of 1 000), and the capped log read back with
  GetBuildStepLogs (pages of 5 000 lines).

Prints one line per measurement: seconds, and the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from bench.run import _database
from depot_api.api.status_messages import decode_status_messages
from depot_api.config import Settings
from depot_api.domain.endpoints import Active
from depot_api.domain.insights import ReportedBuild
from depot_api.domain.machines import Assignment, HealthReport
from depot_api.domain.principal import Principal
from depot_api.gen.moby.buildkit.v1 import control_pb as c
from depot_api.models import InsightsFlags, Platform, TokenKind
from depot_api.store import open_store
from depot_api.wiring import build_domain


async def _timed(
    label: str, amount: float, unit: str, work: Callable[[], Awaitable[object]]
) -> None:
    start = time.perf_counter()
    await work()
    took = time.perf_counter() - start
    print(f"{label:<58} {took:8.3f} s  {amount / took:12,.0f} {unit}/s")


async def _run(url: str, data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir, database=url, wait_for_machines=True)
    store = open_store(url)
    await store.migrate()
    domain = build_domain(store, settings)
    try:
        org = await domain.organizations.create("bench")
        admin = Principal("t", TokenKind.ORG, frozenset({org.id}))
        project = await domain.projects.create(
            admin, name="bench", region_id="us-east-1", organization_id=None,
            cache_policy=None, hardware=None,
        )  # fmt: skip
        token, _ = await domain.tokens.create_machine_token("bench")
        agent = Principal(token.id, TokenKind.MACHINE, frozenset())
        machine = await domain.machines.register(agent, Platform.AMD64, "127.0.0.1:1", 1)
        build, _ = await domain.builds.create(admin, project.id)
        running = ""
        while not isinstance(await domain.endpoints.poll(admin, build.id, Platform.AMD64), Active):
            desired = await domain.machines.heartbeat(
                agent, machine.id, HealthReport(running, bool(running), 0, "")
            )
            if isinstance(desired, Assignment) and desired.server_cert:
                running = desired.binding_id

        def report(raw: list[bytes]) -> Callable[[], Awaitable[object]]:
            async def call() -> None:
                messages = decode_status_messages(raw, "status_responses")
                await domain.insights.report_from_machine(
                    agent, machine.id, [ReportedBuild(build.id, messages, InsightsFlags())]
                )

            return call

        steps = [
            c.StatusResponse(
                vertexes=[
                    c.Vertex(
                        digest=f"sha256:{n:064x}", name=f"[{n}] RUN step {n}",
                        started=Timestamp(seconds=1_767_225_600 + n),
                        completed=Timestamp(seconds=1_767_225_601 + n),
                    )
                    for n in range(start, start + 1000)
                ]
            ).to_binary()
            for start in range(0, 10_000, 1000)
        ]  # fmt: skip
        await _timed("10 000 steps in one call", 10_000, "steps", report(steps))
        again = "the same 10 000 steps again (all already merged)"
        await _timed(again, 10_000, "steps", report(steps))
        megabyte = (b"x" * 1023 + b"\n") * 1024

        async def fifty() -> None:
            for n in range(50):
                log = c.VertexLog(
                    vertex="sha256:" + "0" * 64,
                    msg=megabyte,
                    stream=1,
                    timestamp=Timestamp(seconds=1_767_225_600 + n),
                )
                await report([c.StatusResponse(logs=[log]).to_binary()])()

        await _timed("50 MiB of output in 50 calls (capped at 16 MiB)", 50, "MiB", fifty)

        async def read_steps() -> None:
            token = ""
            while True:
                page = await domain.insights.steps(admin, "", build.id, 1000, token)
                if not page.next_page_token:
                    return
                token = page.next_page_token

        await _timed("GetBuildSteps: 10 000 steps in pages of 1 000", 10_000, "steps", read_steps)

        async def read_log() -> None:
            token = ""
            while True:
                page = await domain.insights.step_logs(
                    admin, "", build.id, "sha256:" + "0" * 64, 5000, token
                )
                if not page.next_page_token:
                    return
                token = page.next_page_token

        await _timed("GetBuildStepLogs: 16 MiB in pages of 5 000 lines", 16, "MiB", read_log)
    finally:
        await domain.endpoints.close()
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), action="append")
    args = parser.parse_args()
    for backend in args.backend or ("sqlite", "postgresql"):
        print(f"-- {backend}")
        with tempfile.TemporaryDirectory() as directory, _database(backend) as url:
            from depot_api.store.urls import sqlite_url

            asyncio.run(_run(url or sqlite_url(Path(directory)), Path(directory)))


if __name__ == "__main__":
    main()
