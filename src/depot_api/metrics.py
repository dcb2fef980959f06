"""The server's metrics, in the Prometheus text format (prometheus-client).

Every metric is defined here, once, with bounded labels: services and methods are the ones
served (or `unknown`; api/observing.py), statuses, states, platforms and outcomes are enums.
No ID is ever a label.

The server runs several worker processes. The supervisor makes a directory for this run and
names it to every worker in PROMETHEUS_MULTIPROC_DIR (server/supervisor.py): prometheus-client
then keeps each process's values in files there, and a scrape sums them over all workers, live
and dead (a counter of a worker that was restarted is not lost). Gauges say how they combine:
the database connections in use are summed over live workers only (`livesum`; the supervisor
marks a dead worker's files), the machines by state are the latest count any worker took
(`mostrecent`). Without that variable (one process, tests) the values are the process's own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from depot_api.models import BuildStatus, MachineConnection, MachineState, Platform

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Calls are short; GetEndpoint's stream waits for a machine for minutes.
_CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                 60, 300)  # fmt: skip
_BUILD_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 86400)
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TRANSACTION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)

RPC_REQUESTS = Counter(
    "depot_api_rpc_requests",
    "Requests answered, by service, method, protocol and code (a Connect code for an RPC, "
    "the HTTP status for the plain routes).",
    ["service", "method", "protocol", "code"],
)
RPC_DURATION = Histogram(
    "depot_api_rpc_duration_seconds",
    "Time from a request's arrival to the end of its answer (a stream's whole life).",
    ["service", "method", "protocol"],
    buckets=_CALL_BUCKETS,
)
BUILDS_FINISHED = Counter(
    "depot_api_builds_finished", "Builds that finished, by their final status.", ["status"]
)
BUILD_DURATION = Histogram(
    "depot_api_build_duration_seconds",
    "Time from a build's creation to its end, by its final status.",
    ["status"],
    buckets=_BUILD_BUCKETS,
)
MACHINES = Gauge(
    "depot_api_machines",
    "BuildKit machines known, by state and platform (counted from the database).",
    ["state", "platform"],
    multiprocess_mode="mostrecent",
)
FRONT_DOOR_CONNECTIONS = Counter(
    "depot_api_front_door_connections",
    "Client connections the agents' front doors reported closed, admitted or refused.",
    ["outcome"],
)
FRONT_DOOR_BYTES = Counter(
    "depot_api_front_door_bytes",
    "Bytes through the agents' front doors, of connections reported closed.",
    ["direction"],
)
GET_ENDPOINT_WAIT = Histogram(
    "depot_api_get_endpoint_wait_seconds",
    "How long GetEndpoint waited for a machine, by outcome (ready, or timeout).",
    ["outcome"],
    buckets=_WAIT_BUCKETS,
)
DB_CONNECTIONS = Gauge(
    "depot_api_db_connections",
    "Database connections of the workers, in use or idle, summed over live workers (sampled "
    "at each scrape and every few seconds).",
    ["state"],
    multiprocess_mode="livesum",
)
DB_TRANSACTION = Histogram(
    "depot_api_db_transaction_seconds",
    "Time a write transaction took, from asking for a connection to the end of its commit "
    "or rollback, by outcome.",
    ["outcome"],
    buckets=_TRANSACTION_BUCKETS,
)
# Looked up once: a label lookup per transaction costs as much as the observation.
TRANSACTION_COMMITTED = DB_TRANSACTION.labels("commit")
TRANSACTION_ROLLED_BACK = DB_TRANSACTION.labels("rollback")
RATE_LIMIT_REFUSALS = Counter(
    "depot_api_rate_limit_refusals",
    "Calls refused by an abuse limit: the call rate, or the open streams of a token.",
    ["limit"],
)


def observe_build_finished(status: BuildStatus, seconds: float) -> None:
    BUILDS_FINISHED.labels(status.value).inc()
    BUILD_DURATION.labels(status.value).observe(max(seconds, 0.0))


def count_silent_builds_canceled(count: int) -> None:
    """Builds the liveness sweep canceled: counted, but not in the duration histogram (the
    sweep's statement does not return their creation times)."""
    if count:
        BUILDS_FINISHED.labels(BuildStatus.CANCELED.value).inc(count)


def count_front_door(connections: Iterable[MachineConnection]) -> None:
    """Connections an agent reported, counted once each when reported closed (a report of an
    open connection is sent again at its close)."""
    for connection in connections:
        if connection.closed_at is None:
            continue
        FRONT_DOOR_CONNECTIONS.labels("admitted" if connection.admitted else "refused").inc()
        FRONT_DOOR_BYTES.labels("from_client").inc(connection.bytes_from_client)
        FRONT_DOOR_BYTES.labels("to_client").inc(connection.bytes_to_client)


def set_machine_counts(counts: dict[tuple[MachineState, Platform], int]) -> None:
    """Every state and platform, so a count that fell to zero reads zero."""
    for state in MachineState:
        for platform in Platform:
            MACHINES.labels(state.value, platform.value).set(counts.get((state, platform), 0))


def exposition() -> bytes:
    """Every metric, over all worker processes when run by the supervisor."""
    directory = os.environ.get(MULTIPROCESS_ENV)
    if not directory:
        return generate_latest(REGISTRY)
    return generate_latest(multiprocess_registry(Path(directory)))


def multiprocess_registry(directory: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry


def forget_process(pid: int, directory: Path) -> None:
    """A worker has exited: its live gauges no longer count (its counters still do)."""
    mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
