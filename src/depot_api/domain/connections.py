"""The machines' front doors: whether a client connection may use a machine now, and the
record of connections the agents report, so that an operator can see who used a machine.

The agent terminates TLS with the server certificate of its binding and asks here, before it
forwards a byte, about the build the client certificate names. A certificate outlives many
of the reasons to refuse it (it is valid until the build's deadline, whether the build ended
or its machine changed hands), so the answer is decided from the database each time, by one
read: the build is running and within its deadline, it holds an endpoint on this machine,
and the machine still serves the build's project under the binding the client reached. A
refusal is an answer, with one line that says why; only bad input is an error.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from depot_api.domain.errors import InvalidField, NotFound
from depot_api.domain.ids import require_id
from depot_api.domain.machines import require_machine_token
from depot_api.domain.principal import Principal
from depot_api.domain.text import require_description
from depot_api.metrics import count_front_door
from depot_api.models import AdmissionFacts, BuildStatus, MachineConnection
from depot_api.store.interface import ConnectionStore, MachineStore

# How long a machine's connections are kept after they end (docs/decisions.md).
CONNECTION_RETENTION = timedelta(days=7)
# Bounds on one ReportConnections call, and on each report's text (a longer refusal is cut).
MAX_REPORTS_PER_CALL = 500
_CONNECTION_ID_MAX = 64
_REPORTED_ID_MAX = 64  # a build or binding ID as the agent read it
_PEER_MAX = 255
_REFUSAL_MAX = 1024
# The operator's listing.
LIST_DEFAULT = 50
LIST_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    # Why not, in one line; "" when admitted.
    refusal: str = ""


ADMITTED = Admission(True)


@dataclass(frozen=True, slots=True)
class ReportedConnection:
    """One connection as an agent reports it."""

    connection_id: str
    build_id: str
    binding_id: str
    peer: str
    opened_at: datetime | None
    closed_at: datetime | None
    admitted: bool
    refusal: str
    bytes_from_client: int
    bytes_to_client: int


class Connections:
    def __init__(
        self,
        *,
        connection_store: ConnectionStore,
        machine_store: MachineStore,
        max_build_duration: timedelta,
        now: Callable[[], datetime],
    ) -> None:
        self._connection_store = connection_store
        self._machine_store = machine_store
        self._max_build_duration = max_build_duration
        self._now = now

    async def admit(
        self, principal: Principal, machine_id: str, binding_id: str, build_id: str
    ) -> Admission:
        """Whether the build may use the machine now, through the binding the client
        reached. NotFound when the machine is not the caller's (as for heartbeats)."""
        require_machine_token(principal)
        require_id(machine_id, "machine_id")
        require_id(binding_id, "binding_id")
        require_id(build_id, "build_id")
        facts = await self._connection_store.admission_facts(machine_id, build_id)
        if facts is None or facts.machine_token_id != principal.token_id:
            raise NotFound(f"machine {machine_id} not found; register again")
        refusal = self._refusal(facts, binding_id, build_id)
        return ADMITTED if refusal is None else Admission(False, refusal)

    def _refusal(self, facts: AdmissionFacts, binding_id: str, build_id: str) -> str | None:
        build = facts.build
        if build is None:
            return f"no such build {build_id}"
        if build.status is not BuildStatus.RUNNING:
            return f"build {build_id} has ended ({build.status.value})"
        deadline = build.created_at + self._max_build_duration
        if self._now() >= deadline:
            return f"build {build_id} has passed its deadline ({deadline.isoformat()})"
        if facts.machine_project_id is None:
            return "this machine serves no project now"
        if facts.machine_project_id != build.project_id:
            return f"build {build_id} is of another project than this machine's"
        if facts.machine_binding_id != binding_id:
            return f"binding {binding_id} is not this machine's current binding"
        if not facts.endpoint_held:
            return f"build {build_id} is not bound to this machine"
        return None

    async def report(
        self, principal: Principal, machine_id: str, reports: Sequence[ReportedConnection]
    ) -> None:
        """Keep the machine's reports (see ConnectionStore.record_connections); the whole
        batch is refused, naming the report and field, if any report is malformed. A refusal's
        text is kept as one line, cut to its bound; a close before the opening (the agent's
        clock stepped back) counts as at the opening."""
        require_machine_token(principal)
        require_id(machine_id, "machine_id")
        if len(reports) > MAX_REPORTS_PER_CALL:
            raise InvalidField(
                "connections",
                f"holds {len(reports)} reports; send at most {MAX_REPORTS_PER_CALL} per call",
            )
        now = self._now()
        connections = [_checked(machine_id, i, report, now) for i, report in enumerate(reports)]
        known = await self._machine_store.get_machine(machine_id)
        if known is None or known.token_id != principal.token_id:
            raise NotFound(f"machine {machine_id} not found; register again")
        if connections:
            await self._connection_store.record_connections(
                machine_id, connections, keep_since=now - CONNECTION_RETENTION
            )
            count_front_door(connections)

    # Administration

    async def list(
        self, *, machine_id: str | None, build_id: str | None, limit: int = LIST_DEFAULT
    ) -> list[MachineConnection]:
        """The newest connections, of the machine and/or the build when given."""
        if machine_id is not None:
            require_id(machine_id, "machine")
        if build_id is not None:
            require_id(build_id, "build")
        if not 1 <= limit <= LIST_MAX:
            raise InvalidField("limit", f"must be between 1 and {LIST_MAX}, got {limit}")
        return await self._connection_store.list_connections(
            machine_id=machine_id, build_id=build_id, limit=limit
        )


def _checked(
    machine_id: str, index: int, report: ReportedConnection, now: datetime
) -> MachineConnection:
    def field(name: str) -> str:
        return f"connections[{index}].{name}"

    if not report.connection_id:
        raise InvalidField(field("connection_id"), "is required")
    require_description(report.connection_id, field("connection_id"), max_length=_CONNECTION_ID_MAX)
    require_description(report.build_id, field("build_id"), max_length=_REPORTED_ID_MAX)
    require_description(report.binding_id, field("binding_id"), max_length=_REPORTED_ID_MAX)
    require_description(report.peer, field("peer"), max_length=_PEER_MAX)
    if report.opened_at is None:
        raise InvalidField(field("opened_at"), "is required")
    closed_at = report.closed_at
    if closed_at is not None and closed_at < report.opened_at:
        # The agent's clock stepped back while the connection lasted: not worth losing the
        # batch over (the agent would send it again and again).
        closed_at = report.opened_at
    for name, count in (
        ("bytes_from_client", report.bytes_from_client),
        ("bytes_to_client", report.bytes_to_client),
    ):
        if count < 0:
            raise InvalidField(field(name), f"must not be negative, got {count}")
    return MachineConnection(
        machine_id=machine_id,
        connection_id=report.connection_id,
        build_id=report.build_id,
        binding_id=report.binding_id,
        peer=report.peer,
        opened_at=report.opened_at,
        closed_at=closed_at,
        admitted=report.admitted,
        refusal=_one_line(report.refusal, _REFUSAL_MAX),
        bytes_from_client=report.bytes_from_client,
        bytes_to_client=report.bytes_to_client,
        reported_at=now,
    )


def _one_line(text: str, max_length: int) -> str:
    """Free text an agent composed (it may carry an exception's message), kept as one line of
    at most max_length characters rather than refused: a report refused would come back with
    every retry of its batch."""
    flat = "".join(" " if unicodedata.category(c) in ("Cc", "Cs") else c for c in text)
    return flat if len(flat) <= max_length else flat[: max_length - 1] + "…"
