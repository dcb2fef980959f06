"""The ConnectionStore's contract: what admission reads in one statement, reports upserted by
(machine, connection ID) with counts that only grow, the week's bound, and the listing."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from depot_api.domain.ids import new_id
from depot_api.models import Binding, Build, BuildStatus, Machine, MachineConnection, Platform
from depot_api.store import Store

from .conftest import at, new_build, new_machine, new_org, new_project

AMD64 = Platform.AMD64
# A bound the tests' reports are all within, unless a test moves it.
KEEP_ALL = at(-1)


async def _bound(store: Store) -> tuple[Machine, Build]:
    """A machine bound to a project, with a running build that holds an endpoint on it."""
    machine = await new_machine(store)
    project = await new_project(store, (await new_org(store)).id)
    build = await new_build(store, project)
    binding_id = new_id()
    claimed = await store.machines.acquire_machine(
        build_id=build.id,
        project_id=project.id,
        platform=AMD64,
        now=at(1),
        lost_before=at(-100),
        binding=Binding(binding_id, f"{binding_id}.machines.test"),
    )
    assert claimed is not None and claimed.id == machine.id
    return claimed, build


def _report(
    machine_id: str,
    connection_id: str = "c1",
    *,
    build_id: str = "",
    opened: float = 10,
    closed: float | None = None,
    bytes_in: int = 0,
    bytes_out: int = 0,
    reported: float = 20,
    admitted: bool = True,
    refusal: str = "",
) -> MachineConnection:
    return MachineConnection(
        machine_id=machine_id,
        connection_id=connection_id,
        build_id=build_id,
        binding_id="b1",
        peer="10.1.2.3:45678",
        opened_at=at(opened),
        closed_at=None if closed is None else at(closed),
        admitted=admitted,
        refusal=refusal,
        bytes_from_client=bytes_in,
        bytes_to_client=bytes_out,
        reported_at=at(reported),
    )


async def _record(
    store: Store, machine_id: str, *reports: MachineConnection, keep_since: datetime = KEEP_ALL
) -> None:
    await store.connections.record_connections(machine_id, list(reports), keep_since=keep_since)


async def _all(store: Store, machine_id: str | None = None) -> list[MachineConnection]:
    return await store.connections.list_connections(machine_id=machine_id, build_id=None, limit=100)


# Admission's facts


async def test_admission_reads_the_machine_the_build_and_the_endpoint(store: Store) -> None:
    machine, build = await _bound(store)
    facts = await store.connections.admission_facts(machine.id, build.id)
    assert facts is not None
    assert (facts.machine_token_id, facts.machine_project_id, facts.machine_binding_id) == (
        machine.token_id,
        build.project_id,
        machine.binding_id,
    )
    assert facts.build == build
    assert facts.endpoint_held


async def test_admission_knows_no_unknown_machine_and_no_unknown_build(store: Store) -> None:
    machine, build = await _bound(store)
    assert await store.connections.admission_facts(new_id(), build.id) is None
    facts = await store.connections.admission_facts(machine.id, new_id())
    assert facts is not None and facts.build is None and not facts.endpoint_held
    assert facts.machine_binding_id == machine.binding_id


async def test_admission_sees_a_released_endpoint_and_another_machines(store: Store) -> None:
    machine, build = await _bound(store)
    other = await new_machine(store)
    facts = await store.connections.admission_facts(other.id, build.id)
    assert facts is not None and facts.build == build and not facts.endpoint_held
    assert facts.machine_project_id is None

    assert await store.machines.release_endpoint(build.id, AMD64, at(2))
    facts = await store.connections.admission_facts(machine.id, build.id)
    assert facts is not None and not facts.endpoint_held


async def test_admission_sees_the_build_end(store: Store) -> None:
    machine, build = await _bound(store)
    await store.builds.finish_build(build.id, BuildStatus.CANCELED, at(3), None)
    facts = await store.connections.admission_facts(machine.id, build.id)
    assert facts is not None and facts.build is not None
    assert facts.build.status is BuildStatus.CANCELED


async def test_a_deleted_projects_build_is_no_build_to_admission(store: Store) -> None:
    machine, build = await _bound(store)
    await store.projects.delete_project(build.project_id, at(3))
    facts = await store.connections.admission_facts(machine.id, build.id)
    assert facts is not None and facts.build is None


# Reports


async def test_a_report_is_stored_with_its_builds_project(store: Store) -> None:
    machine, build = await _bound(store)
    report = _report(machine.id, build_id=build.id, closed=15, bytes_in=100, bytes_out=2000)
    await _record(store, machine.id, report)
    assert await _all(store) == [replace(report, project_id=build.project_id)]


async def test_a_report_of_an_unknown_build_has_no_project(store: Store) -> None:
    machine = await new_machine(store)
    refused = _report(machine.id, build_id="nosuchbld1", admitted=False, refusal="no such build")
    unnamed = _report(machine.id, "c2", opened=11, admitted=False, refusal="not TLS")
    await _record(store, machine.id, refused, unnamed)
    assert await _all(store) == [unnamed, refused]  # newest first; project_id None


async def test_a_retried_batch_is_stored_once(store: Store) -> None:
    machine = await new_machine(store)
    batch = [_report(machine.id, f"c{i}", opened=i, closed=i + 1, bytes_in=i) for i in range(3)]
    await _record(store, machine.id, *batch)
    await _record(store, machine.id, *batch)
    assert sorted(c.connection_id for c in await _all(store)) == ["c0", "c1", "c2"]


async def test_an_interim_report_then_the_final_one_update_one_row(store: Store) -> None:
    machine = await new_machine(store)
    await _record(store, machine.id, _report(machine.id, bytes_in=10, bytes_out=20, reported=20))
    final = _report(machine.id, closed=40, bytes_in=500, bytes_out=7000, reported=41)
    await _record(store, machine.id, final)
    assert await _all(store) == [final]


async def test_counts_only_grow_and_a_close_stays(store: Store) -> None:
    machine = await new_machine(store)
    final = _report(machine.id, closed=40, bytes_in=500, bytes_out=7000, reported=41)
    await _record(store, machine.id, final)
    # An interim report that arrives late (a retried older batch) takes nothing back.
    late = _report(machine.id, bytes_in=10, bytes_out=20000, reported=42)
    await _record(store, machine.id, late)
    [stored] = await _all(store)
    assert (stored.closed_at, stored.bytes_from_client, stored.bytes_to_client) == (
        at(40),
        500,
        20000,
    )
    assert stored.reported_at == at(42)


async def test_what_a_connection_was_stays_as_first_reported(store: Store) -> None:
    machine = await new_machine(store)
    first = _report(machine.id, build_id="abcdefghij", admitted=True)
    await _record(store, machine.id, first)
    other = replace(first, build_id="0123456789", peer="10.9.9.9:1", admitted=False, refusal="x")
    await _record(store, machine.id, other)
    [stored] = await _all(store)
    assert (stored.build_id, stored.peer, stored.admitted, stored.refusal) == (
        "abcdefghij",
        "10.1.2.3:45678",
        True,
        "",
    )


async def test_one_connection_twice_in_a_batch_is_one_row(store: Store) -> None:
    machine = await new_machine(store)
    await _record(
        store,
        machine.id,
        _report(machine.id, bytes_in=5),
        _report(machine.id, closed=30, bytes_in=9),
    )
    [stored] = await _all(store)
    assert (stored.closed_at, stored.bytes_from_client) == (at(30), 9)


async def test_connection_ids_are_per_machine(store: Store) -> None:
    one, two = await new_machine(store), await new_machine(store)
    await _record(store, one.id, _report(one.id, "same"))
    await _record(store, two.id, _report(two.id, "same"))
    assert [c.machine_id for c in await _all(store, one.id)] == [one.id]
    assert [c.machine_id for c in await _all(store, two.id)] == [two.id]


async def test_a_machines_old_connections_go_when_it_reports(store: Store) -> None:
    one, two = await new_machine(store), await new_machine(store)
    ended_long_ago = _report(one.id, "old", opened=0, closed=5, reported=6)
    open_long = _report(one.id, "long", opened=0, reported=100)  # still reported lately
    silent = _report(one.id, "silent", opened=0, reported=7)  # open, but not heard of since
    ended_lately = _report(one.id, "recent", opened=0, closed=60, reported=60)
    others = _report(two.id, "old", opened=0, closed=5, reported=6)
    await _record(store, one.id, ended_long_ago, open_long, silent, ended_lately)
    await _record(store, two.id, others)

    await _record(store, one.id, _report(one.id, "new", opened=200), keep_since=at(50))
    assert sorted(c.connection_id for c in await _all(store, one.id)) == [
        "long",
        "new",
        "recent",
    ]
    assert [c.connection_id for c in await _all(store, two.id)] == ["old"]  # not reported


async def test_listing_is_newest_first_filtered_and_limited(store: Store) -> None:
    one, two = await new_machine(store), await new_machine(store)
    await _record(
        store, one.id, *(_report(one.id, f"a{i}", opened=i, build_id="b") for i in (1, 3))
    )
    await _record(store, two.id, _report(two.id, "b2", opened=2, build_id="b"))
    await _record(store, two.id, _report(two.id, "x", opened=4))

    def ids(connections: list[MachineConnection]) -> list[str]:
        return [c.connection_id for c in connections]

    listing = store.connections.list_connections
    assert ids(await listing(machine_id=None, build_id=None, limit=10)) == ["x", "a3", "b2", "a1"]
    assert ids(await listing(machine_id=None, build_id="b", limit=10)) == ["a3", "b2", "a1"]
    assert ids(await listing(machine_id=two.id, build_id=None, limit=10)) == ["x", "b2"]
    assert ids(await listing(machine_id=two.id, build_id="b", limit=10)) == ["b2"]
    assert ids(await listing(machine_id=None, build_id=None, limit=2)) == ["x", "a3"]
    assert await listing(machine_id=new_id(), build_id=None, limit=10) == []
