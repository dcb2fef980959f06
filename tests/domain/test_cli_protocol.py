"""What the depot CLI's protocol needs from the domain: a polled wait for a machine with a
deadline kept in the database, health answers that say when a build ended, and progress
reports kept frame by frame up to a cap."""

from __future__ import annotations

from datetime import timedelta

import pytest

from depot_api.domain.build_reports import BuildReports
from depot_api.domain.builds import Outcome
from depot_api.domain.endpoints import Pending
from depot_api.domain.errors import FailedPrecondition, PermissionDenied, ResourceExhausted
from depot_api.domain.principal import Principal
from depot_api.models import BuildStatus, Platform, TokenKind
from depot_api.wiring import Domain

from .conftest import Clock

# The default in Settings; the domain fixture uses it.
ACQUIRE_TIMEOUT = timedelta(seconds=300)


async def _running_build(domain: Domain, admin: Principal, project_name: str = "p") -> str:
    project = await domain.projects.create(
        admin,
        name=project_name,
        region_id="us-east-1",
        organization_id=None,
        cache_policy=None,
        hardware=None,
    )
    build, _ = await domain.builds.create(admin, project.id)
    return build.id


async def test_poll_is_pending_until_the_deadline_then_exhausted(
    patient_domain: Domain, admin: Principal, clock: Clock
) -> None:
    # No machine at all: with --wait-for-machines the build waits for one all the same.
    domain = patient_domain
    build_id = await _running_build(domain, admin)

    first = await domain.endpoints.poll(admin, build_id, Platform.AMD64)
    assert first == Pending(retry_after=timedelta(seconds=1))
    clock.advance(ACQUIRE_TIMEOUT.total_seconds() - 1)
    assert isinstance(await domain.endpoints.poll(admin, build_id, Platform.AMD64), Pending)

    clock.advance(1)  # the deadline counts from the first poll, not the last
    with pytest.raises(ResourceExhausted, match="no amd64 BuildKit machine became ready"):
        await domain.endpoints.poll(admin, build_id, Platform.AMD64)


async def test_the_wait_is_shared_by_every_process(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    """The deadline lives in the database: a second domain over the same store (another
    server process) sees the wait the first one started."""
    build_id = await _running_build(domain, admin)
    await domain.endpoints.poll(admin, build_id, Platform.AMD64)
    since = await domain.store.builds.note_machine_wait(build_id, clock() + timedelta(seconds=5))
    assert since == clock()


async def test_an_ended_build_cannot_poll(domain: Domain, admin: Principal) -> None:
    build_id = await _running_build(domain, admin)
    await domain.builds.finish(admin, build_id, Outcome.canceled())
    with pytest.raises(FailedPrecondition, match="has ended"):
        await domain.endpoints.poll(admin, build_id, Platform.AMD64)


async def test_health_is_silent_while_running_and_names_the_end_after(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    build_id = await _running_build(domain, admin)
    assert await domain.endpoints.health(admin, build_id) is None

    clock.advance(3)
    ended = await domain.builds.finish(admin, build_id, Outcome.failed("boom"))
    clock.advance(3)
    assert await domain.endpoints.health(admin, build_id) == ended.finished_at


async def test_health_names_the_end_of_a_build_the_server_canceled(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    build_id = await _running_build(domain, admin)
    await domain.endpoints.health(admin, build_id)  # from now on, silence cancels it
    clock.advance(timedelta(hours=1).total_seconds())
    assert await domain.endpoints.cancel_silent_builds() == [build_id]

    canceled_at = await domain.endpoints.health(admin, build_id)
    assert canceled_at == clock()
    build = await domain.builds.get(admin, build_id)
    assert build.status is BuildStatus.CANCELED


async def test_reports_are_kept_in_order(domain: Domain, admin: Principal) -> None:
    build_id = await _running_build(domain, admin)
    sink = domain.build_reports.sink(admin)
    await sink.keep(build_id, b"first")
    await sink.keep(build_id, b"second")
    kept = await domain.build_reports.list(admin, build_id)
    assert [r.report for r in kept] == [b"first", b"second"]


async def test_reports_beyond_the_cap_are_dropped(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    build_id = await _running_build(domain, admin)
    reports = BuildReports(domain.store.builds, domain.builds, now=clock, max_bytes_per_build=10)
    sink = reports.sink(admin)
    await sink.keep(build_id, b"123456")
    await sink.keep(build_id, b"7890")  # exactly at the cap
    await sink.keep(build_id, b"x")  # over: dropped, not refused
    kept = await reports.list(admin, build_id)
    assert [r.report for r in kept] == [b"123456", b"7890"]


async def test_a_build_token_reports_for_its_own_build_only(
    domain: Domain, admin: Principal
) -> None:
    build_id = await _running_build(domain, admin)
    other_id = await _running_build(domain, admin, "q")
    build = await domain.builds.get(admin, build_id)
    token = Principal(
        "t", TokenKind.BUILD, frozenset({build.org_id}), project_id=build.project_id,
        build_id=build_id,
    )  # fmt: skip
    sink = domain.build_reports.sink(token)
    await sink.keep(build_id, b"mine")
    with pytest.raises(PermissionDenied):
        await sink.keep(other_id, b"theirs")
    assert await domain.build_reports.list(admin, other_id) == []
