"""BuildKit machines as their agents see them: registration, heartbeats, the desired state.

The server keeps what each machine should run; every heartbeat reports what it runs and
answers what it should. A machine bound to a project gets an Assignment (with its daemon's TLS
material whenever it does not run that binding yet); a machine no build has used for the idle
period is given back (Idle); a drained machine without a project is told to Stop.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from depot_api.domain.errors import InvalidField, NotFound, PermissionDenied
from depot_api.domain.ids import new_id, require_id, with_fresh_ids
from depot_api.domain.principal import Principal
from depot_api.domain.secretbox import SecretBox
from depot_api.metrics import set_machine_counts
from depot_api.models import Machine, MachineState, Platform, TokenKind
from depot_api.store.interface import MachineStore, ProjectStore

_ENDPOINT = re.compile(r"(?P<host>[A-Za-z0-9.\-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):(?P<port>\d{1,5})")
_ERROR_MAX = 4096


@dataclass(frozen=True, slots=True)
class Idle:
    pass


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class Assignment:
    binding_id: str
    project_id: str
    cache_generation: int
    server_name: str
    keep_gb: int
    keep_days: int
    # Present only when the agent does not run this binding yet.
    server_cert: str = ""
    server_key: str = ""
    ca_cert: str = ""


Desired = Idle | Stop | Assignment


@dataclass(frozen=True, slots=True)
class HealthReport:
    running_binding_id: str
    buildkit_ready: bool
    disk_used_bytes: int
    buildkit_error: str


class Machines:
    def __init__(
        self,
        *,
        machine_store: MachineStore,
        project_store: ProjectStore,
        box: SecretBox,
        idle_release: timedelta,
        now: Callable[[], datetime],
    ) -> None:
        self._machine_store = machine_store
        self._project_store = project_store
        self._box = box
        self._idle_release = idle_release
        self._now = now

    async def register(
        self, principal: Principal, platform: Platform, endpoint: str, capacity: int
    ) -> Machine:
        require_machine_token(principal)
        if _ENDPOINT.fullmatch(endpoint) is None or not 0 < int(endpoint.rsplit(":", 1)[1]) < 65536:
            raise InvalidField(
                "endpoint",
                f"must be host:port where clients reach the BuildKit daemon, got {endpoint[:80]!r}",
            )
        if not 0 <= capacity <= 1000:
            raise InvalidField("capacity", f"must be between 0 and 1000, got {capacity}")

        async def insert() -> Machine:
            now = self._now()
            machine = Machine(
                id=new_id(),
                token_id=principal.token_id,
                platform=platform,
                endpoint=endpoint,
                capacity=capacity or 1,
                state=MachineState.ACTIVE,
                registered_at=now,
                last_heartbeat_at=now,
                changed_at=now,
            )
            await self._machine_store.insert_machine(machine)
            return machine

        return await with_fresh_ids(insert)

    async def heartbeat(
        self, principal: Principal, machine_id: str, report: HealthReport
    ) -> Desired:
        require_machine_token(principal)
        require_id(machine_id, "machine_id")
        if report.running_binding_id:
            require_id(report.running_binding_id, "running_binding_id")
        if report.disk_used_bytes < 0:
            raise InvalidField("disk_used_bytes", "must not be negative")
        known = await self._machine_store.get_machine(machine_id)
        if known is None or known.token_id != principal.token_id:
            raise NotFound(f"machine {machine_id} not found; register again")
        now = self._now()
        machine = await self._machine_store.record_heartbeat(
            machine_id,
            running_binding_id=report.running_binding_id,
            ready=report.buildkit_ready,
            disk_used_bytes=report.disk_used_bytes,
            error=report.buildkit_error[:_ERROR_MAX] or None,
            now=now,
        )
        if machine is None:
            raise NotFound(f"machine {machine_id} not found; register again")
        if machine.project_id is not None and await self._machine_store.release_idle_machine(
            machine.id, idle_before=now - self._idle_release, now=now
        ):
            return Stop() if machine.state is MachineState.DRAINING else Idle()
        return await self._desired(machine, report.running_binding_id)

    async def _desired(self, machine: Machine, running_binding_id: str) -> Desired:
        if machine.project_id is None or machine.binding_id is None:
            return Stop() if machine.state is MachineState.DRAINING else Idle()
        project = await self._project_store.get_project(machine.project_id)
        if project is None:
            return Idle()
        assignment = Assignment(
            binding_id=machine.binding_id,
            project_id=project.id,
            cache_generation=machine.cache_generation or 0,
            server_name=machine.server_name or "",
            keep_gb=project.cache_policy.keep_gb,
            keep_days=project.cache_policy.keep_days,
        )
        if running_binding_id == machine.binding_id:
            return assignment
        ca = await self._project_store.get_project_ca(project.id)
        if ca is None or machine.server_cert is None or machine.server_key_sealed is None:
            return Idle()  # bound a moment ago; the material follows with the next heartbeat
        return replace(
            assignment,
            server_cert=machine.server_cert,
            server_key=self._box.open(machine.server_key_sealed),
            ca_cert=ca.cert_pem,
        )

    # Administration

    async def drain(self, machine_id: str) -> None:
        require_id(machine_id, "machine")
        if not await self._machine_store.set_machine_state(
            machine_id, MachineState.DRAINING, self._now()
        ):
            raise NotFound(f"machine {machine_id} not found")

    async def list(self) -> list[Machine]:
        return await self._machine_store.list_machines()

    async def count_for_metrics(self) -> None:
        """Count the machines by state and platform into the machines gauge (metrics.py)."""
        counts = Counter((m.state, m.platform) for m in await self._machine_store.list_machines())
        set_machine_counts(dict(counts))


def require_machine_token(principal: Principal) -> None:
    if principal.kind is not TokenKind.MACHINE:
        raise PermissionDenied("the machine service takes machine tokens only")
