"""The insights store on both databases: concurrent merges into one build from two
processes' stores apply one after the other (each step once, positions distinct, every log
piece kept once), and a message merged by one is skipped by the other."""

from __future__ import annotations

import asyncio

from depot_api.models import InsightsFlags, LogPiece, MergeLimits, StatusMessage, VertexUpdate
from depot_api.store import Store

from .conftest import new_build, new_org, new_project

LIMITS = MergeLimits(max_log_bytes=1 << 20, cut_marker=b"\n[cut]\n")


def message(n: int) -> StatusMessage:
    digest = f"sha256:{n:064x}"
    return StatusMessage(
        key=f"{n:064x}",
        vertexes=(VertexUpdate(digest, f"step {n}", (), n, n + 1, False, ""),),
        logs=(LogPiece(digest, n, 1, f"line {n}\n".encode()),),
    )


async def test_concurrent_merges_into_one_build_apply_one_after_the_other(
    store: Store, second_store: Store
) -> None:
    org = await new_org(store)
    project = await new_project(store, org.id)
    build = await new_build(store, project)
    messages = [message(n) for n in range(200)]

    async def merge(into: Store, part: list[StatusMessage]) -> int:
        merged = 0
        for start in range(0, len(part), 10):
            result = await into.insights.merge(
                build.id,
                project_id=project.id,
                build_created_us=build.created_us,
                messages=part[start : start + 10],
                flags=InsightsFlags(),
                limits=LIMITS,
                now_us=build.created_us,
            )
            merged += result.merged
        return merged

    # Both send everything, in opposite orders: each message is merged exactly once.
    merged = await asyncio.gather(
        merge(store, messages), merge(second_store, list(reversed(messages)))
    )
    assert sum(merged) == 200
    steps = await store.insights.list_steps(build.id, after=-1, limit=1000)
    assert sorted(s.digest for s in steps) == sorted(m.vertexes[0].digest for m in messages)
    assert sorted(s.position for s in steps) == list(range(200))
    for n in (0, 77, 199):
        chunks = await store.insights.read_log(build.id, f"sha256:{n:064x}", from_seq=0, limit=5)
        assert [c.data for c in chunks] == [f"line {n}\n".encode()]
    (got,) = (await store.insights.insights([build.id])).values()
    assert (got.total_steps, got.log_bytes) == (200, sum(len(f"line {n}\n") for n in range(200)))
