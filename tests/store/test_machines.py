"""The MachineStore's contract: claiming machines for projects (never one machine for two
projects, one machine per project and platform), the server certificate's conditional
write, lost and idle machines, heartbeats, and what moves the change stamp."""

from __future__ import annotations

import asyncio

from depot_api.domain.ids import new_id
from depot_api.models import Binding, BuildStatus, Machine, MachineState, Platform, Project
from depot_api.store import Store
from depot_api.times import to_micros

from .conftest import at, new_build, new_machine, new_org, new_project

AMD64 = Platform.AMD64
LOST_AFTER = 15


def new_binding() -> Binding:
    binding_id = new_id()
    return Binding(binding_id, f"{binding_id}.machines.test")


async def _acquire(
    store: Store, build_id: str, project: Project, now: float = 1, platform: Platform = AMD64
) -> Machine | None:
    return await store.machines.acquire_machine(
        build_id=build_id,
        project_id=project.id,
        platform=platform,
        now=at(now),
        lost_before=at(now - LOST_AFTER),
        binding=new_binding(),
    )


async def _heartbeat(
    store: Store, machine_id: str, now: float, running: str = "", ready: bool = False
) -> Machine | None:
    return await store.machines.record_heartbeat(
        machine_id,
        running_binding_id=running,
        ready=ready,
        disk_used_bytes=0,
        error=None,
        now=at(now),
    )


async def _release_idle(store: Store, machine_id: str, idle_before: float, now: float) -> bool:
    return await store.machines.release_idle_machine(
        machine_id, idle_before=at(idle_before), now=at(now)
    )


async def _certify(store: Store, machine: Machine, cert: str = "cert") -> bool:
    assert machine.binding_id is not None
    return await store.machines.set_server_certificate(
        machine.id, binding_id=machine.binding_id, cert_pem=cert, key_sealed=f"sealed {cert}"
    )


async def test_an_idle_machine_is_claimed_under_the_binding_given_with_no_certificate(
    store: Store,
) -> None:
    machine = await new_machine(store)
    project = await new_project(store, (await new_org(store)).id)
    build = await new_build(store, project)
    binding = new_binding()
    claimed = await store.machines.acquire_machine(
        build_id=build.id,
        project_id=project.id,
        platform=AMD64,
        now=at(1),
        lost_before=at(1 - LOST_AFTER),
        binding=binding,
    )
    assert claimed is not None and claimed.id == machine.id
    assert (claimed.project_id, claimed.binding_id, claimed.server_name) == (
        project.id,
        binding.binding_id,
        binding.server_name,
    )
    assert (claimed.server_cert, claimed.server_key_sealed, claimed.cache_generation) == (
        None,
        None,
        0,
    )
    assert claimed.changed_at == at(1) and claimed.last_used_at == at(1)
    # The build's own machine next time: the binding offered then is not used.
    again = await _acquire(store, build.id, project, now=2)
    assert again == claimed


async def test_builds_of_a_project_share_its_machine_and_others_get_none(store: Store) -> None:
    machine = await new_machine(store)
    org = await new_org(store)
    a, b = await new_project(store, org.id, "a"), await new_project(store, org.id, "b")
    first = await _acquire(store, (await new_build(store, a)).id, a)
    second = await _acquire(store, (await new_build(store, a)).id, a)
    assert first is not None and second is not None
    assert (second.id, second.binding_id) == (machine.id, first.binding_id)
    assert await _acquire(store, (await new_build(store, b)).id, b) is None
    other_platform = await _acquire(
        store, (await new_build(store, a)).id, a, platform=Platform.ARM64
    )
    assert other_platform is None


async def test_a_deleted_project_claims_nothing(store: Store) -> None:
    machine = await new_machine(store)
    project = await new_project(store, (await new_org(store)).id)
    build = await new_build(store, project)
    await store.projects.delete_project(project.id, at(0))
    assert await _acquire(store, build.id, project) is None
    stored = await store.machines.get_machine(machine.id)
    assert stored is not None and stored.project_id is None


async def test_draining_and_gone_machines_take_no_project(store: Store) -> None:
    draining, gone = await new_machine(store), await new_machine(store)
    await store.machines.set_machine_state(draining.id, MachineState.DRAINING, at(0))
    await store.machines.set_machine_state(gone.id, MachineState.GONE, at(0))
    assert not await store.machines.set_machine_state("zzzzzzzzzz", MachineState.GONE, at(0))
    project = await new_project(store, (await new_org(store)).id)
    assert await _acquire(store, (await new_build(store, project)).id, project) is None


async def test_an_idle_machine_reporting_trouble_takes_no_project_until_well(
    store: Store,
) -> None:
    machine = await new_machine(store)
    await store.machines.record_heartbeat(
        machine.id,
        running_binding_id="",
        ready=False,
        disk_used_bytes=0,
        error="the Docker Engine at /run/docker.sock cannot be reached",
        now=at(1),
    )
    project = await new_project(store, (await new_org(store)).id)
    assert await _acquire(store, (await new_build(store, project)).id, project, now=2) is None
    troubled = await store.machines.get_machine(machine.id)
    assert troubled is not None and troubled.changed_at == machine.changed_at
    well = await _heartbeat(store, machine.id, 3)  # no error any more
    # A change: builds waiting for a machine look again.
    assert well is not None and well.buildkit_error is None and well.changed_at == at(3)
    claimed = await _acquire(store, (await new_build(store, project)).id, project, now=4)
    assert claimed is not None and claimed.id == machine.id


async def test_concurrent_claims_never_bind_one_machine_to_two_projects(
    store: Store, second_store: Store
) -> None:
    machines = [await new_machine(store, registered=n) for n in range(2)]
    org = await new_org(store)
    projects = [await new_project(store, org.id, f"p{n}") for n in range(3)]
    builds = [(await new_build(store, p), p) for p in projects for _ in range(2)]
    got = await asyncio.gather(
        *(
            _acquire(s, build.id, project)
            for s, (build, project) in zip((store, second_store) * 3, builds, strict=True)
        )
    )
    by_project: dict[str, set[str]] = {}
    for (_, project), machine in zip(builds, got, strict=True):
        if machine is not None:
            by_project.setdefault(project.id, set()).add(machine.id)
    # Two machines for three projects: two projects got one each; builds of one project
    # always the same one; no machine went to two projects.
    assert sorted(len(ids) for ids in by_project.values()) == [1, 1]
    assert len(set().union(*by_project.values())) == 2
    for machine in machines:
        stored = await store.machines.get_machine(machine.id)
        assert stored is not None and stored.project_id in by_project


async def test_a_server_certificate_is_stored_once_and_only_for_the_current_binding(
    store: Store, second_store: Store
) -> None:
    await new_machine(store)
    project = await new_project(store, (await new_org(store)).id)
    claimed = await _acquire(store, (await new_build(store, project)).id, project)
    assert claimed is not None
    stored = await asyncio.gather(
        *(_certify(s, claimed, f"cert {n}") for n, s in enumerate((store, second_store) * 2))
    )
    assert sorted(stored) == [False, False, False, True]  # of concurrent callers, one
    winner = f"cert {stored.index(True)}"
    machine = await store.machines.get_machine(claimed.id)
    assert machine is not None
    assert (machine.server_cert, machine.server_key_sealed) == (winner, f"sealed {winner}")


async def test_no_certificate_is_stored_for_a_binding_replaced_or_released(store: Store) -> None:
    await new_machine(store)
    project = await new_project(store, (await new_org(store)).id)
    claimed = await _acquire(store, (await new_build(store, project)).id, project)
    assert claimed is not None
    # A new cache generation replaces the binding before its certificate came.
    assert (
        await store.machines.rebind_project_machines(
            project.id, binding_id="r1r1r1r1r1", generation=1, now=at(2)
        )
        == 1
    )
    assert not await _certify(store, claimed)
    rebound = await store.machines.get_machine(claimed.id)
    assert rebound is not None and rebound.server_cert is None
    assert (rebound.binding_id, rebound.server_name) == ("r1r1r1r1r1", claimed.server_name)
    # Its project deleted: the machine is released, and a late certificate goes nowhere.
    assert await _certify(store, rebound)
    await store.projects.delete_project(project.id, at(3))
    assert await store.machines.unbind_project_machines(project.id, at(3)) == 1
    assert not await _certify(store, rebound)
    released = await store.machines.get_machine(claimed.id)
    assert released is not None
    assert (released.project_id, released.binding_id, released.server_cert) == (None, None, None)


async def test_a_new_binding_keeps_the_server_name_and_certificate(store: Store) -> None:
    await new_machine(store)
    project = await new_project(store, (await new_org(store)).id)
    claimed = await _acquire(store, (await new_build(store, project)).id, project)
    assert claimed is not None and await _certify(store, claimed)
    assert (
        await store.machines.rebind_project_machines(
            project.id, binding_id="r1r1r1r1r1", generation=4, now=at(5)
        )
        == 1
    )
    rebound = await store.machines.get_machine(claimed.id)
    assert rebound is not None
    assert (rebound.binding_id, rebound.cache_generation, rebound.changed_at) == (
        "r1r1r1r1r1",
        4,
        at(5),
    )
    assert (rebound.server_name, rebound.server_cert) == (claimed.server_name, "cert")


async def test_lost_machines_are_declared_gone_and_their_builds_move(store: Store) -> None:
    lost = await new_machine(store, registered=0)
    project = await new_project(store, (await new_org(store)).id)
    build = await new_build(store, project)
    first = await _acquire(store, build.id, project, now=1)
    assert first is not None and first.id == lost.id
    spare = await new_machine(store, registered=10)
    # Not yet silent for LOST_AFTER: the build keeps its machine.
    assert (await _acquire(store, build.id, project, now=LOST_AFTER - 1)) == first
    moved = await _acquire(store, build.id, project, now=LOST_AFTER + 1)
    assert moved is not None and moved.id == spare.id
    gone = await store.machines.get_machine(lost.id)
    assert gone is not None
    assert (gone.state, gone.project_id, gone.binding_id) == (MachineState.GONE, None, None)
    # Heard from again, it is active (and idle).
    back = await _heartbeat(store, lost.id, now=LOST_AFTER + 2)
    assert back is not None and (back.state, back.project_id) == (MachineState.ACTIVE, None)
    assert back.changed_at == at(LOST_AFTER + 2)  # its coming back may serve a waiting build


async def test_a_heartbeat_records_readiness_and_moves_the_stamp_only_on_a_change(
    store: Store,
) -> None:
    machine = await new_machine(store)
    project = await new_project(store, (await new_org(store)).id)
    claimed = await _acquire(store, (await new_build(store, project)).id, project, now=1)
    assert claimed is not None and claimed.binding_id is not None
    assert await _heartbeat(store, "zzzzzzzzzz", now=2) is None

    quiet = await _heartbeat(store, machine.id, now=2)
    assert quiet is not None and quiet.changed_at == at(1) and not quiet.ready
    # Running but not accepting connections is not ready.
    busy = await _heartbeat(store, machine.id, now=3, running=claimed.binding_id)
    assert busy is not None and not busy.ready and busy.changed_at == at(1)
    ready = await _heartbeat(store, machine.id, now=4, running=claimed.binding_id, ready=True)
    assert ready is not None and ready.ready and ready.changed_at == at(4)
    again = await _heartbeat(store, machine.id, now=5, running=claimed.binding_id, ready=True)
    assert again is not None and again.changed_at == at(4) and again.last_heartbeat_at == at(5)
    # No longer ready is a change too.
    stopped = await _heartbeat(store, machine.id, now=6, running=claimed.binding_id)
    assert stopped is not None and not stopped.ready and stopped.changed_at == at(6)
    stamp = await store.machines.machine_stamp(at(6 - LOST_AFTER), at(6 - 3))
    assert stamp == (to_micros(at(6)), 0, 0)


async def test_the_stamp_counts_machines_gone_silent(store: Store) -> None:
    machines = [await new_machine(store, registered=n) for n in (0, 10, 20)]
    await store.machines.set_machine_state(machines[0].id, MachineState.GONE, at(21))

    changed, lost, stale = await store.machines.machine_stamp(at(15), at(19))
    # The gone machine counts for neither; the one last heard at 10 for both.
    assert (changed, lost, stale) == (to_micros(at(21)), 1, 1)


async def test_last_heard_from_counts_machines_that_could_take_the_project(store: Store) -> None:
    org = await new_org(store)
    a, b = await new_project(store, org.id, "a"), await new_project(store, org.id, "b")
    assert await store.machines.last_heard_from(AMD64, a.id) is None
    serving_a = await new_machine(store, registered=5)
    await _acquire(store, (await new_build(store, a)).id, a, now=6)
    await store.machines.set_machine_state(serving_a.id, MachineState.DRAINING, at(6))
    await new_machine(store, registered=3, platform=Platform.ARM64)
    # A draining machine counts for the project it serves only.
    assert await store.machines.last_heard_from(AMD64, a.id) == at(5)
    assert await store.machines.last_heard_from(AMD64, b.id) is None
    # An active one, bound or not, counts for every project.
    await new_machine(store, registered=4)
    assert await store.machines.last_heard_from(AMD64, b.id) == at(4)
    assert await store.machines.last_heard_from(Platform.ARM64, b.id) == at(3)


async def test_a_machine_is_released_only_when_idle_long_enough(store: Store) -> None:
    machine = await new_machine(store)
    project = await new_project(store, (await new_org(store)).id)
    build = await new_build(store, project)
    claimed = await _acquire(store, build.id, project, now=1)
    assert claimed is not None and await _certify(store, claimed)

    # A running build holds it, however long ago it was acquired.
    assert not await _release_idle(store, machine.id, 100, 100)
    await store.builds.finish_build(build.id, BuildStatus.SUCCESS, at(50), None)
    # Idle since the build ended (50), not since it was acquired (1).
    assert not await _release_idle(store, machine.id, 40, 100)
    assert await _release_idle(store, machine.id, 60, 100)
    released = await store.machines.get_machine(machine.id)
    assert released is not None
    assert (released.project_id, released.binding_id, released.server_cert) == (None, None, None)
    assert not await _release_idle(store, machine.id, 200, 200)
    assert not await _release_idle(store, "zzzzzzzzzz", 200, 200)


async def test_a_released_endpoint_starts_the_idle_timer(store: Store) -> None:
    machine = await new_machine(store)
    project = await new_project(store, (await new_org(store)).id)
    build = await new_build(store, project)
    await _acquire(store, build.id, project, now=1)
    assert await store.machines.release_endpoint(build.id, AMD64, at(30))
    assert not await store.machines.release_endpoint(build.id, AMD64, at(31))  # held no more
    assert not await store.machines.release_endpoint(build.id, Platform.ARM64, at(31))
    assert not await _release_idle(store, machine.id, 30, 40)
    assert await _release_idle(store, machine.id, 31, 40)


async def test_machines_are_listed_oldest_first(store: Store) -> None:
    machines = [await new_machine(store, registered=n) for n in (3, 1, 2)]
    listed = await store.machines.list_machines()
    assert [m.id for m in listed] == [machines[1].id, machines[2].id, machines[0].id]
    assert listed[0].registered_at == at(1)
