"""Metrics, request logs and traces of a real server with several worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import random
import string
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from depot_api.gen.depot.core.v1 import project_pb
from depot_api.gen.depot.core.v1.project_connect import ProjectServiceClient
from tests.databases import database
from tests.helpers import ServerProcess, running_server

from .conftest import admin
from .machines import QUICK, agent, free_port, wait_for

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_SERVICE = "depot.core.v1.ProjectService"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by name and labels."""
    with _NO_PROXY.open(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:  # fmt: skip
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def series(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str
) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


async def list_projects_on_many_connections(server: ServerProcess, calls: int) -> None:
    """Separate connections, so that the kernel spreads them over the workers."""
    h = {"authorization": f"Bearer {server.org_token}"}
    clients = [ProjectServiceClient(server.url) for _ in range(calls)]
    try:
        await asyncio.gather(
            *(c.list_projects(project_pb.ListProjectsRequest(), headers=h) for c in clients)
        )
    finally:
        for c in clients:
            await c.close()


def post(url: str, body: bytes = b"{}", headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(
        url, data=body, headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with _NO_PROXY.open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        e.close()
        return int(e.code)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_metrics_sum_over_the_workers_and_move_with_known_calls(
    tmp_path: Path, backend: str
) -> None:
    with (
        database(backend, tmp_path) as url,
        running_server(
            tmp_path / "data", "--database", url, "--workers", "2", "--log-format", "json"
        ) as server,
    ):
        metrics = f"{server.url}/metrics"
        before = scrape(metrics)
        calls = 24
        await list_projects_on_many_connections(server, calls)
        assert post(f"{server.url}/{_SERVICE}/ListProjects", headers={
            "authorization": "Bearer dpo_wrong"}) == 401  # fmt: skip
        ok = {"service": _SERVICE, "method": "ListProjects", "protocol": "connect"}
        # A call is counted when its handler returns, just after its answer was sent: the
        # client may read the 401 a moment before the counter moves. Wait for it (bounded).
        refused_before = value(before, "depot_api_rpc_requests_total", **ok, code="unauthenticated")
        await asyncio.to_thread(
            wait_for,
            lambda: (
                value(scrape(metrics), "depot_api_rpc_requests_total", **ok, code="unauthenticated")
                > refused_before
            ),
            10,
            "the refused call to be counted",
        )
        # Each scrape may land on either worker: every one must see all the calls.
        for _ in range(4):
            after = scrape(metrics)
            moved = value(after, "depot_api_rpc_requests_total", **ok, code="ok") - value(
                before, "depot_api_rpc_requests_total", **ok, code="ok"
            )
            assert moved == calls
            refused = value(
                after, "depot_api_rpc_requests_total", **ok, code="unauthenticated"
            ) - value(before, "depot_api_rpc_requests_total", **ok, code="unauthenticated")
            assert refused == 1
            histogram = value(after, "depot_api_rpc_duration_seconds_count", **ok) - value(
                before, "depot_api_rpc_duration_seconds_count", **ok
            )
            assert histogram == calls + 1
            # The server's start-up wrote (its first organization); each worker has opened
            # its connection(s) by now.
            assert value(after, "depot_api_db_transaction_seconds_count", outcome="commit") > 0
            assert value(after, "depot_api_db_connections", state="idle") >= 1
            # Every state and platform is there, zero when there is no machine.
            assert value(after, "depot_api_machines", state="active", platform="amd64") == 0
            assert len(series(after, "depot_api_machines")) == 6
        # The two workers both answered: each keeps its own files in the run's directory.
        files = list((server.data_dir / "run").glob("metrics-*/*.db"))
        assert len({f.name.rsplit("_", 1)[-1] for f in files}) == 2, files
        # One JSON line per request in the server's output.
        lines = [json.loads(x) for x in server.output if x.startswith("{")]
        requests = [x for x in lines if x["msg"] == "request" and x["method"] == "ListProjects"]
        assert len(requests) == calls + 1
        assert sum(x["code"] == "ok" for x in requests) == calls
        assert server.org_token not in "".join(server.output)
    # The run's metrics directory goes with the server.
    assert not list((tmp_path / "data" / "run").glob("metrics-*"))


def test_fuzzed_method_names_keep_the_label_sets_bounded(tmp_path: Path) -> None:
    with running_server(tmp_path / "data", "--workers", "2") as server:
        rng = random.Random(16)
        # "%" makes escapes, some of which are not UTF-8: refused (400) before the app sees them.
        alphabet = string.ascii_letters + string.digits + "._-%"
        for _ in range(150):
            method = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
            service = rng.choice([_SERVICE, "depot.Nope", "x" + method[:5]])
            status = post(f"{server.url}/{service}/{method}")
            assert status in (400, 401, 404, 405), (service, method, status)
        samples = scrape(f"{server.url}/metrics")
        labels = series(samples, "depot_api_rpc_requests_total")
        methods = {x["method"] for x in labels}
        services = {x["service"] for x in labels}
        # Only names served here, and `unknown`: never a name a client made up.
        assert methods <= {"unknown", "/metrics"}
        assert services <= {"unknown", "http", _SERVICE}
        # 150 made-up names, a handful of series: (service or unknown) x code.
        assert len(labels) <= 6, labels
        assert value(samples, "depot_api_rpc_requests_total", service="unknown",
                     method="unknown", protocol="connect", code="unimplemented") > 0  # fmt: skip


def test_metrics_on_an_address_of_their_own(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    with running_server(tmp_path / "data", "--workers", "2", "--metrics-address",
                        address) as server:  # fmt: skip
        asyncio.run(list_projects_on_many_connections(server, 6))
        with pytest.raises(urllib.error.HTTPError) as raised:
            _NO_PROXY.open(f"{server.url}/metrics", timeout=10)
        assert raised.value.code == 404
        raised.value.close()
        samples = scrape(f"http://{address}/metrics")
        assert value(samples, "depot_api_rpc_requests_total", service=_SERVICE,
                     method="ListProjects", protocol="connect", code="ok") == 6  # fmt: skip
        # The machine counts come from the workers' sweeps.
        assert len(series(samples, "depot_api_machines")) in (0, 6)


class _Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP collector: keeps the spans of every export it receives."""

    spans: ClassVar[list[tuple[str, str, dict[str, str], str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for resource in export.resource_spans:
            service = next(
                a.value.string_value
                for a in resource.resource.attributes
                if a.key == "service.name"
            )
            for scope in resource.scope_spans:
                for span in scope.spans:
                    attributes = {a.key: a.value.string_value for a in span.attributes}
                    type(self).spans.append((service, span.name, attributes, span.trace_id.hex()))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _collector() -> Iterator[str]:
    """An OTLP endpoint in this process; its spans in _Collector.spans."""
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=collector.serve_forever, daemon=True)
    thread.start()
    _Collector.spans.clear()
    try:
        yield f"http://127.0.0.1:{collector.server_address[1]}"
    finally:
        collector.shutdown()
        collector.server_close()


def test_the_agents_machine_calls_join_the_servers_traces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _collector() as endpoint:
        # Both the server and the agent read the standard variables.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        with running_server(tmp_path / "data", env=QUICK) as server:
            token = admin(server, "create-machine-token", "--description", "traced")
            with agent(server.url, token, tmp_path / "agent"):
                register = "depotapi.machine.v1.MachineService/Register"

                def joined() -> set[str]:
                    by_service: dict[str, set[str]] = {}
                    for service, name, _, trace in list(_Collector.spans):
                        if name == register:
                            by_service.setdefault(service, set()).add(trace)
                    agent_traces = by_service.get("depot-api-agent", set())
                    return agent_traces & by_service.get("depot-api", set())

                wait_for(lambda: bool(joined()), 30, "the agent's Register span and the server's")
                heartbeats = "depotapi.machine.v1.MachineService/Heartbeat"
                wait_for(
                    lambda: (
                        {s for s, n, _, _ in list(_Collector.spans) if n == heartbeats}
                        == {"depot-api", "depot-api-agent"}
                    ),
                    30,
                    "heartbeat spans from both",
                )


def test_spans_reach_an_otlp_collector_from_every_worker(tmp_path: Path) -> None:
    with _collector() as endpoint:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        with running_server(tmp_path / "data", "--workers", "2", env=env) as server:
            asyncio.run(list_projects_on_many_connections(server, 8))
            deadline = time.monotonic() + 30
            rpc = "depot.core.v1.ProjectService/ListProjects"
            while time.monotonic() < deadline:
                if sum(name == rpc for _, name, _, _ in _Collector.spans) >= 8:
                    break
                time.sleep(0.1)
            calls = [(s, a) for s, name, a, _ in _Collector.spans if name == rpc]
            assert len(calls) == 8
            assert {s for s, _ in calls} == {"depot-api"}
            assert all(a["depot_api.principal.kind"] == "org" for _, a in calls)
            assert any(name.startswith("db.") for _, name, _, _ in _Collector.spans)
