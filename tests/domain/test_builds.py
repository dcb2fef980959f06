from __future__ import annotations

import asyncio

import pytest

from depot_api.domain.builds import Outcome, duration_seconds
from depot_api.domain.errors import FailedPrecondition, InvalidArgument, Unauthenticated
from depot_api.domain.principal import Principal
from depot_api.models import BuildStatus
from depot_api.wiring import Domain

from ..factories import new_project
from .conftest import Clock


async def test_a_build_finishes_once(domain: Domain, admin: Principal, clock: Clock) -> None:
    build, _ = await domain.builds.create(admin, await new_project(domain, admin))
    assert build.status is BuildStatus.RUNNING
    clock.advance(42)
    finished = await domain.builds.finish(admin, build.id, Outcome.success())
    assert finished.status is BuildStatus.SUCCESS
    assert finished.finished_at == clock.now
    assert duration_seconds(finished) == 42

    again = await domain.builds.finish(admin, build.id, Outcome.success())
    assert again == finished  # the same finish again is a no-op

    with pytest.raises(FailedPrecondition, match="already finished as success"):
        await domain.builds.finish(admin, build.id, Outcome.failed("late"))
    assert (await domain.builds.get(admin, build.id)).status is BuildStatus.SUCCESS


async def test_the_first_error_message_is_kept(domain: Domain, admin: Principal) -> None:
    build, _ = await domain.builds.create(admin, await new_project(domain, admin))
    await domain.builds.finish(admin, build.id, Outcome.failed("first"))
    repeated = await domain.builds.finish(admin, build.id, Outcome.failed("second"))
    assert (repeated.status, repeated.error_message) == (BuildStatus.FAILED, "first")


async def test_concurrent_finishes_have_one_winner(domain: Domain, admin: Principal) -> None:
    project = await new_project(domain, admin)
    for _ in range(5):
        build, _ = await domain.builds.create(admin, project)
        outcomes = [Outcome.success(), Outcome.failed("x"), Outcome.canceled()] * 3
        results = await asyncio.gather(
            *(domain.builds.finish(admin, build.id, o) for o in outcomes), return_exceptions=True
        )
        winners = {r.status for r in results if not isinstance(r, BaseException)}
        assert len(winners) == 1
        losers = [r for r in results if isinstance(r, BaseException)]
        assert all(isinstance(e, FailedPrecondition) for e in losers)
        assert len(losers) == 6


async def test_error_message_length_is_bounded() -> None:
    with pytest.raises(InvalidArgument, match="too long"):
        Outcome.failed("x" * 70_000)


async def test_build_token_lives_until_grace_after_the_end(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    build, secret = await domain.builds.create(admin, await new_project(domain, admin))
    principal = await domain.authenticator.authenticate(f"Bearer {secret}")
    assert principal.build_id == build.id
    clock.advance(3600)  # a long build: still valid while it runs
    await domain.authenticator.authenticate(f"Bearer {secret}")

    await domain.builds.finish(principal, build.id, Outcome.success())
    clock.advance(59)
    await domain.authenticator.authenticate(f"Bearer {secret}")  # within the grace period
    clock.advance(1)
    with pytest.raises(Unauthenticated, match="expired"):
        await domain.authenticator.authenticate(f"Bearer {secret}")


async def test_build_token_dies_with_its_project(domain: Domain, admin: Principal) -> None:
    project = await new_project(domain, admin)
    _, secret = await domain.builds.create(admin, project)
    await domain.projects.delete(admin, project)
    with pytest.raises(Unauthenticated):
        await domain.authenticator.authenticate(f"Bearer {secret}")


async def test_listing_pages_newest_first(domain: Domain, admin: Principal, clock: Clock) -> None:
    project = await new_project(domain, admin)
    created = []
    for _ in range(7):
        build, _ = await domain.builds.create(admin, project)
        created.append(build.id)
        clock.advance(1)
    seen: list[str] = []
    token = None
    while True:
        page = await domain.builds.list(admin, project, 3, token)
        seen += [b.id for b in page.items]
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert seen == list(reversed(created))


async def test_listing_one_status_pages_through_that_status_alone(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    project = await new_project(domain, admin)
    failed, other = [], []
    for n in range(9):
        build, _ = await domain.builds.create(admin, project)
        if n % 3 == 0:
            await domain.builds.finish(admin, build.id, Outcome.failed("broken"))
            failed.append(build.id)
        else:
            await domain.builds.finish(admin, build.id, Outcome.success())
            other.append(build.id)
        clock.advance(1)
    first = await domain.builds.list(admin, project, 2, None, BuildStatus.FAILED)
    assert [b.id for b in first.items] == failed[::-1][:2]
    assert first.next_page_token
    second = await domain.builds.list(admin, project, 2, first.next_page_token, BuildStatus.FAILED)
    assert [b.id for b in second.items] == failed[::-1][2:]
    assert second.next_page_token == ""
    assert (await domain.builds.list(admin, project, 10, None, BuildStatus.RUNNING)).items == []
    # Without a status, as the RPCs call it: every build.
    everything = await domain.builds.list(admin, project, 100, None)
    assert sorted(b.id for b in everything.items) == sorted(failed + other)


async def test_builds_in_the_same_instant_page_by_id(domain: Domain, admin: Principal) -> None:
    project = await new_project(domain, admin)
    ids = {(await domain.builds.create(admin, project))[0].id for _ in range(5)}
    first = await domain.builds.list(admin, project, 2, None)
    second = await domain.builds.list(admin, project, 2, first.next_page_token)
    third = await domain.builds.list(admin, project, 2, second.next_page_token)
    pages = [b.id for p in (first, second, third) for b in p.items]
    assert sorted(pages) == sorted(ids) and len(pages) == 5
    assert third.next_page_token == ""
