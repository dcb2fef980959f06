"""A build is not kept waiting for a machine that can never come: when no machine of its
platform that could take its project has been heard from within the machine liveness bound,
GetEndpoint (streamed) and the CLI's polled GetBuildKitConnection answer failed_precondition at
once, naming what to do; --wait-for-machines waits anyway. Waiting builds are logged."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from depot_api.domain.endpoints import Active, Pending
from depot_api.domain.errors import FailedPrecondition
from depot_api.domain.machines import HealthReport
from depot_api.domain.principal import Principal
from depot_api.domain.waiting import WaitingBuilds
from depot_api.models import Machine, Platform, TokenKind
from depot_api.wiring import Domain

from ..factories import new_project
from .conftest import Clock

# The defaults in Settings, which the domain fixture uses.
LOST_AFTER = 15.0
# A process refuses no build for this long after it starts: five heartbeats of 1 s.
STARTUP_GRACE = 5.0

NOTHING_TO_WAIT_FOR = "no amd64 BuildKit machine to wait for"


async def _build(domain: Domain, admin: Principal, project: str = "app") -> str:
    build, _ = await domain.builds.create(admin, await new_project(domain, admin, project))
    return build.id


async def _agent(domain: Domain, platform: Platform = Platform.AMD64) -> tuple[Principal, Machine]:
    token, _ = await domain.tokens.create_machine_token("agents")
    principal = Principal(token.id, TokenKind.MACHINE, frozenset())
    return principal, await domain.machines.register(principal, platform, "127.0.0.1:1234", 1)


async def _heartbeat(domain: Domain, agent: Principal, machine: Machine) -> None:
    await domain.machines.heartbeat(agent, machine.id, HealthReport("", False, 0, ""))


def _assert_names_what_to_do(message: str) -> None:
    assert message.startswith(NOTHING_TO_WAIT_FOR), message
    assert f"heard from in the last {LOST_AFTER:g}s" in message
    assert "depot-api agent --platform amd64" in message
    assert "docs/machines.md" in message
    assert "--wait-for-machines" in message and "DEPOT_API_WAIT_FOR_MACHINES" in message


async def test_a_poll_with_no_machine_at_all_is_refused_naming_what_to_do(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    build_id = await _build(domain, admin)
    clock.advance(STARTUP_GRACE)
    with pytest.raises(FailedPrecondition) as refused:
        await domain.endpoints.poll(admin, build_id, Platform.AMD64)
    _assert_names_what_to_do(refused.value.message)


async def test_a_stream_with_no_machine_at_all_is_refused_before_any_pending(
    domain: Domain, admin: Principal, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="depot_api")
    build_id = await _build(domain, admin)
    clock.advance(STARTUP_GRACE)
    stream = domain.endpoints.acquire(admin, build_id, Platform.AMD64)
    with pytest.raises(FailedPrecondition) as refused:
        await asyncio.wait_for(anext(stream), 10)
    _assert_names_what_to_do(refused.value.message)
    # The server says so too (it used to log nothing); the build never waited.
    (logged,) = [r for r in caplog.records if build_id in r.getMessage()]
    assert logged.levelno == logging.WARNING
    assert logged.getMessage().startswith(
        f"build {build_id} asked for a BuildKit machine (amd64), but no agent that could take "
        "it has been heard from in the last 15s: refused"
    )


async def test_a_machine_of_the_other_platform_does_not_count(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    await _agent(domain, Platform.ARM64)
    build_id = await _build(domain, admin)
    clock.advance(STARTUP_GRACE)
    with pytest.raises(FailedPrecondition, match=NOTHING_TO_WAIT_FOR):
        await domain.endpoints.poll(admin, build_id, Platform.AMD64)
    # The arm64 machine is there for arm64: that wait goes on.
    assert isinstance(await domain.endpoints.poll(admin, build_id, Platform.ARM64), Pending)


async def test_a_busy_machine_heard_from_lately_is_worth_waiting_for_until_it_is_lost(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    """The only machine serves another project (it may be released): builds wait while its
    agent is heard from, also between heartbeats, and are refused once it is lost."""
    agent, machine = await _agent(domain)
    busy = await _build(domain, admin, "busy")
    waiting = await _build(domain, admin, "waiting")
    clock.advance(STARTUP_GRACE)
    await _heartbeat(domain, agent, machine)
    assert isinstance(await domain.endpoints.poll(admin, busy, Platform.AMD64), Pending)

    assert isinstance(await domain.endpoints.poll(admin, waiting, Platform.AMD64), Pending)
    clock.advance(LOST_AFTER - 1)  # silent, but not yet lost
    assert isinstance(await domain.endpoints.poll(admin, waiting, Platform.AMD64), Pending)

    clock.advance(2)  # lost: nothing is left to wait for
    with pytest.raises(FailedPrecondition, match=NOTHING_TO_WAIT_FOR):
        await domain.endpoints.poll(admin, waiting, Platform.AMD64)

    await _heartbeat(domain, agent, machine)  # the agent is back
    assert isinstance(await domain.endpoints.poll(admin, waiting, Platform.AMD64), Pending)


async def test_a_stream_that_waits_is_refused_once_every_machine_is_lost(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    agent, machine = await _agent(domain)
    busy = await _build(domain, admin, "busy")
    waiting = await _build(domain, admin, "waiting")
    clock.advance(STARTUP_GRACE)
    await _heartbeat(domain, agent, machine)
    await domain.endpoints.poll(admin, busy, Platform.AMD64)  # the machine serves "busy"

    events: list[Pending | Active] = []

    async def read_to_the_end() -> None:
        async for event in domain.endpoints.acquire(admin, waiting, Platform.AMD64):
            events.append(event)

    reader = asyncio.create_task(read_to_the_end())
    await asyncio.sleep(1)  # the stream sent `pending` and sleeps on the change feed
    assert events and isinstance(events[0], Pending)
    clock.advance(LOST_AFTER + 1)
    # The change feed sees the machine fall silent and wakes the stream, which gives up.
    with pytest.raises(FailedPrecondition, match=NOTHING_TO_WAIT_FOR):
        await asyncio.wait_for(reader, 10)


async def test_a_draining_machine_counts_only_for_the_project_it_serves(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    agent, machine = await _agent(domain)
    served = await _build(domain, admin, "served")
    clock.advance(STARTUP_GRACE)
    await _heartbeat(domain, agent, machine)
    assert isinstance(await domain.endpoints.poll(admin, served, Platform.AMD64), Pending)
    await domain.machines.drain(machine.id)
    await _heartbeat(domain, agent, machine)

    # A draining machine takes no new project: another project has nothing to wait for.
    other = await _build(domain, admin, "other")
    with pytest.raises(FailedPrecondition, match=NOTHING_TO_WAIT_FOR):
        await domain.endpoints.poll(admin, other, Platform.AMD64)
    # The project it serves keeps it, new builds included.
    again = await domain.builds.create(admin, (await domain.builds.get(admin, served)).project_id)
    assert isinstance(await domain.endpoints.poll(admin, again[0].id, Platform.AMD64), Pending)


async def test_a_process_that_just_started_gives_agents_a_few_heartbeats(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    """After a restart, agents that kept heartbeating into the void reach the new process
    within a heartbeat: a build asking before then waits instead of being refused."""
    build_id = await _build(domain, admin)
    assert isinstance(await domain.endpoints.poll(admin, build_id, Platform.AMD64), Pending)
    clock.advance(STARTUP_GRACE)
    with pytest.raises(FailedPrecondition, match=NOTHING_TO_WAIT_FOR):
        await domain.endpoints.poll(admin, build_id, Platform.AMD64)


async def test_with_wait_for_machines_a_build_waits_without_any_machine(
    patient_domain: Domain, admin: Principal, clock: Clock
) -> None:
    build_id = await _build(patient_domain, admin)
    clock.advance(STARTUP_GRACE + LOST_AFTER)
    assert isinstance(await patient_domain.endpoints.poll(admin, build_id, Platform.AMD64), Pending)
    stream = patient_domain.endpoints.acquire(admin, build_id, Platform.AMD64)
    assert isinstance(await asyncio.wait_for(anext(stream), 10), Pending)
    await stream.aclose()

    # And when an agent starts on demand, the build gets its machine.
    agent, machine = await _agent(patient_domain)
    await patient_domain.endpoints.poll(admin, build_id, Platform.AMD64)  # binds it
    bound = await patient_domain.store.machines.get_machine(machine.id)
    assert bound is not None and bound.binding_id is not None
    await patient_domain.machines.heartbeat(
        agent, machine.id, HealthReport(bound.binding_id, True, 0, "")
    )
    assert isinstance(await patient_domain.endpoints.poll(admin, build_id, Platform.AMD64), Active)


async def test_waits_are_logged_with_how_many_which_platform_and_how_long(
    domain: Domain,
    admin: Principal,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="depot_api")
    agent, machine = await _agent(domain)
    busy = await _build(domain, admin, "busy")
    clock.advance(STARTUP_GRACE)
    await _heartbeat(domain, agent, machine)
    await domain.endpoints.poll(admin, busy, Platform.AMD64)  # the machine serves "busy"
    polled, polled_token = await domain.builds.create(
        admin, await new_project(domain, admin, "polled")
    )
    streamed = await _build(domain, admin, "streamed")

    await domain.endpoints.poll(admin, polled.id, Platform.AMD64)
    clock.advance(7)
    await _heartbeat(domain, agent, machine)
    await domain.endpoints.poll(admin, polled.id, Platform.AMD64)
    stream = domain.endpoints.acquire(admin, streamed, Platform.AMD64)
    await asyncio.wait_for(anext(stream), 10)
    began = [r.getMessage() for r in caplog.records if "is waiting for" in r.getMessage()]
    assert began == [
        f"build {busy} is waiting for a BuildKit machine (amd64)",
        f"build {polled.id} is waiting for a BuildKit machine (amd64)",  # once, not per poll
        f"build {streamed} is waiting for a BuildKit machine (amd64)",
    ]

    # "busy" stopped polling 7 s ago (below the 10 s it still counts for); "polled" waited 7 s.
    summary = domain.endpoints.waiting.summary()
    assert summary == (
        "3 build(s) waiting for a BuildKit machine in this process (amd64: 3, longest 7s)"
    )
    await stream.aclose()
    clock.advance(11)  # the polling clients stopped asking
    assert domain.endpoints.waiting.summary() is None
    assert all(
        polled_token not in r.getMessage() and "PRIVATE KEY" not in r.getMessage()
        for r in caplog.records
    )


async def test_the_summary_is_logged_periodically_while_builds_wait(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="depot_api")
    # A summary every 50 ms instead of every 30 s.
    waiting = WaitingBuilds(now=clock, summary_every=0.05, poll_counts_for=timedelta(seconds=10))
    summary = (
        "2 build(s) waiting for a BuildKit machine in this process "
        "(amd64: 1, longest 3s; arm64: 1, longest 1s)"
    )
    try:
        with waiting.stream("a1b2c3d4e5", Platform.AMD64) as began:
            began()
            clock.advance(2)
            waiting.polled("f6g7h8i9j0", Platform.ARM64, clock(), began=True)
            clock.advance(1)
            for _ in range(200):
                if any(r.getMessage() == summary for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
            assert any(
                r.getMessage() == summary and r.levelno == logging.INFO for r in caplog.records
            ), caplog.text
        waiting.poll_ended("f6g7h8i9j0", Platform.ARM64)
        await asyncio.sleep(0.2)  # the reporter sees no wait, and ends
        caplog.clear()
        await asyncio.sleep(0.2)
        assert not any("in this process" in r.getMessage() for r in caplog.records)
    finally:
        await waiting.close()
