"""The front door's rules, on a real database with a clock the test moves: which client
connections a machine admits (a live build of the machine's project, bound to it, through its
current binding), why it refuses the rest, and the agents' reports of connections."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

import pytest

from depot_api.domain.builds import Outcome
from depot_api.domain.connections import (
    CONNECTION_RETENTION,
    MAX_REPORTS_PER_CALL,
    Admission,
    ReportedConnection,
)
from depot_api.domain.endpoints import Active
from depot_api.domain.errors import InvalidArgument, InvalidField, NotFound, PermissionDenied
from depot_api.domain.ids import new_id
from depot_api.domain.machines import Assignment, HealthReport
from depot_api.domain.principal import Principal
from depot_api.models import Platform, TokenKind
from depot_api.wiring import Domain

from ..factories import new_project
from .conftest import Clock

AMD64 = Platform.AMD64


@dataclass
class Agent:
    """A machine's agent, driven by hand: it heartbeats and runs what it is told to."""

    domain: Domain
    principal: Principal
    machine_id: str
    running: str = ""

    async def serve(self) -> None:
        for _ in range(2):
            desired = await self.domain.machines.heartbeat(
                self.principal,
                self.machine_id,
                HealthReport(self.running, bool(self.running), 0, ""),
            )
            if isinstance(desired, Assignment) and desired.server_cert:
                self.running = desired.binding_id

    async def admit(self, build_id: str, binding_id: str | None = None) -> Admission:
        return await self.domain.connections.admit(
            self.principal, self.machine_id, binding_id or await self.binding(), build_id
        )

    async def binding(self) -> str:
        machine = await self.domain.store.machines.get_machine(self.machine_id)
        assert machine is not None
        return machine.binding_id or new_id()  # an unbound machine: any binding is stale


async def _agent(domain: Domain) -> Agent:
    token, _ = await domain.tokens.create_machine_token("agents")
    principal = Principal(token.id, TokenKind.MACHINE, frozenset())
    machine = await domain.machines.register(principal, AMD64, "10.0.0.1:1234", 1)
    return Agent(domain, principal, machine.id)


async def _on_machine(domain: Domain, admin: Principal, agent: Agent, project: str) -> str:
    """A running build of the project that holds an endpoint on the agent's machine."""
    build, _ = await domain.builds.create(admin, project)
    for _ in range(3):
        if isinstance(await domain.endpoints.poll(admin, build.id, AMD64), Active):
            return build.id
        await agent.serve()
    raise AssertionError(f"build {build.id} got no machine")


@pytest.fixture
async def agent(domain: Domain) -> Agent:
    return await _agent(domain)


@pytest.fixture
async def project(domain: Domain, admin: Principal) -> str:
    return await new_project(domain, admin)


@pytest.fixture
async def build(domain: Domain, admin: Principal, agent: Agent, project: str) -> str:
    return await _on_machine(domain, admin, agent, project)


# Admission


async def test_a_running_build_bound_to_the_machine_is_admitted(agent: Agent, build: str) -> None:
    assert await agent.admit(build) == Admission(True, "")


@pytest.mark.parametrize(
    ("outcome", "shown"),
    [
        (Outcome.success(), "success"),
        (Outcome.failed("exit 1"), "failed"),
        (Outcome.canceled(), "canceled"),
    ],
)
async def test_an_ended_build_is_refused(
    domain: Domain, admin: Principal, agent: Agent, build: str, outcome: Outcome, shown: str
) -> None:
    await domain.builds.finish(admin, build, outcome)
    assert await agent.admit(build) == Admission(False, f"build {build} has ended ({shown})")


async def test_a_build_past_its_deadline_is_refused(agent: Agent, build: str, clock: Clock) -> None:
    created = clock.now
    clock.advance(timedelta(hours=24).total_seconds() - 1)  # the default max build duration
    assert (await agent.admit(build)).admitted
    clock.advance(1)
    deadline = (created + timedelta(hours=24)).isoformat()
    assert await agent.admit(build) == Admission(
        False, f"build {build} has passed its deadline ({deadline})"
    )


async def test_another_projects_build_is_refused(
    domain: Domain, admin: Principal, agent: Agent, build: str
) -> None:
    elsewhere = await _agent(domain)  # takes the other project
    other = await _on_machine(domain, admin, elsewhere, await new_project(domain, admin, "other"))
    assert await agent.admit(other) == Admission(
        False, f"build {other} is of another project than this machine's"
    )
    assert (await elsewhere.admit(other)).admitted


async def test_a_machine_that_serves_no_project_refuses_every_build(
    domain: Domain, agent: Agent, build: str
) -> None:
    idle = await _agent(domain)
    assert await idle.admit(build) == Admission(False, "this machine serves no project now")


async def test_a_build_that_holds_no_endpoint_here_is_refused(
    domain: Domain, admin: Principal, agent: Agent, build: str, project: str
) -> None:
    # The machine serves the project, but this build never asked for it.
    asked_nothing, _ = await domain.builds.create(admin, project)
    assert await agent.admit(asked_nothing.id) == Admission(
        False, f"build {asked_nothing.id} is not bound to this machine"
    )


async def test_a_released_endpoint_is_refused(
    domain: Domain, admin: Principal, agent: Agent, build: str
) -> None:
    await domain.endpoints.release(admin, build, AMD64)
    assert await agent.admit(build) == Admission(
        False, f"build {build} is not bound to this machine"
    )


async def test_a_stale_binding_is_refused(
    domain: Domain, admin: Principal, agent: Agent, build: str, project: str
) -> None:
    before = await agent.binding()
    await domain.projects.reset(admin, project)  # a new cache generation: a new binding
    assert await agent.binding() != before
    assert await agent.admit(build, before) == Admission(
        False, f"binding {before} is not this machine's current binding"
    )
    assert (await agent.admit(build)).admitted


async def test_an_unknown_build_is_refused(agent: Agent, build: str) -> None:
    unknown = new_id()
    assert await agent.admit(unknown) == Admission(False, f"no such build {unknown}")


async def test_a_deleted_projects_build_is_refused(
    domain: Domain, admin: Principal, agent: Agent, build: str, project: str
) -> None:
    binding = await agent.binding()
    await domain.projects.delete(admin, project)
    assert await agent.admit(build, binding) == Admission(False, f"no such build {build}")


async def test_admission_takes_the_machines_own_token(
    domain: Domain, admin: Principal, agent: Agent, build: str
) -> None:
    binding = await agent.binding()
    admit = domain.connections.admit
    with pytest.raises(PermissionDenied):
        await admit(admin, agent.machine_id, binding, build)
    other = await _agent(domain)
    with pytest.raises(NotFound, match=f"machine {agent.machine_id} not found"):
        await admit(other.principal, agent.machine_id, binding, build)
    with pytest.raises(NotFound, match="register again"):
        await admit(agent.principal, new_id(), binding, build)


@pytest.mark.parametrize(
    ("machine_id", "binding_id", "build_id", "field", "problem"),
    [
        ("", "bbbbbbbbbb", "cccccccccc", "machine_id", "is required"),
        ("not an id", "bbbbbbbbbb", "cccccccccc", "machine_id", "is not a valid ID"),
        ("aaaaaaaaaa", "", "cccccccccc", "binding_id", "is required"),
        ("aaaaaaaaaa", "bbbbbbbbbb", "", "build_id", "is required"),
        ("aaaaaaaaaa", "bbbbbbbbbb", "BUILD", "build_id", "is not a valid ID"),
    ],
)
async def test_admission_names_bad_input(
    agent: Agent, machine_id: str, binding_id: str, build_id: str, field: str, problem: str
) -> None:
    with pytest.raises(InvalidField) as raised:
        await agent.domain.connections.admit(agent.principal, machine_id, binding_id, build_id)
    assert raised.value.field == field and problem in raised.value.problem


# Reports


def _report(connection_id: str = "c1", **changes: object) -> ReportedConnection:
    report = ReportedConnection(
        connection_id=connection_id,
        build_id="",
        binding_id="",
        peer="10.1.2.3:4567",
        opened_at=Clock().now,
        closed_at=None,
        admitted=False,
        refusal="not TLS",
        bytes_from_client=0,
        bytes_to_client=0,
    )
    return replace(report, **changes)  # type: ignore[arg-type]


async def test_reports_are_kept_with_the_time_they_arrived(
    domain: Domain, agent: Agent, build: str, clock: Clock, project: str
) -> None:
    opened = clock.now
    clock.advance(5)
    admitted = _report(
        "c1",
        build_id=build,
        binding_id=await agent.binding(),
        opened_at=opened,
        closed_at=clock.now,
        admitted=True,
        refusal="",
        bytes_from_client=10,
        bytes_to_client=20,
    )
    await domain.connections.report(agent.principal, agent.machine_id, [admitted])
    [kept] = await domain.connections.list(machine_id=agent.machine_id, build_id=None)
    assert (kept.build_id, kept.project_id, kept.reported_at, kept.closed_at) == (
        build,
        project,
        clock.now,
        clock.now,
    )
    assert (kept.bytes_from_client, kept.bytes_to_client, kept.admitted) == (10, 20, True)


async def test_an_empty_report_is_fine(domain: Domain, agent: Agent) -> None:
    await domain.connections.report(agent.principal, agent.machine_id, [])
    assert await domain.connections.list(machine_id=None, build_id=None) == []


async def test_connections_are_kept_for_a_week(domain: Domain, agent: Agent, clock: Clock) -> None:
    report = domain.connections.report
    await report(agent.principal, agent.machine_id, [_report("old", closed_at=clock.now)])
    clock.advance(CONNECTION_RETENTION.total_seconds() - 1)
    await report(agent.principal, agent.machine_id, [_report("b", opened_at=clock.now)])
    assert len(await domain.connections.list(machine_id=agent.machine_id, build_id=None)) == 2
    clock.advance(2)
    await report(agent.principal, agent.machine_id, [_report("c", opened_at=clock.now)])
    kept = await domain.connections.list(machine_id=agent.machine_id, build_id=None)
    assert [c.connection_id for c in kept] == ["c", "b"]


async def test_reports_take_the_machines_own_token(
    domain: Domain, admin: Principal, agent: Agent
) -> None:
    with pytest.raises(PermissionDenied):
        await domain.connections.report(admin, agent.machine_id, [_report()])
    other = await _agent(domain)
    with pytest.raises(NotFound, match="register again"):
        await domain.connections.report(other.principal, agent.machine_id, [_report()])
    with pytest.raises(NotFound, match="register again"):
        await domain.connections.report(agent.principal, new_id(), [_report()])
    assert await domain.connections.list(machine_id=None, build_id=None) == []


async def test_at_most_500_reports_per_call(domain: Domain, agent: Agent) -> None:
    reports = [_report(f"c{i}") for i in range(MAX_REPORTS_PER_CALL)]
    await domain.connections.report(agent.principal, agent.machine_id, reports)
    with pytest.raises(InvalidField, match="holds 501 reports; send at most 500 per call"):
        await domain.connections.report(
            agent.principal, agent.machine_id, [*reports, _report("one more")]
        )
    listed = await domain.connections.list(machine_id=None, build_id=None, limit=1000)
    assert len(listed) == MAX_REPORTS_PER_CALL


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"connection_id": ""}, "connection_id", "is required"),
        ({"connection_id": "x" * 65}, "connection_id", "is too long: 65 characters, at most 64"),
        ({"connection_id": "a\nb"}, "connection_id", "must not contain control characters"),
        ({"build_id": "b" * 65}, "build_id", "is too long: 65 characters, at most 64"),
        ({"binding_id": "b" * 65}, "binding_id", "is too long: 65 characters, at most 64"),
        ({"peer": "p" * 256}, "peer", "is too long: 256 characters, at most 255"),
        ({"opened_at": None}, "opened_at", "is required"),
        ({"bytes_from_client": -1}, "bytes_from_client", "must not be negative, got -1"),
        ({"bytes_to_client": -5}, "bytes_to_client", "must not be negative, got -5"),
    ],
)
async def test_a_bad_report_refuses_the_batch_naming_it(
    domain: Domain, agent: Agent, changes: dict[str, object], field: str, problem: str
) -> None:
    batch = [_report("fine"), replace(_report("bad"), **changes)]  # type: ignore[arg-type]
    with pytest.raises(InvalidField) as raised:
        await domain.connections.report(agent.principal, agent.machine_id, batch)
    assert raised.value.field == f"connections[1].{field}"
    assert raised.value.problem == problem
    assert await domain.connections.list(machine_id=None, build_id=None) == []


async def test_free_text_and_a_clock_that_stepped_back_do_not_cost_the_batch(
    domain: Domain, agent: Agent
) -> None:
    """What the agent composes (a refusal with an exception's message, times from its wall
    clock) is kept as well as it can be rather than refused: a refused batch comes back."""
    opened = Clock().now
    reports = [
        _report("long", refusal="r" * 2000),
        _report("lines", refusal="the daemon cannot be reached:\nboom\tagain"),
        _report("cut", admitted=True, refusal="cut: build x has ended (canceled)"),
        _report("back", closed_at=opened - timedelta(seconds=3)),
    ]
    await domain.connections.report(agent.principal, agent.machine_id, reports)
    kept = {
        c.connection_id: c
        for c in await domain.connections.list(machine_id=agent.machine_id, build_id=None)
    }
    assert kept["long"].refusal == "r" * 1023 + "…"
    assert kept["lines"].refusal == "the daemon cannot be reached: boom again"
    assert (kept["cut"].admitted, kept["cut"].refusal) == (
        True,
        "cut: build x has ended (canceled)",
    )
    assert kept["back"].closed_at == kept["back"].opened_at == opened


async def test_report_names_a_bad_machine_id(domain: Domain, agent: Agent) -> None:
    with pytest.raises(InvalidField, match="machine_id is required"):
        await domain.connections.report(agent.principal, "", [_report()])


# The operator's listing


async def test_the_listing_checks_its_filters(domain: Domain) -> None:
    listing = domain.connections.list
    with pytest.raises(InvalidArgument, match=r"machine .* is not a valid ID"):
        await listing(machine_id="nope", build_id=None)
    with pytest.raises(InvalidArgument, match=r"build .* is not a valid ID"):
        await listing(machine_id=None, build_id="nope")
    for limit in (0, 10_001):
        with pytest.raises(InvalidArgument, match="limit must be between 1 and 10000"):
            await listing(machine_id=None, build_id=None, limit=limit)
