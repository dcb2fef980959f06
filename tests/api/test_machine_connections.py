"""AdmitConnection and ReportConnections through the in-process server, on every protocol:
a machine's front door asks about each client connection and reports what became of it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from depot_api.domain.builds import Outcome
from depot_api.domain.endpoints import Active
from depot_api.domain.ids import new_id
from depot_api.gen.depotapi.machine.v1 import machine_pb as pb
from depot_api.models import Platform
from depot_api.times import to_micros

from ..conftest import PROTOCOLS, Clients, InProcessAPI, bearer, raw_post
from ..factories import new_project

M = "/depotapi.machine.v1.MachineService/"
JSON = {"content-type": "application/json"}
# Lately: connections that ended more than a week ago are not kept.
_NOW = int(time.time())
OPENED = Timestamp(seconds=_NOW - 60, nanos=123_456_000)
CLOSED = Timestamp(seconds=_NOW - 51)


@dataclass
class Machine:
    clients: Clients
    token: str
    machine_id: str
    binding_id: str
    build_id: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)

    async def admit(self, build_id: str | None = None) -> pb.AdmitConnectionResponse:
        return await self.clients.machines.admit_connection(
            pb.AdmitConnectionRequest(
                machine_id=self.machine_id,
                binding_id=self.binding_id,
                build_id=build_id or self.build_id,
            ),
            headers=self.headers,
        )

    async def report(self, *reports: pb.ConnectionReport) -> None:
        await self.clients.machines.report_connections(
            pb.ReportConnectionsRequest(machine_id=self.machine_id, connections=list(reports)),
            headers=self.headers,
        )


async def _serving(api: InProcessAPI, protocol: str = "connect-json") -> Machine:
    """A registered machine, bound to a project, whose daemon is ready, and a running build
    of that project that holds an endpoint on it."""
    c = api.clients(protocol)
    domain = api.app.domain
    _, token = await domain.tokens.create_machine_token("agents")
    registered = await c.machines.register(
        pb.RegisterRequest(platform=pb.Platform.AMD64, endpoint="127.0.0.1:2345", capacity=1),
        headers=bearer(token),
    )
    admin = await domain.authenticator.authenticate(f"Bearer {api.org_token}")
    build, _ = await domain.builds.create(admin, await new_project(domain, admin))
    running = ""
    for _ in range(3):
        if isinstance(await domain.endpoints.poll(admin, build.id, Platform.AMD64), Active):
            return Machine(c, token, registered.machine_id, running, build.id)
        for _ in range(2):
            answer = await c.machines.heartbeat(
                pb.HeartbeatRequest(
                    machine_id=registered.machine_id,
                    running_binding_id=running,
                    buildkit_ready=bool(running),
                ),
                headers=bearer(token),
            )
            if answer.desired and answer.desired.field == "assignment":
                running = answer.desired.value.binding_id
    raise AssertionError("the build got no machine")


def _report(connection_id: str = "c1", **fields: object) -> pb.ConnectionReport:
    values: dict[str, object] = {
        "connection_id": connection_id,
        "peer": "10.1.2.3:45678",
        "opened_at": OPENED,
        "admitted": False,
        "refusal": "not TLS",
    }
    values.update(fields)
    return pb.ConnectionReport(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_live_build_is_admitted_and_an_ended_one_refused(
    api: InProcessAPI, protocol: str
) -> None:
    machine = await _serving(api, protocol)
    assert await machine.admit() == pb.AdmitConnectionResponse(admitted=True, refusal="")
    unknown = new_id()
    assert await machine.admit(unknown) == pb.AdmitConnectionResponse(
        admitted=False, refusal=f"no such build {unknown}"
    )
    admin = await api.app.domain.authenticator.authenticate(f"Bearer {api.org_token}")
    await api.app.domain.builds.finish(admin, machine.build_id, Outcome.canceled())
    assert await machine.admit() == pb.AdmitConnectionResponse(
        admitted=False, refusal=f"build {machine.build_id} has ended (canceled)"
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_reports_are_stored_and_updated(api: InProcessAPI, protocol: str) -> None:
    machine = await _serving(api, protocol)
    admitted = _report(
        "c1",
        build_id=machine.build_id,
        binding_id=machine.binding_id,
        admitted=True,
        refusal="",
        bytes_from_client=100,
        bytes_to_client=5000,
    )
    refused = _report("c2", refusal="client certificate of another CA")
    await machine.report(admitted, refused)
    await machine.report(admitted, refused)  # a retried batch
    final = _report(
        "c1",
        build_id=machine.build_id,
        binding_id=machine.binding_id,
        admitted=True,
        refusal="",
        closed_at=CLOSED,
        bytes_from_client=300,
        bytes_to_client=90000,
    )
    await machine.report(final)
    listed = await api.app.domain.connections.list(machine_id=machine.machine_id, build_id=None)
    by_id = {c.connection_id: c for c in listed}
    assert sorted(by_id) == ["c1", "c2"]
    one = by_id["c1"]
    assert (one.build_id, one.admitted, one.bytes_from_client, one.bytes_to_client) == (
        machine.build_id,
        True,
        300,
        90000,
    )
    assert to_micros(one.opened_at) == (_NOW - 60) * 1_000_000 + 123_456
    assert one.closed_at is not None and to_micros(one.closed_at) == (_NOW - 51) * 1_000_000
    assert (by_id["c2"].admitted, by_id["c2"].refusal, by_id["c2"].closed_at) == (
        False,
        "client certificate of another CA",
        None,
    )


async def test_the_rpcs_take_the_machines_own_token(api: InProcessAPI) -> None:
    machine = await _serving(api)
    c = machine.clients.machines
    _, other_token = await api.app.domain.tokens.create_machine_token("other agents")
    admit = pb.AdmitConnectionRequest(
        machine_id=machine.machine_id, binding_id=machine.binding_id, build_id=machine.build_id
    )
    report = pb.ReportConnectionsRequest(machine_id=machine.machine_id, connections=[_report()])
    for token, code in ((api.org_token, Code.PERMISSION_DENIED), (other_token, Code.NOT_FOUND)):
        with pytest.raises(ConnectError) as refused:
            await c.admit_connection(admit, headers=bearer(token))
        assert refused.value.code == code
        with pytest.raises(ConnectError) as refused:
            await c.report_connections(report, headers=bearer(token))
        assert refused.value.code == code
    with pytest.raises(ConnectError) as unknown:
        await c.admit_connection(
            pb.AdmitConnectionRequest(
                machine_id=new_id(), binding_id=machine.binding_id, build_id=machine.build_id
            ),
            headers=machine.headers,
        )
    assert unknown.value.code == Code.NOT_FOUND and "register again" in unknown.value.message
    assert await api.app.domain.connections.list(machine_id=None, build_id=None) == []


async def _post(
    api: InProcessAPI, token: str, rpc: str, body: object
) -> tuple[int, dict[str, str]]:
    status, _, content = await raw_post(
        api, M + rpc, json.dumps(body).encode(), {**JSON, **bearer(token)}
    )
    assert b"Traceback" not in content
    return status, json.loads(content)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, ("machineId is required",)),
        ({"machineId": "nope"}, ("machineId", "is not a valid ID")),
        ({"machineId": "aaaaaaaaaa", "bindingId": "bbbbbbbbbb"}, ("buildId is required",)),
        ({"machineId": "aaaaaaaaaa", "buildId": "bbbbbbbbbb"}, ("bindingId is required",)),
    ],
)
async def test_admission_names_bad_input(
    api: InProcessAPI, body: dict[str, str], words: tuple[str, ...]
) -> None:
    machine = await _serving(api)
    status, answer = await _post(api, machine.token, "AdmitConnection", body)
    assert (status, answer["code"]) == (400, "invalid_argument"), answer
    for word in words:
        assert word in answer["message"], answer


def _json_report(**fields: object) -> dict[str, object]:
    return {
        "connectionId": "c1",
        "peer": "10.1.2.3:4",
        "openedAt": "2026-01-02T03:04:05Z",
        **fields,
    }


@pytest.mark.parametrize(
    ("reports", "words"),
    [
        ([_json_report(connectionId="")], ("connections[0].connectionId is required",)),
        (
            [_json_report(connectionId="x" * 65)],
            ("connections[0].connectionId is too long: 65 characters, at most 64",),
        ),
        ([_json_report(buildId="a\u0000b")], ("connections[0].buildId", "control characters")),
        (
            [_json_report(), _json_report(peer="p" * 256)],
            ("connections[1].peer is too long: 256 characters, at most 255",),
        ),
        ([_json_report(openedAt=None)], ("connections[0].openedAt is required",)),
        (
            [_json_report(bytesToClient="-1")],
            ("connections[0].bytesToClient must not be negative",),
        ),
        (
            [_json_report(connectionId=f"c{i}") for i in range(501)],
            ("connections holds 501 reports; send at most 500 per call",),
        ),
        ([_json_report(openedAt="yesterday")], ("Timestamp", "RFC 3339")),
    ],
)
async def test_reports_name_bad_input(
    api: InProcessAPI, reports: list[dict[str, object]], words: tuple[str, ...]
) -> None:
    machine = await _serving(api)
    body = {"machineId": machine.machine_id, "connections": reports}
    status, answer = await _post(api, machine.token, "ReportConnections", body)
    assert (status, answer["code"]) == (400, "invalid_argument"), answer
    for word in words:
        assert word in answer["message"], answer
    assert await api.app.domain.connections.list(machine_id=None, build_id=None) == []


async def test_a_timestamp_out_of_range_is_bad_input(api: InProcessAPI) -> None:
    machine = await _serving(api, "connect-proto")  # JSON cannot even write one
    with pytest.raises(ConnectError) as raised:
        await machine.report(_report(opened_at=Timestamp(seconds=2**62)))
    assert raised.value.code == Code.INVALID_ARGUMENT
    assert "connections[0].opened_at is not a valid timestamp" in raised.value.message
