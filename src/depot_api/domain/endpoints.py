"""Giving builds BuildKit machines: GetEndpoint's wait, health reports, release, liveness.

A build asks for a machine of a platform; the store binds one to its project (or finds the
one the project has) and the build waits, sending `pending`, until the machine's agent reports
its daemon ready for that binding. Then the build gets the endpoint, the server name, the
project's CA certificate and a fresh client certificate that expires with the build's
deadline. A build that asked for a machine and then stays silent beyond the liveness window
is canceled, and its machine released.

Binding is two steps, so that no certificate is minted while the store holds locks: the
store claims the machine under a binding ID and server name chosen here beforehand, with no
certificate; then the server certificate is minted here and stored only if that binding is
still the machine's and has none. Whoever finds it missing mints it: the claimer, or any
later acquirer if the claimer died in between. A machine without its certificate is never
handed out, and its agent gets nothing to run until the certificate is there.

A build is not kept waiting for a machine that can never come: when no machine of its platform
that could take its project has been heard from within the machine liveness bound
(machine_lost_after, by the heartbeats in the database, so every server process agrees), it
gets failed_precondition at once, naming what to do. Operators whose autoscaler starts agents
on demand turn that off (wait_for_machines); builds then wait up to the acquire timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime, timedelta

from depot_api.domain import pki
from depot_api.domain.builds import Builds
from depot_api.domain.change_feed import ChangeFeed
from depot_api.domain.errors import DomainError, FailedPrecondition, ResourceExhausted
from depot_api.domain.ids import new_id
from depot_api.domain.principal import Principal
from depot_api.domain.secretbox import SecretBox
from depot_api.domain.waiting import WaitingBuilds
from depot_api.metrics import GET_ENDPOINT_WAIT, count_silent_builds_canceled
from depot_api.models import Binding, Build, BuildStatus, Machine, Platform, ProjectCA
from depot_api.store.interface import BuildStore, MachineStore, ProjectStore

log = logging.getLogger(__name__)

# A server certificate lives as long as its binding might: rebinding issues a new one.
SERVER_CERT_LIFETIME = timedelta(days=90)
# The TLS server name of a binding's daemon: not in DNS, only verified against the project CA.
_SERVER_NAME_DOMAIN = "machines.depot-api.internal"
# How often (at most) a build waiting in GetEndpoint counts as a sign of life; at least three
# times per liveness window.
_WAITING_IS_ALIVE_EVERY = 30.0
# A waiting build tries again at least this often, even when nothing seemed to change.
_RETRY_EVERY = 30.0
# For this many heartbeats after a process starts, a build is not refused for want of
# machines: agents that kept trying while every server was down reach it within one.
_STARTUP_GRACE_HEARTBEATS = 5


@dataclass(frozen=True, slots=True)
class Pending:
    # For polling clients: how long to wait before asking again.
    retry_after: timedelta = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Active:
    endpoint: str
    server_name: str
    client_cert: str
    client_key: str
    ca_cert: str


@dataclass(frozen=True)
class EndpointTimings:
    acquire_timeout: timedelta
    pending_interval: timedelta
    machine_lost_after: timedelta
    liveness_window: timedelta
    max_build_duration: timedelta
    machine_heartbeat: timedelta = timedelta(seconds=1)
    # How often a polling client (the depot CLI) is told to ask again.
    poll_interval: timedelta = timedelta(seconds=1)
    # How often a waiting stream looks for a change in the machines table.
    feed_interval: float = 0.5
    # How often each process logs its waiting builds, while some wait.
    wait_summary_every: float = 30.0


class Endpoints:
    def __init__(
        self,
        *,
        build_store: BuildStore,
        machine_store: MachineStore,
        project_store: ProjectStore,
        builds: Builds,
        box: SecretBox,
        timings: EndpointTimings,
        now: Callable[[], datetime],
        wait_for_machines: bool = False,
    ) -> None:
        self._build_store = build_store
        self._machine_store = machine_store
        self._project_store = project_store
        self._builds = builds
        self._box = box
        self._timings = timings
        self._now = now
        # Wait even when no machine of the platform is around (agents started on demand).
        self._wait_for_machines = wait_for_machines
        self._refuse_from = now() + min(
            timings.machine_lost_after, _STARTUP_GRACE_HEARTBEATS * timings.machine_heartbeat
        )
        self._feed = ChangeFeed(self._machine_stamp, interval=timings.feed_interval)
        self.waiting = WaitingBuilds(
            now=now,
            summary_every=timings.wait_summary_every,
            # A polling client that stopped asking for several intervals has gone away.
            poll_counts_for=max(5 * timings.poll_interval, timedelta(seconds=10)),
        )

    async def acquire(
        self, principal: Principal, build_id: str, platform: Platform
    ) -> AsyncIterator[Pending | Active]:
        """Pending while the machine is not ready, then one Active; or ResourceExhausted
        (the acquire timeout), or FailedPrecondition (no machine to wait for)."""
        build = await self._running(principal, build_id)
        await self._build_store.touch_build_health(build.id, self._now())
        ca = await self._project_ca(build.project_id)
        with self.waiting.stream(build.id, platform) as waiting:
            async with aclosing(self._wait(principal, build, platform, ca)) as events:
                async for event in events:
                    if isinstance(event, Pending):
                        waiting()
                    yield event

    async def _wait(
        self, principal: Principal, build: Build, platform: Platform, ca: pki.KeyPair
    ) -> AsyncGenerator[Pending | Active]:
        build_id = build.id
        started = time.monotonic()
        deadline = started + self._timings.acquire_timeout.total_seconds()
        pending_every = self._timings.pending_interval.total_seconds()
        alive_every = min(
            _WAITING_IS_ALIVE_EVERY, self._timings.liveness_window.total_seconds() / 3
        )
        last_pending = last_alive = started - pending_every
        last_try = started
        # While the start-up grace puts off the check for machines: when to look again.
        recheck_at: float | None = None
        changed = True
        seen = self._feed.generation
        while True:
            if changed:
                seen = self._feed.generation
                last_try = time.monotonic()
                build = await self._running(principal, build_id)
                machine = await self._acquire(build, platform, ca)
                if machine is not None and self._serving(machine):
                    await self._build_store.mark_build_started(build.id, self._now())
                    GET_ENDPOINT_WAIT.labels("ready").observe(time.monotonic() - started)
                    yield self._active(build, machine, ca)
                    return
                recheck_at = None
                if machine is None:
                    put_off = await self._refuse_if_nothing_to_wait_for(build, platform)
                    if put_off > 0:
                        recheck_at = time.monotonic() + put_off
            moment = time.monotonic()
            if moment >= deadline:
                GET_ENDPOINT_WAIT.labels("timeout").observe(moment - started)
                raise self._no_machine(platform, build_id)
            if moment - last_pending >= pending_every:
                last_pending = moment
                yield Pending()
            if moment - last_alive >= alive_every:
                last_alive = moment
                await self._build_store.touch_build_health(build.id, self._now())
            wait = min(
                pending_every - (moment - last_pending),
                alive_every - (moment - last_alive),
                deadline - moment,
                float("inf") if recheck_at is None else recheck_at - moment,
            )
            changed = await self._feed.wait(max(wait, 0.01), seen)
            changed = (
                changed
                or time.monotonic() - last_try >= _RETRY_EVERY
                or (recheck_at is not None and time.monotonic() >= recheck_at)
            )

    async def poll(
        self, principal: Principal, build_id: str, platform: Platform
    ) -> Pending | Active:
        """One look for a polling client (the depot CLI's GetBuildKitConnection): Active once
        the machine is ready, else Pending; FailedPrecondition when there is no machine to
        wait for. The wait's deadline counts from the first poll and is kept in the database,
        so polls may land on any server process."""
        build = await self._running(principal, build_id)
        now = self._now()
        since = await self._build_store.note_machine_wait(build.id, now)
        if since is None:
            raise FailedPrecondition(f"build {build_id} has ended; it cannot get a machine")
        ca = await self._project_ca(build.project_id)
        machine = await self._acquire(build, platform, ca)
        if machine is not None and self._serving(machine):
            self.waiting.poll_ended(build.id, platform)
            await self._build_store.mark_build_started(build.id, self._now())
            return self._active(build, machine, ca)
        try:
            if machine is None:
                await self._refuse_if_nothing_to_wait_for(build, platform)
            if now - since >= self._timings.acquire_timeout:
                raise self._no_machine(platform, build_id)
        except DomainError:
            self.waiting.poll_ended(build.id, platform)
            raise
        # The wait began with this poll when the database kept this poll's moment.
        self.waiting.polled(build.id, platform, since, began=since == now)
        return Pending(retry_after=self._timings.poll_interval)

    async def health(self, principal: Principal, build_id: str) -> datetime | None:
        """A running build's sign of life. Returns None while the build runs, else when it
        ended: a polling client drops its machine once that moment has passed."""
        build = await self._builds.get(principal, build_id)
        if build.status is BuildStatus.RUNNING:
            if await self._build_store.touch_build_health(build.id, self._now()):
                return None
            build = await self._builds.get(principal, build_id)  # it ended meanwhile
        return build.finished_at or self._now()

    async def report_health(self, principal: Principal, build_id: str) -> None:
        """A streaming client's sign of life; an ended build is failed_precondition."""
        if await self.health(principal, build_id) is not None:
            raise FailedPrecondition(f"build {build_id} has ended")

    async def release(self, principal: Principal, build_id: str, platform: Platform) -> None:
        build = await self._builds.get(principal, build_id)
        await self._machine_store.release_endpoint(build.id, platform, self._now())

    async def cancel_silent_builds(self) -> list[str]:
        """One liveness sweep; every server process runs it periodically."""
        now = self._now()
        canceled = await self._build_store.cancel_silent_builds(
            silent_since=now - self._timings.liveness_window, now=now
        )
        count_silent_builds_canceled(len(canceled))
        return canceled

    async def close(self) -> None:
        await self._feed.close()
        await self.waiting.close()

    async def _machine_stamp(self) -> tuple[int, int, int]:
        """Moves when a machine changes, when one falls silent (so its builds move on), and
        when one that missed heartbeats is heard from again (so it may be handed out: under
        load, a burst of hand-outs can delay heartbeats past the freshness bound)."""
        now = self._now()
        return await self._machine_store.machine_stamp(
            now - self._timings.machine_lost_after, self._fresh_since(now)
        )

    def _fresh_since(self, now: datetime) -> datetime:
        return now - 3 * self._timings.machine_heartbeat

    async def _refuse_if_nothing_to_wait_for(self, build: Build, platform: Platform) -> float:
        """Raise FailedPrecondition when no machine that could take the build's project on
        the platform has been heard from within the liveness bound, unless waiting anyway is
        configured. Returns how many seconds the start-up grace still puts the check off (0
        once it is decided)."""
        if self._wait_for_machines:
            return 0.0
        now = self._now()
        if now < self._refuse_from:
            return (self._refuse_from - now).total_seconds()
        heard = await self._machine_store.last_heard_from(platform, build.project_id)
        if heard is not None and heard >= now - self._timings.machine_lost_after:
            return 0.0
        log.warning(
            "build %s asked for a BuildKit machine (%s), but no agent that could take it has "
            "been heard from in the last %gs: refused (start an agent, or --wait-for-machines)",
            build.id,
            platform.value,
            self._timings.machine_lost_after.total_seconds(),
        )
        raise self._nothing_to_wait_for(platform)

    def _nothing_to_wait_for(self, platform: Platform) -> FailedPrecondition:
        name = platform.value
        window = self._timings.machine_lost_after.total_seconds()
        return FailedPrecondition(
            f"no {name} BuildKit machine to wait for: no `depot-api agent --platform {name}` "
            f"that can take this build has been heard from in the last {window:g}s. Start one "
            "on a BuildKit host (see docs/machines.md), or, if agents start on demand, start "
            "the server with --wait-for-machines (DEPOT_API_WAIT_FOR_MACHINES=true)"
        )

    def _no_machine(self, platform: Platform, build_id: str) -> ResourceExhausted:
        return ResourceExhausted(
            f"no {platform.value} BuildKit machine became ready for build {build_id} "
            f"within {self._timings.acquire_timeout.total_seconds():.0f}s; retry later"
        )

    def _serving(self, machine: Machine) -> bool:
        return serving(machine, fresh_since=self._fresh_since(self._now()))

    async def _running(self, principal: Principal, build_id: str) -> Build:
        build = await self._builds.get(principal, build_id)
        if build.status is not BuildStatus.RUNNING:
            raise FailedPrecondition(
                f"build {build_id} has ended ({build.status.value}); it cannot get a machine"
            )
        return build

    async def _acquire(self, build: Build, platform: Platform, ca: pki.KeyPair) -> Machine | None:
        """The build's machine (claimed under a new binding if need be); None when no machine
        can be had. A machine without its server certificate gets one here, and is returned
        as it was: not serving until its agent has the certificate and runs a daemon with it
        (whose readiness moves the change feed)."""
        now = self._now()
        machine = await self._machine_store.acquire_machine(
            build_id=build.id,
            project_id=build.project_id,
            platform=platform,
            now=now,
            lost_before=now - self._timings.machine_lost_after,
            binding=new_binding(),
        )
        if machine is not None and machine.server_cert is None:
            await self._certify(machine, ca)
        return machine

    async def _certify(self, machine: Machine, ca: pki.KeyPair) -> None:
        """Mint the server certificate of the machine's binding and store it, unless the
        binding has changed or another caller stored one meanwhile. No lock is held here."""
        assert machine.binding_id is not None
        assert machine.server_name is not None
        now = self._now()
        server = pki.issue_server_cert(
            ca, machine.server_name, now=now, not_after=now + SERVER_CERT_LIFETIME
        )
        await self._machine_store.set_server_certificate(
            machine.id,
            binding_id=machine.binding_id,
            cert_pem=server.cert_pem,
            key_sealed=self._box.seal(server.key_pem),
        )

    def _active(self, build: Build, machine: Machine, ca: pki.KeyPair) -> Active:
        now = self._now()
        client = pki.issue_client_cert(
            ca,
            build.id,
            now=now,
            not_after=max(
                build.created_at + self._timings.max_build_duration, now + timedelta(minutes=5)
            ),
        )
        assert machine.server_name is not None
        return Active(
            endpoint=f"tcp://{machine.endpoint}",
            server_name=machine.server_name,
            client_cert=client.cert_pem,
            client_key=client.key_pem,
            ca_cert=ca.cert_pem,
        )

    async def _project_ca(self, project_id: str) -> pki.KeyPair:
        stored = await self._project_store.get_project_ca(project_id)
        if stored is None:
            now = self._now()
            fresh = pki.new_project_ca(project_id, now=now)
            stored = await self._project_store.insert_project_ca(
                ProjectCA(project_id, fresh.cert_pem, self._box.seal(fresh.key_pem), now)
            )
        return pki.KeyPair(cert_pem=stored.cert_pem, key_pem=self._box.open(stored.key_sealed))


def new_binding() -> Binding:
    """A binding for a machine not claimed yet: its ID, and a server name derived from it
    alone, so both are known before the store picks the machine (and each claim of a machine
    answers to a name of its own)."""
    binding_id = new_id()
    return Binding(binding_id=binding_id, server_name=f"{binding_id}.{_SERVER_NAME_DOMAIN}")


def serving(machine: Machine, *, fresh_since: datetime) -> bool:
    """Whether a build may be handed the machine: its server certificate is stored, its
    daemon runs the current binding, and it was heard from since fresh_since (a machine that
    missed three heartbeats is not handed out, even before it is declared lost)."""
    return (
        machine.server_cert is not None
        and machine.ready
        and machine.last_heartbeat_at >= fresh_since
    )
