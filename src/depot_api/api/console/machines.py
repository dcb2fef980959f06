"""The machines page: every BuildKit machine of this server, and who used each lately.

Machines are a pool shared by every organization on the server, so every signed-in person
sees every machine's own facts (platform, state, heartbeat, cache size, daemon trouble). What
belongs to a project is shown only to the project's organizations: the bound project's name,
and a connection's build, client address and IDs. Anyone else sees "another organization's
project" and the connection's times, bytes and outcome (docs/decisions.md, "Console:
machines").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from depot_api.api.console.web import Fragment, Page, PageRequest
from depot_api.models import Machine, MachineConnection, MachineState
from depot_api.times import utc_now

# Connections shown under each machine, newest first (`depot-api admin list-connections`
# shows more).
RECENT_CONNECTIONS = 10
# Active machines first, then draining ones; machines that went silent last.
_STATE_ORDER = {MachineState.ACTIVE: 0, MachineState.DRAINING: 1, MachineState.GONE: 2}
_HIDDEN = "…"


@dataclass(frozen=True, slots=True)
class ConnectionView:
    opened_at: datetime
    closed_at: datetime | None
    # The build, linked, when it is of one of the viewer's organizations' projects.
    build_id: str
    # What stands for the build otherwise: "another organization's build", "none named".
    build_label: str
    # The client's address; "" when it is not the viewer's to see.
    peer: str
    admitted: bool
    refusal: str
    bytes_from_client: int
    bytes_to_client: int

    @property
    def seconds(self) -> float | None:
        if self.closed_at is None:
            return None
        return (self.closed_at - self.opened_at).total_seconds()


@dataclass(frozen=True, slots=True)
class MachineView:
    machine: Machine
    # The bound project's name when the viewer's organizations own it; "" otherwise.
    project_name: str
    # Some project holds the machine (its name or not).
    bound: bool
    heartbeat_seconds_ago: float
    connections: list[ConnectionView]


async def machines_page(request: PageRequest) -> Page:
    return Page("machines.html", {"machines": await _views(request)})


async def machines_live(request: PageRequest) -> Fragment:
    """The page's list alone, which its script fetches again every two seconds."""
    return Fragment("machines_live.html", {"machines": await _views(request)})


async def _views(request: PageRequest) -> list[MachineView]:
    principal = request.principal
    principal.require_manager("see machines")
    domain = request.domain
    machines = sorted(
        await domain.machines.list(),
        key=lambda m: (_STATE_ORDER.get(m.state, 3), m.registered_at),
    )
    connections = {
        machine.id: await domain.connections.list(
            machine_id=machine.id, build_id=None, limit=RECENT_CONNECTIONS
        )
        for machine in machines
    }
    project_ids = {m.project_id for m in machines if m.project_id}
    project_ids |= {c.project_id for found in connections.values() for c in found if c.project_id}
    names = await domain.projects.names_in_organizations(principal, project_ids)
    now = utc_now()
    return [
        MachineView(
            machine=machine,
            project_name=names.get(machine.project_id or "", ""),
            bound=machine.project_id is not None,
            heartbeat_seconds_ago=max((now - machine.last_heartbeat_at).total_seconds(), 0.0),
            connections=[_connection_view(c, names) for c in connections[machine.id]],
        )
        for machine in machines
    ]


def _connection_view(connection: MachineConnection, names: dict[str, str]) -> ConnectionView:
    ours = connection.project_id is not None and connection.project_id in names
    if ours:
        build_id, label = connection.build_id, ""
    elif not connection.build_id:
        build_id, label = "", "none named"
    elif connection.project_id is None:
        # A build that does not exist (or is gone): its ID is what a client claimed.
        build_id, label = "", "an unknown build"
    else:
        build_id, label = "", "another organization's build"
    refusal = connection.refusal
    if not ours:
        # A refusal names the build and binding it was about (domain/connections.py).
        for secret in (connection.build_id, connection.binding_id):
            if secret:
                refusal = refusal.replace(secret, _HIDDEN)
    return ConnectionView(
        opened_at=connection.opened_at,
        closed_at=connection.closed_at,
        build_id=build_id,
        build_label=label,
        peer=connection.peer if ours else "",
        admitted=connection.admitted,
        refusal=refusal,
        bytes_from_client=connection.bytes_from_client,
        bytes_to_client=connection.bytes_to_client,
    )
