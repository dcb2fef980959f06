"""The domain's metrics move with what happens: builds finished, machines by state, front-door
traffic, GetEndpoint's wait, rate-limit refusals. In one process (the registry is the
process's own); the sum over worker processes is tests/e2e/test_observability.py's."""

from __future__ import annotations

import pytest
from connectrpc.errors import ConnectError
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from depot_api.api.limits import Limits, RateLimiter, StreamLimiter
from depot_api.domain.builds import Outcome
from depot_api.domain.endpoints import Active
from depot_api.models import Platform

from ..conftest import InProcessAPI
from ..factories import new_project
from .test_machine_connections import CLOSED, _report, _serving


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_finished_build_is_counted_once_with_its_duration(api: InProcessAPI) -> None:
    domain = api.app.domain
    admin = await domain.authenticator.authenticate(f"Bearer {api.org_token}")
    build, _ = await domain.builds.create(admin, await new_project(domain, admin))
    finished = sample("depot_api_builds_finished_total", status="success")
    timed = sample("depot_api_build_duration_seconds_count", status="success")
    await domain.builds.finish(admin, build.id, Outcome.success())
    await domain.builds.finish(admin, build.id, Outcome.success())  # a retry: not counted again
    assert sample("depot_api_builds_finished_total", status="success") == finished + 1
    assert sample("depot_api_build_duration_seconds_count", status="success") == timed + 1


async def test_machines_front_door_and_get_endpoint(api: InProcessAPI) -> None:
    waited = sample("depot_api_get_endpoint_wait_seconds_count", outcome="ready")
    machine = await _serving(api)
    # The machines gauge, as /metrics shows it: one active amd64 machine, none else.
    response = await api.http.get("http://test/metrics")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain")
    gauges = {
        (s.labels["state"], s.labels["platform"]): s.value
        for family in text_string_to_metric_families(response.content.decode())
        for s in family.samples
        if s.name == "depot_api_machines"
    }
    assert gauges[("active", "amd64")] == 1
    assert sum(gauges.values()) == 1
    assert len(gauges) == 6

    admitted = sample("depot_api_front_door_connections_total", outcome="admitted")
    refused = sample("depot_api_front_door_connections_total", outcome="refused")
    sent = sample("depot_api_front_door_bytes_total", direction="to_client")
    received = sample("depot_api_front_door_bytes_total", direction="from_client")
    await machine.report(
        _report("open", build_id=machine.build_id, admitted=True, refusal="",
                bytes_to_client=7),  # still open: counted when it closes
        _report("c1", build_id=machine.build_id, admitted=True, refusal="", closed_at=CLOSED,
                bytes_from_client=100, bytes_to_client=5000),
        _report("c2", closed_at=CLOSED),
    )  # fmt: skip
    assert sample("depot_api_front_door_connections_total", outcome="admitted") == admitted + 1
    assert sample("depot_api_front_door_connections_total", outcome="refused") == refused + 1
    assert sample("depot_api_front_door_bytes_total", direction="to_client") == sent + 5000
    assert sample("depot_api_front_door_bytes_total", direction="from_client") == received + 100

    # GetEndpoint of a build whose project's machine is ready: a wait, ended `ready`.
    domain = api.app.domain
    admin = await domain.authenticator.authenticate(f"Bearer {api.org_token}")
    build = await domain.builds.get(admin, machine.build_id)
    second, _ = await domain.builds.create(admin, build.project_id)
    events = [e async for e in domain.endpoints.acquire(admin, second.id, Platform.AMD64)]
    assert isinstance(events[-1], Active)
    assert sample("depot_api_get_endpoint_wait_seconds_count", outcome="ready") == waited + 1


def test_rate_limit_refusals_are_counted() -> None:
    limits = Limits(RateLimiter(1.0, 1), StreamLimiter(1))
    rate = sample("depot_api_rate_limit_refusals_total", limit="rate")
    streams = sample("depot_api_rate_limit_refusals_total", limit="streams")
    limits.check_rate("t1", {})
    with pytest.raises(ConnectError):
        limits.check_rate("t1", {})
    limits.open_stream("t1")
    with pytest.raises(ConnectError):
        limits.open_stream("t1")
    assert sample("depot_api_rate_limit_refusals_total", limit="rate") == rate + 1
    assert sample("depot_api_rate_limit_refusals_total", limit="streams") == streams + 1
