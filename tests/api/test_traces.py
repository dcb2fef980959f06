"""Traces: a server span per RPC with its attributes, database spans inside it, the caller's
traceparent honoured; nothing at all when tracing is off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from connectrpc.errors import ConnectError
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from depot_api import tracing
from depot_api.agent.agent import Agent, AgentConfig
from depot_api.gen.depot.core.v1 import project_pb

from ..conftest import PROTOCOLS, InProcessAPI, bearer, raw_post

_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
_PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
async def test_a_span_per_rpc_with_its_attributes(
    api: InProcessAPI, exporter: InMemorySpanExporter, protocol: str
) -> None:
    token = await api.app.domain.authenticator.authenticate(f"Bearer {api.org_token}")
    exporter.clear()
    clients = api.clients(protocol)
    await clients.projects.list_projects(
        project_pb.ListProjectsRequest(), headers=bearer(api.org_token)
    )
    with pytest.raises(ConnectError):
        await clients.projects.list_projects(
            project_pb.ListProjectsRequest(), headers=bearer("dpo_wrong")
        )
    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert [s.name for s in servers] == ["depot.core.v1.ProjectService/ListProjects"] * 2
    ok, refused = servers
    wire = "connect" if protocol.startswith("connect") else protocol
    assert ok.attributes is not None
    assert dict(ok.attributes) == {
        "rpc.system": "connect_rpc",
        "rpc.service": "depot.core.v1.ProjectService",
        "rpc.method": "ListProjects",
        "depot_api.protocol": wire,
        "depot_api.request_id": ok.attributes["depot_api.request_id"],
        "depot_api.principal.kind": "org",
        "depot_api.principal.id": token.token_id,
        "rpc.code": "ok",
    }
    assert ok.status.status_code is StatusCode.UNSET
    assert refused.attributes is not None
    assert refused.attributes["rpc.connect_rpc.error_code"] == "unauthenticated"
    assert refused.status.status_code is StatusCode.ERROR
    # The database's transactions are spans inside the call's.
    database = [s for s in spans if s.name.startswith("db.")]
    assert database
    assert ok.context is not None
    inside = [
        s for s in database if s.parent is not None and s.parent.span_id == ok.context.span_id
    ]
    assert inside
    assert all(s.context is not None and s.context.trace_id == ok.context.trace_id for s in inside)
    assert {s.attributes["db.system"] for s in inside if s.attributes} <= {"sqlite", "postgresql"}


async def test_the_callers_traceparent_is_the_parent(
    api: InProcessAPI, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    status, _, _ = await raw_post(
        api,
        "/depot.core.v1.ProjectService/ListProjects",
        b"{}",
        {
            **bearer(api.org_token),
            "content-type": "application/json",
            "traceparent": f"00-{_TRACE_ID}-{_PARENT_ID}-01",
        },
    )
    assert status == 200
    (server,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert server.context is not None
    assert format(server.context.trace_id, "032x") == _TRACE_ID
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == _PARENT_ID


async def test_nothing_is_made_when_tracing_is_off(api: InProcessAPI) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert not tracing.enabled()
    await api.clients().projects.list_projects(
        project_pb.ListProjectsRequest(), headers=bearer(api.org_token)
    )
    await raw_post(api, "/nowhere", b"", {"traceparent": f"00-{_TRACE_ID}-{_PARENT_ID}-01"})
    assert exporter.get_finished_spans() == ()
    provider.shutdown()


def _agent() -> Agent:
    return Agent(
        AgentConfig(
            server="http://127.0.0.1:1",
            token="dpm_secret",
            platform="amd64",
            advertise="bk:1234",
            listen="127.0.0.1:1234",
            buildkitd="buildkitd",
            state_dir=Path("state"),
            capacity=1,
            docker_socket=None,
        )
    )


def test_the_agents_machine_calls_carry_traceparent_only_when_on(
    exporter: InMemorySpanExporter,
) -> None:
    agent = _agent()
    with agent._traced("Heartbeat") as headers:
        assert headers["traceparent"].startswith("00-")
        assert headers["authorization"] == "Bearer dpm_secret"
    (span,) = exporter.get_finished_spans()
    assert span.name == "depotapi.machine.v1.MachineService/Heartbeat"
    assert span.kind is SpanKind.CLIENT
    assert span.context is not None
    assert headers["traceparent"].split("-")[1] == format(span.context.trace_id, "032x")
    tracing.use_tracer_provider(None)
    with agent._traced("Heartbeat") as headers:
        assert "traceparent" not in headers


async def test_the_agents_build_status_call_joins_the_servers_trace(
    api: InProcessAPI, exporter: InMemorySpanExporter
) -> None:
    """ReportBuildStatus, sent from the agent's own loop, is a client span like the other
    machine calls, and the server's span of it is that span's child."""
    agent = _agent()
    agent._machine_id = "m-traced"
    agent._status.add("b-traced", b"status")
    exporter.clear()
    # The agent's token is no machine's: refused, and kept for later, but traced all the same.
    assert not await agent._report_build_status(api.clients().machines)
    assert agent._status.pending_bytes() > 0
    name = "depotapi.machine.v1.MachineService/ReportBuildStatus"
    spans = [s for s in exporter.get_finished_spans() if s.name == name]
    (client,) = [s for s in spans if s.kind is SpanKind.CLIENT]
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert client.context is not None and server.context is not None
    assert server.parent is not None
    assert server.parent.span_id == client.context.span_id
    assert server.context.trace_id == client.context.trace_id


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
    ],
)
def test_tracing_is_on_only_when_an_endpoint_is_configured(
    environ: dict[str, str], wanted: bool
) -> None:
    assert tracing.wanted(environ) is wanted
