"""The binding rules, on a real database with a clock the test moves: which machine a build
gets, when a machine changes hands, and the two steps of binding (the store's claim, then the
server certificate, minted outside any lock)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder
from cryptography.x509.verification import Store as TrustStore

from depot_api.config import Settings
from depot_api.domain import endpoints as endpoints_module
from depot_api.domain.builds import Outcome
from depot_api.domain.endpoints import Active, Pending, new_binding, serving
from depot_api.domain.errors import FailedPrecondition
from depot_api.domain.machines import Assignment, Desired, HealthReport, Idle, Stop
from depot_api.domain.pki import KeyPair
from depot_api.domain.principal import Principal
from depot_api.models import Machine, MachineState, Platform, TokenKind
from depot_api.wiring import Domain, build_domain

from ..factories import new_project
from .conftest import Clock

AMD64 = Platform.AMD64
# The defaults in Settings, which the domain fixture uses.
LOST_AFTER = 15.0
IDLE_RELEASE = 300.0


@dataclass
class Agent:
    """A machine's agent, driven by hand: it heartbeats, and runs what it is told to."""

    domain: Domain
    principal: Principal
    machine_id: str
    running: str = ""  # the binding its daemon runs

    async def beat(self) -> Desired:
        """One heartbeat; a daemon for an assignment with its material starts (and is ready
        by the next heartbeat), and one for no assignment stops."""
        desired = await self.domain.machines.heartbeat(
            self.principal, self.machine_id, HealthReport(self.running, bool(self.running), 0, "")
        )
        if isinstance(desired, Assignment):
            if desired.server_cert:
                self.running = desired.binding_id
        else:
            self.running = ""
        return desired

    async def serve(self) -> None:
        """Heartbeat until the daemon runs the machine's binding and the server knows it."""
        await self.beat()
        await self.beat()

    async def machine(self) -> Machine:
        machine = await self.domain.store.machines.get_machine(self.machine_id)
        assert machine is not None
        return machine


async def _agent(domain: Domain, endpoint: str = "10.0.0.1:1234") -> Agent:
    token, _ = await domain.tokens.create_machine_token("agents")
    principal = Principal(token.id, TokenKind.MACHINE, frozenset())
    machine = await domain.machines.register(principal, AMD64, endpoint, 1)
    return Agent(domain, principal, machine.id)


async def _build(domain: Domain, admin: Principal, project_id: str) -> str:
    build, _ = await domain.builds.create(admin, project_id)
    return build.id


async def _active(domain: Domain, admin: Principal, build_id: str, *agents: Agent) -> Active:
    """Poll for the build until it is handed a machine, the agents serving meanwhile."""
    for _ in range(3):
        answer = await domain.endpoints.poll(admin, build_id, AMD64)
        if isinstance(answer, Active):
            return answer
        for agent in agents:
            await agent.serve()
    raise AssertionError(f"build {build_id} got no machine")


def _verifies(ca_cert: str, cert_pem: str, server_name: str, clock: Clock) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    ca = x509.load_pem_x509_certificate(ca_cert.encode())
    verifier = (
        PolicyBuilder()
        .store(TrustStore([ca]))
        .time(clock.now)
        .build_server_verifier(x509.DNSName(server_name))
    )
    verifier.verify(cert, [])
    return True


async def test_an_idle_machine_is_claimed_under_a_binding_named_for_itself(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    agent = await _agent(domain)
    project = await new_project(domain, admin)
    build = await _build(domain, admin, project)

    assert isinstance(await domain.endpoints.poll(admin, build, AMD64), Pending)
    machine = await agent.machine()
    assert machine.project_id == project and machine.binding_id is not None
    # The server name comes from the binding, which the domain chose before the claim.
    assert machine.server_name == f"{machine.binding_id}.machines.depot-api.internal"
    assert machine.server_cert is not None  # stored by the same poll, after the claim
    assert not machine.ready

    desired = await agent.beat()
    assert isinstance(desired, Assignment) and desired.binding_id == machine.binding_id
    assert desired.server_name == machine.server_name and desired.server_key
    await agent.beat()
    active = await domain.endpoints.poll(admin, build, AMD64)
    assert isinstance(active, Active)
    assert (active.endpoint, active.server_name) == ("tcp://10.0.0.1:1234", machine.server_name)
    assert _verifies(active.ca_cert, machine.server_cert, machine.server_name, clock)


async def test_builds_of_one_project_share_its_machine(domain: Domain, admin: Principal) -> None:
    first, second = await _agent(domain, "10.0.0.1:1"), await _agent(domain, "10.0.0.2:2")
    project = await new_project(domain, admin)
    one = await _active(domain, admin, await _build(domain, admin, project), first, second)
    two = await _active(domain, admin, await _build(domain, admin, project), first, second)
    assert (two.endpoint, two.server_name) == (one.endpoint, one.server_name)
    bound = [m.project_id for m in (await first.machine(), await second.machine())]
    assert sorted(bound, key=str) == sorted([project, None], key=str)  # the other stays idle


async def test_another_project_never_gets_a_bound_machine(domain: Domain, admin: Principal) -> None:
    agent = await _agent(domain)
    a = await new_project(domain, admin, "a")
    b = await new_project(domain, admin, "b")
    a_build = await _build(domain, admin, a)
    await _active(domain, admin, a_build, agent)

    b_build = await _build(domain, admin, b)
    for _ in range(3):
        assert isinstance(await domain.endpoints.poll(admin, b_build, AMD64), Pending)
        await agent.serve()
    assert (await agent.machine()).project_id == a
    # Not even once a's build has ended: the machine stays a's until it is given back (idle).
    await domain.builds.finish(admin, a_build, Outcome.success())
    assert isinstance(await domain.endpoints.poll(admin, b_build, AMD64), Pending)
    assert (await agent.machine()).project_id == a

    # A second machine: b gets that one.
    other = await _agent(domain, "10.0.0.2:2")
    active = await _active(domain, admin, b_build, agent, other)
    assert active.endpoint == "tcp://10.0.0.2:2"
    assert [(await agent.machine()).project_id, (await other.machine()).project_id] == [a, b]


async def test_a_machine_goes_back_to_the_project_it_served_last(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    """Cache affinity: of two idle machines, a project gets the one that served it last, even
    when the other has been unused for longer."""
    first, second = await _agent(domain, "10.0.0.1:1"), await _agent(domain, "10.0.0.2:2")
    a = await new_project(domain, admin, "a")
    b = await new_project(domain, admin, "b")
    a_build = await _build(domain, admin, a)
    a_machine = (await _active(domain, admin, a_build, first, second)).endpoint
    b_build = await _build(domain, admin, b)
    b_machine = (await _active(domain, admin, b_build, first, second)).endpoint
    assert a_machine != b_machine
    await domain.builds.finish(admin, b_build, Outcome.success())
    clock.advance(10)
    await domain.builds.finish(admin, a_build, Outcome.success())  # a's machine: used last
    clock.advance(IDLE_RELEASE + 1)
    for agent in (first, second):
        assert isinstance(await agent.beat(), Idle)  # both given back
        assert (await agent.machine()).project_id is None

    again = await _build(domain, admin, a)
    assert (await _active(domain, admin, again, first, second)).endpoint == a_machine


async def test_a_lost_machine_is_declared_gone_and_its_builds_move(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    lost = await _agent(domain, "10.0.0.1:1")
    project = await new_project(domain, admin)
    build = await _build(domain, admin, project)
    assert (await _active(domain, admin, build, lost)).endpoint == "tcp://10.0.0.1:1"
    spare = await _agent(domain, "10.0.0.2:2")

    clock.advance(LOST_AFTER - 1)
    await spare.beat()
    # Silent, but not yet for machine_lost_after: the build keeps its machine.
    assert (await lost.machine()).state is MachineState.ACTIVE
    assert (await lost.machine()).project_id == project
    clock.advance(2)
    await spare.beat()
    moved = await _active(domain, admin, build, spare)
    assert moved.endpoint == "tcp://10.0.0.2:2"
    gone = await lost.machine()
    assert (gone.state, gone.project_id, gone.binding_id) == (MachineState.GONE, None, None)

    # Heard from again, it is active and idle: it does not take its project back.
    assert isinstance(await lost.beat(), Idle)
    back = await lost.machine()
    assert (back.state, back.project_id) == (MachineState.ACTIVE, None)


async def test_a_machine_is_given_back_after_the_idle_release(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    agent = await _agent(domain)
    project = await new_project(domain, admin)
    build = await _build(domain, admin, project)
    await _active(domain, admin, build, agent)

    clock.advance(IDLE_RELEASE + 1)
    await agent.beat()  # a running build holds its machine however long it runs
    assert (await agent.machine()).project_id == project
    await domain.builds.finish(admin, build, Outcome.success())
    clock.advance(IDLE_RELEASE - 1)
    assert isinstance(await agent.beat(), Assignment)
    clock.advance(2)  # idle since the build ended for longer than machine_idle_release
    assert isinstance(await agent.beat(), Idle)
    machine = await agent.machine()
    assert (machine.project_id, machine.binding_id, machine.server_cert) == (None, None, None)


async def test_a_draining_machine_takes_no_new_project(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    agent = await _agent(domain)
    a = await new_project(domain, admin, "a")
    a_build = await _build(domain, admin, a)
    served = await _active(domain, admin, a_build, agent)
    await domain.machines.drain(agent.machine_id)
    clock.advance(6)  # past the start-up grace, so that a build with nothing to wait for is told
    await agent.beat()

    b_build = await _build(domain, admin, await new_project(domain, admin, "b"))
    with pytest.raises(FailedPrecondition, match="no amd64 BuildKit machine to wait for"):
        await domain.endpoints.poll(admin, b_build, AMD64)
    assert (await agent.machine()).project_id == a
    # The project it serves keeps it, new builds included.
    later = await _build(domain, admin, a)
    assert (await _active(domain, admin, later, agent)).server_name == served.server_name

    # Once it is given back, it is told to stop.
    for build in (a_build, later):
        await domain.builds.finish(admin, build, Outcome.success())
    clock.advance(IDLE_RELEASE + 1)
    assert isinstance(await agent.beat(), Stop)


async def test_a_new_cache_generation_rebinds_the_projects_machine(
    domain: Domain, admin: Principal
) -> None:
    agent = await _agent(domain)
    project = await new_project(domain, admin)
    await _active(domain, admin, await _build(domain, admin, project), agent)
    before = await agent.machine()

    assert await domain.projects.reset(admin, project) == 1
    after = await agent.machine()
    assert after.binding_id != before.binding_id and after.cache_generation == 1
    # The daemon restarts clean under the same name and certificate.
    assert (after.server_name, after.server_cert) == (before.server_name, before.server_cert)
    assert not after.ready
    waiting = await _build(domain, admin, project)
    assert isinstance(await domain.endpoints.poll(admin, waiting, AMD64), Pending)

    desired = await agent.beat()
    assert isinstance(desired, Assignment)
    assert (desired.binding_id, desired.cache_generation) == (after.binding_id, 1)
    assert desired.server_cert == before.server_cert  # the agent runs the old binding: material
    await agent.beat()
    assert (await _active(domain, admin, waiting, agent)).server_name == before.server_name


# The two steps of binding


async def test_a_claim_alone_stores_no_certificate_and_hands_out_nothing(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    """The store's half of binding records the binding with no certificate. Until the
    certificate is stored the agent is given nothing to run, and no build gets an Active,
    even from an agent that claims to run the binding."""
    agent = await _agent(domain)
    project = await new_project(domain, admin)
    build = await _build(domain, admin, project)
    binding = new_binding()
    claimed = await domain.store.machines.acquire_machine(
        build_id=build,
        project_id=project,
        platform=AMD64,
        now=clock(),
        lost_before=clock() - timedelta(seconds=LOST_AFTER),
        binding=binding,
    )
    assert claimed is not None and claimed.id == agent.machine_id
    assert (claimed.binding_id, claimed.server_name) == (binding.binding_id, binding.server_name)
    assert (claimed.server_cert, claimed.server_key_sealed) == (None, None)
    assert isinstance(await agent.beat(), Idle)  # no material yet: nothing to run

    agent.running = binding.binding_id  # an agent that says it runs the binding anyway
    await agent.beat()
    assert (await agent.machine()).ready
    # The poll finds the certificate missing and stores it, but hands nothing out.
    assert isinstance(await domain.endpoints.poll(admin, build, AMD64), Pending)
    machine = await agent.machine()
    assert machine.server_cert is not None and machine.binding_id == binding.binding_id
    assert isinstance(await domain.endpoints.poll(admin, build, AMD64), Active)


async def test_a_claim_whose_certificate_never_came_is_completed_by_the_next_acquirer(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    """A process that died between the two steps leaves a binding without a certificate;
    any build of the project that asks next mints it."""
    agent = await _agent(domain)
    project = await new_project(domain, admin)
    first = await _build(domain, admin, project)
    await domain.store.machines.acquire_machine(
        build_id=first,
        project_id=project,
        platform=AMD64,
        now=clock(),
        lost_before=clock() - timedelta(seconds=LOST_AFTER),
        binding=new_binding(),
    )
    second = await _build(domain, admin, project)
    active = await _active(domain, admin, second, agent)
    assert active.server_name == (await agent.machine()).server_name


def test_a_ready_machine_without_its_certificate_is_not_serving(clock: Clock) -> None:
    binding = new_binding()
    machine = Machine(
        id="m0m0m0m0m0",
        token_id="t0t0t0t0t0",
        platform=AMD64,
        endpoint="10.0.0.1:1",
        capacity=1,
        state=MachineState.ACTIVE,
        registered_at=clock(),
        last_heartbeat_at=clock(),
        changed_at=clock(),
        project_id="p0p0p0p0p0",
        binding_id=binding.binding_id,
        server_name=binding.server_name,
        ready_binding_id=binding.binding_id,
    )
    assert machine.ready
    assert not serving(machine, fresh_since=clock() - timedelta(seconds=3))
    certified = replace(machine, server_cert="PEM", server_key_sealed="sealed")
    assert serving(certified, fresh_since=clock() - timedelta(seconds=3))
    assert not serving(certified, fresh_since=clock() + timedelta(seconds=1))  # stale


async def test_concurrent_acquirers_mint_for_one_binding_and_store_one_certificate(
    domain: Domain,
    admin: Principal,
    domain_settings: Settings,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Builds of one project asking at once, in two server processes (two domains over one
    database): one machine is claimed, every certificate minted names its one binding, and
    one of them is stored."""
    minted: list[tuple[str, str]] = []
    issue = endpoints_module.pki.issue_server_cert

    def recording(ca: KeyPair, server_name: str, *, now: datetime, not_after: datetime) -> KeyPair:
        pair = issue(ca, server_name, now=now, not_after=not_after)
        minted.append((server_name, pair.cert_pem))
        return pair

    monkeypatch.setattr(endpoints_module.pki, "issue_server_cert", recording)
    other = build_domain(domain.store, domain_settings, now=clock)
    try:
        agents = [await _agent(domain, f"10.0.0.{n}:{n}") for n in (1, 2)]
        project = await new_project(domain, admin)
        builds = [await _build(domain, admin, project) for _ in range(4)]
        answers = await asyncio.gather(
            *(
                (domain if n % 2 else other).endpoints.poll(admin, build, AMD64)
                for n, build in enumerate(builds)
            )
        )
        assert all(isinstance(answer, Pending) for answer in answers)
        machines = [await agent.machine() for agent in agents]
        bound = [m for m in machines if m.project_id == project]
        assert len(bound) == 1 and bound[0].server_name is not None
        assert minted and {name for name, _ in minted} == {bound[0].server_name}
        assert bound[0].server_cert in {cert for _, cert in minted}
    finally:
        await other.endpoints.close()
