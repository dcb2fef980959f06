"""Build insights on a real database (SQLite and PostgreSQL) with real BuildKit status
messages (moby.buildkit.v1.StatusResponse, made with the generated classes and decoded from
their bytes as the agent sends them): the merge, its idempotence, the log cap and its marker,
paging, retention, saved time, counters, and who may report."""

from __future__ import annotations

import tracemalloc
from datetime import timedelta

import pytest
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from depot_api.api.status_messages import decode_status_messages
from depot_api.domain.builds import Outcome
from depot_api.domain.errors import InvalidArgument, InvalidField, NotFound, PermissionDenied
from depot_api.domain.insights import CUT_MARKER_TEXT, DEFAULT_MAX_LOG_BYTES, LogLine, ReportedBuild
from depot_api.domain.machines import HealthReport
from depot_api.domain.principal import Principal
from depot_api.gen.moby.buildkit.v1 import control_pb as c
from depot_api.models import InsightsFlags
from depot_api.wiring import Domain

from ..factories import new_project
from .conftest import Clock
from .test_connections import Agent, _agent, _on_machine

D1, D2, D3 = (f"sha256:{n * 64}" for n in "123")


def ts(seconds: float) -> Timestamp:
    whole = int(seconds)
    return Timestamp(seconds=1_767_225_600 + whole, nanos=int((seconds - whole) * 1e9))


def vertex(digest: str, name: str, **fields: object) -> c.Vertex:
    return c.Vertex(digest=digest, name=name, **fields)  # type: ignore[arg-type]


def log(digest: str, text: bytes, at: float = 1.0, stream: int = 1) -> c.VertexLog:
    return c.VertexLog(vertex=digest, msg=text, timestamp=ts(at), stream=stream)


def raw(*messages: c.StatusResponse) -> list[bytes]:
    return [m.to_binary() for m in messages]


@pytest.fixture
async def agent(domain: Domain) -> Agent:
    return await _agent(domain)


@pytest.fixture
async def project(domain: Domain, admin: Principal) -> str:
    return await new_project(domain, admin)


@pytest.fixture
async def build(domain: Domain, admin: Principal, agent: Agent, project: str) -> str:
    return await _on_machine(domain, admin, agent, project)


async def report(
    domain: Domain, agent: Agent, build: str, messages: list[bytes], **flags: object
) -> None:
    decoded = decode_status_messages(messages, "builds[0].status_responses")
    await domain.insights.report_from_machine(
        agent.principal,
        agent.machine_id,
        [ReportedBuild(build, decoded, InsightsFlags(**flags))],  # type: ignore[arg-type]
    )


async def all_lines(
    domain: Domain, admin: Principal, project: str, build: str, digest: str, page: int
) -> list[LogLine]:
    lines: list[LogLine] = []
    token = ""
    while True:
        got = await domain.insights.step_logs(admin, project, build, digest, page, token)
        assert len(got.items) <= page
        lines.extend(got.items)
        if not got.next_page_token:
            return lines
        token = got.next_page_token


async def test_steps_merge_field_by_field_and_a_resent_batch_changes_nothing(
    domain: Domain, admin: Principal, agent: Agent, project: str, build: str
) -> None:
    batch = raw(
        c.StatusResponse(vertexes=[vertex(D1, "[internal] load build definition")]),
        c.StatusResponse(
            vertexes=[vertex(D2, "[stage-1 2/3] RUN make", inputs=[D1], started=ts(2))]
        ),
        c.StatusResponse(logs=[log(D2, b"compiling\nlinking", 3)]),
        c.StatusResponse(logs=[log(D2, b" done\n", 4, stream=2)]),
        c.StatusResponse(
            vertexes=[
                vertex(D2, "[stage-1 2/3] RUN make", inputs=[D1], started=ts(2), completed=ts(5))
            ]
        ),
        c.StatusResponse(vertexes=[vertex(D3, "[stage-1 3/3] RUN false", error="exit code: 1")]),
    )
    await report(domain, agent, build, batch)
    # The agent retries after an outage: the same batch again, then a part of it.
    await report(domain, agent, build, batch)
    await report(domain, agent, build, batch[2:4])

    page = await domain.insights.steps(admin, project, build, None, None)
    assert [(s.name, s.cached, s.has_logs) for s in page.items] == [
        ("[internal] load build definition", False, False),
        ("[stage-1 2/3] RUN make", False, True),
        ("[stage-1 3/3] RUN false", False, False),
    ]
    make = page.items[1]
    assert make.inputs == (D1,)
    assert (make.started_us, make.completed_us) == (to_micros_ts(2), to_micros_ts(5))
    assert page.items[2].error == "exit code: 1"
    lines = await all_lines(domain, admin, project, build, D2, 10)
    assert [line.message for line in lines] == ["compiling", "linking done"]
    # A line takes the time of the output it began in.
    assert [line.at_us for line in lines] == [to_micros_ts(3), to_micros_ts(3)]
    (counters,) = (await domain.insights.counters([await domain.builds.get(admin, build)])).values()
    assert (counters.total_steps, counters.cached_steps) == (3, 0)


def to_micros_ts(seconds: float) -> int:
    stamp = ts(seconds)
    return stamp.seconds * 1_000_000 + stamp.nanos // 1000


async def test_a_malformed_message_refuses_the_batch_and_stores_nothing(
    domain: Domain, admin: Principal, agent: Agent, project: str, build: str
) -> None:
    good = raw(c.StatusResponse(vertexes=[vertex(D1, "[1/2] FROM busybox")]))
    with pytest.raises(InvalidField) as caught:
        await report(domain, agent, build, [*good, b"\xff\xff\xff"])
    assert caught.value.field == "builds[0].status_responses[1]"
    assert "is not a moby.buildkit.v1.StatusResponse" in caught.value.message
    bad_digest = raw(c.StatusResponse(vertexes=[vertex("not a digest", "x")]))
    with pytest.raises(InvalidField, match=r"vertexes\[0\]\.digest is not a digest"):
        await report(domain, agent, build, [*good, *bad_digest])
    assert (await domain.insights.steps(admin, project, build, None, None)).items == []


async def test_only_the_machine_that_served_the_build_may_report_it(
    domain: Domain, admin: Principal, agent: Agent, project: str, build: str
) -> None:
    other = await _agent(domain)
    message = raw(c.StatusResponse(vertexes=[vertex(D1, "[1/2] FROM busybox")]))
    with pytest.raises(PermissionDenied, match="was not served by machine"):
        await report(domain, other, build, message)
    stranger = Agent(domain, other.principal, agent.machine_id)
    with pytest.raises(NotFound, match="not found; register again"):
        await report(domain, stranger, build, message)
    assert (await domain.insights.steps(admin, project, build, None, None)).items == []


async def test_flags_say_when_insights_are_incomplete_or_partial(
    domain: Domain, admin: Principal, agent: Agent, build: str
) -> None:
    message = raw(c.StatusResponse(vertexes=[vertex(D1, "[1/1] RUN x")]))
    await report(domain, agent, build, message, dropped=7, side_listener=True)
    await report(domain, agent, build, [], dropped=3)
    got = await domain.insights.counters([await domain.builds.get(admin, build)])
    assert (got[build].dropped, got[build].incomplete, got[build].side_listener) == (7, True, True)


async def test_fifty_megabytes_of_output_are_capped_and_marked_in_bounded_memory(
    domain: Domain, admin: Principal, agent: Agent, project: str, build: str
) -> None:
    line = b"x" * 1023 + b"\n"
    megabyte = line * 1024
    await report(domain, agent, build, raw(c.StatusResponse(vertexes=[vertex(D1, "[1/1] RUN")])))
    tracemalloc.start()
    try:
        for n in range(50):
            await report(
                domain, agent, build, raw(c.StatusResponse(logs=[log(D1, megabyte, 10 + n)]))
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A merge holds its batch (1 MiB, its message and its pieces), never the build's log.
    assert peak < 12 * 1024 * 1024, f"peak {peak} bytes while merging 50 MiB"
    got = (await domain.insights.counters([await domain.builds.get(admin, build)]))[build]
    assert got.log_bytes == DEFAULT_MAX_LOG_BYTES
    assert got.log_bytes_cut == 50 * len(megabyte) - DEFAULT_MAX_LOG_BYTES
    lines = await all_lines(domain, admin, project, build, D1, 5000)
    assert len(lines) == DEFAULT_MAX_LOG_BYTES // len(line) + 2  # the marker after a blank
    assert lines[-1].message == CUT_MARKER_TEXT.format(cap=DEFAULT_MAX_LOG_BYTES)
    assert all(entry.message == "x" * 1023 for entry in lines[:-2])


async def test_ten_thousand_steps_page_in_order(
    domain: Domain, admin: Principal, agent: Agent, project: str, build: str
) -> None:
    digests = [f"sha256:{n:064x}" for n in range(10_000)]
    await report(
        domain,
        agent,
        build,
        raw(
            *(
                c.StatusResponse(
                    vertexes=[
                        vertex(d, f"step {n}", cached=n % 2 == 0, started=ts(n), completed=ts(n))
                        for n, d in enumerate(digests[start : start + 1000], start)
                    ]
                )
                for start in range(0, 10_000, 1000)
            )
        ),
    )
    seen, token = [], ""
    while True:
        page = await domain.insights.steps(admin, project, build, 999, token)
        seen.extend(s.digest for s in page.items)
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert seen == digests
    got = (await domain.insights.counters([await domain.builds.get(admin, build)]))[build]
    assert (got.total_steps, got.cached_steps) == (10_000, 5_000)


async def test_saved_time_is_the_latest_uncached_run_of_each_cached_step(
    domain: Domain, admin: Principal, agent: Agent, project: str, build: str
) -> None:
    internal = "sha256:" + "9" * 64
    await report(
        domain,
        agent,
        build,
        raw(
            c.StatusResponse(
                vertexes=[
                    vertex(internal, "[internal] load metadata", started=ts(0), completed=ts(4)),
                    vertex(D1, "[1/2] RUN a", started=ts(0), completed=ts(10)),
                    vertex(D2, "[2/2] RUN b", started=ts(10), completed=ts(13)),
                ]
            )
        ),
    )
    second = await _on_machine(domain, admin, agent, project)
    await report(
        domain,
        agent,
        second,
        raw(
            c.StatusResponse(
                vertexes=[
                    vertex(
                        internal,
                        "[internal] load metadata",
                        cached=True,
                        started=ts(20),
                        completed=ts(20),
                    ),
                    vertex(D1, "[1/2] RUN a", cached=True, started=ts(20), completed=ts(20)),
                    vertex(D2, "[2/2] RUN b", started=ts(20), completed=ts(22)),
                ]
            )
        ),
    )
    builds = [await domain.builds.get(admin, b) for b in (build, second)]
    got = await domain.insights.counters(builds)
    # The internal step does not count; RUN a saved its 10 s; RUN b ran again.
    assert (got[second].saved_us, got[second].cached_steps, got[second].total_steps) == (
        10_000_000,
        2,
        3,
    )
    assert got[build].saved_us == 0


async def test_logs_expire_with_the_retention_and_the_counters_stay(
    domain: Domain, admin: Principal, agent: Agent, project: str, build: str, clock: Clock
) -> None:
    await report(
        domain,
        agent,
        build,
        raw(c.StatusResponse(vertexes=[vertex(D1, "[1/1] RUN")], logs=[log(D1, b"hello\n")])),
    )
    assert [x.message for x in await all_lines(domain, admin, project, build, D1, 5)] == ["hello"]
    other = await _on_machine(domain, admin, agent, project)
    clock.advance(timedelta(days=30, seconds=1).total_seconds())
    # Past the retention the logs are gone at once for readers, and deleted at the next merge.
    assert await all_lines(domain, admin, project, build, D1, 5) == []
    await report(domain, agent, other, raw(c.StatusResponse(vertexes=[vertex(D2, "x")])))
    got = (await domain.insights.counters([await domain.builds.get(admin, build)]))[build]
    assert (got.logs_expired, got.total_steps) == (True, 1)
    (step,) = (await domain.insights.steps(admin, project, build, None, None)).items
    assert not step.has_logs
    assert await domain.store.insights.read_log(build, D1, from_seq=0, limit=5) == []


async def test_paging_tokens_and_reads_out_of_reach(
    domain: Domain, admin: Principal, agent: Agent, project: str, build: str
) -> None:
    with pytest.raises(InvalidField, match="page_token is not a page token"):
        await domain.insights.steps(admin, project, build, None, "nonsense")
    with pytest.raises(NotFound):
        await domain.insights.steps(admin, "0123456789", build, None, None)
    with pytest.raises(NotFound, match="has no step"):
        await domain.insights.step_logs(admin, project, build, D1, None, None)
    with pytest.raises(InvalidField, match="page_size must be between"):
        await domain.insights.steps(admin, project, build, 10_001, None)


async def test_usage_counts_builds_and_their_time_in_the_window_and_the_machines_cache(
    domain: Domain, admin: Principal, agent: Agent, project: str, build: str, clock: Clock
) -> None:
    # The build ran 10 s (from its machine to its end), and its machine reports 3 GiB + 1 of
    # cache for the project.
    clock.advance(10)
    await domain.builds.finish(admin, build, Outcome.success())
    await domain.machines.heartbeat(
        agent.principal,
        agent.machine_id,
        HealthReport(agent.running, True, 3 * 1024**3 + 1, ""),
    )
    other = await new_project(domain, admin, "other")
    window = domain.usage.window(None, None)
    got = await domain.usage.of_project(admin, project, window)
    assert (got.build_count, got.cache_bytes) == (1, 3 * 1024**3 + 1)
    assert 9.9 <= got.build_seconds <= 10.1
    everyone = await domain.usage.of_organizations(admin, window)
    assert {(u.project_id, u.build_count) for u in everyone} == {(project, 1), (other, 0)}
    # A window before the build holds none of it.
    before = domain.usage.window(None, clock.now - timedelta(days=1))
    assert (await domain.usage.of_project(admin, project, before)).build_count == 0
    with pytest.raises(InvalidArgument, match="must be before end_at"):
        domain.usage.window(clock.now, clock.now)
