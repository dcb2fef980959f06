"""The BuildStore's contract: a build and its token stored together, one finish that wins,
builds of deleted projects hidden, keyset order, health and machine waits, status reports."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from depot_api.models import BuildStatus
from depot_api.store import Store
from depot_api.store.errors import DuplicateKey
from depot_api.times import to_micros

from .conftest import at, build_records, new_build, new_org, new_project


async def test_a_build_and_its_token_are_stored_together_or_not_at_all(store: Store) -> None:
    project = await new_project(store, (await new_org(store)).id)
    build, token = build_records(project)
    await store.builds.insert_build(build, token)
    assert await store.builds.get_build(build.id) == build
    assert await store.orgs.get_token(token.id) == token

    # The build's ID is taken: its token is not stored either.
    clash, clash_token = build_records(project)
    with pytest.raises(DuplicateKey):
        await store.builds.insert_build(clash._replace(id=build.id), clash_token)
    assert await store.orgs.get_token(clash_token.id) is None
    # Its token's ID is taken: the build is not stored either.
    other, other_token = build_records(project)
    with pytest.raises(DuplicateKey):
        await store.builds.insert_build(other, replace(other_token, id=token.id))
    assert await store.builds.get_build(other.id) is None


async def test_builds_of_a_deleted_project_are_hidden(store: Store) -> None:
    project = await new_project(store, (await new_org(store)).id)
    build = await new_build(store, project)
    await store.projects.delete_project(project.id, at(1))
    assert await store.builds.get_build(build.id) is None
    assert await store.builds.get_build("zzzzzzzzzz") is None


async def test_builds_are_listed_newest_first_from_a_position(store: Store) -> None:
    org = await new_org(store)
    project = await new_project(store, org.id, "app")
    builds = [await new_build(store, project, created=n % 3) for n in range(7)]
    await new_build(store, await new_project(store, org.id, "other"), created=1)
    expected = sorted(builds, key=lambda b: (b.created_at, b.id), reverse=True)
    assert await store.builds.list_builds(project.id, None, 100) == expected
    seen, before = [], None
    while page := await store.builds.list_builds(project.id, before, 3):
        seen += page
        before = (to_micros(page[-1].created_at), page[-1].id)
    assert seen == expected


async def test_builds_of_one_status_are_listed_newest_first_from_a_position(
    store: Store,
) -> None:
    org = await new_org(store)
    project = await new_project(store, org.id, "app")
    statuses = list(BuildStatus)
    builds = []
    for n in range(15):
        build = await new_build(store, project, created=n % 4)
        status = statuses[n % len(statuses)]
        if status is not BuildStatus.RUNNING:
            build = await store.builds.finish_build(build.id, status, at(10), None)
            assert build is not None
        builds.append(build)
    # Another project's failed build is never listed.
    other = await new_build(store, await new_project(store, org.id, "other"), created=1)
    await store.builds.finish_build(other.id, BuildStatus.FAILED, at(10), None)
    newest_first = sorted(builds, key=lambda b: (b.created_at, b.id), reverse=True)
    for status in BuildStatus:
        expected = [b for b in newest_first if b.status is status]
        assert len(expected) == 3
        assert await store.builds.list_builds(project.id, None, 100, status) == expected
        seen, before = [], None
        while page := await store.builds.list_builds(project.id, before, 2, status):
            assert {b.status for b in page} == {status}
            seen += page
            before = (to_micros(page[-1].created_at), page[-1].id)
        assert seen == expected
    # No status: every build, as before.
    assert await store.builds.list_builds(project.id, None, 100, None) == newest_first


async def test_of_concurrent_finishes_exactly_one_wins(store: Store, second_store: Store) -> None:
    project = await new_project(store, (await new_org(store)).id)
    build = await new_build(store, project)
    outcomes = [BuildStatus.SUCCESS, BuildStatus.FAILED, BuildStatus.CANCELED] * 2
    stores = (store, second_store) * 3
    after = await asyncio.gather(
        *(
            s.builds.finish_build(build.id, status, at(n + 1), f"by {n}")
            for n, (s, status) in enumerate(zip(stores, outcomes, strict=True))
        )
    )
    # Every caller sees the build as the one winner left it.
    assert all(a is not None for a in after)
    assert len({(a.status, a.finished_at, a.error_message) for a in after if a}) == 1
    won = await store.builds.get_build(build.id)
    assert won == after[0] and won is not None and won.status is not BuildStatus.RUNNING
    assert await store.builds.finish_build("zzzzzzzzzz", BuildStatus.SUCCESS, at(9), None) is None


async def test_health_is_recorded_only_while_the_build_runs(store: Store) -> None:
    project = await new_project(store, (await new_org(store)).id)
    build = await new_build(store, project)
    assert await store.builds.touch_build_health(build.id, at(1))
    await store.builds.finish_build(build.id, BuildStatus.SUCCESS, at(2), None)
    assert not await store.builds.touch_build_health(build.id, at(3))
    assert await store.builds.note_machine_wait(build.id, at(3)) is None


async def test_a_machine_wait_starts_once_and_ends_when_the_build_starts(store: Store) -> None:
    project = await new_project(store, (await new_org(store)).id)
    build = await new_build(store, project)
    assert await store.builds.note_machine_wait(build.id, at(1)) == at(1)
    assert await store.builds.note_machine_wait(build.id, at(5)) == at(1)  # the same wait
    await store.builds.mark_build_started(build.id, at(6))
    assert await store.builds.note_machine_wait(build.id, at(8)) == at(8)  # a new wait
    await store.builds.mark_build_started(build.id, at(9))
    started = await store.builds.get_build(build.id)
    assert started is not None and started.started_at == at(6)  # the first machine counts


async def test_only_builds_silent_too_long_are_canceled(store: Store) -> None:
    project = await new_project(store, (await new_org(store)).id)
    silent, heard, never, ended = [await new_build(store, project) for _ in range(4)]
    await store.builds.touch_build_health(silent.id, at(10))
    await store.builds.touch_build_health(heard.id, at(100))
    await store.builds.touch_build_health(ended.id, at(10))
    await store.builds.finish_build(ended.id, BuildStatus.SUCCESS, at(20), None)

    assert await store.builds.cancel_silent_builds(silent_since=at(50), now=at(200)) == [silent.id]
    canceled = await store.builds.get_build(silent.id)
    assert canceled is not None
    assert (canceled.status, canceled.finished_at) == (BuildStatus.CANCELED, at(200))
    left = [await store.builds.get_build(b.id) for b in (heard, never, ended)]
    assert [b.status for b in left if b] == [
        BuildStatus.RUNNING,  # heard from since
        BuildStatus.RUNNING,  # never reported: never canceled for silence
        BuildStatus.SUCCESS,
    ]
    assert await store.builds.cancel_silent_builds(silent_since=at(50), now=at(201)) == []


async def test_status_reports_are_kept_in_order_up_to_the_cap(store: Store) -> None:
    project = await new_project(store, (await new_org(store)).id)
    build = await new_build(store, project)
    assert await store.builds.insert_status_report(build.id, at(1), b"one", max_total_bytes=8)
    assert await store.builds.insert_status_report(build.id, at(2), b"two", max_total_bytes=8)
    assert not await store.builds.insert_status_report(build.id, at(3), b"3rd", max_total_bytes=8)
    assert await store.builds.insert_status_report(build.id, at(4), b"4!", max_total_bytes=8)
    reports = await store.builds.list_status_reports(build.id)
    assert [(r.received_at, r.report) for r in reports] == [
        (at(1), b"one"),
        (at(2), b"two"),
        (at(4), b"4!"),
    ]
