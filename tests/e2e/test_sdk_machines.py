"""The official Depot Node SDK (@depot/sdk-node 1.4.0, installed by `make install`) gets, keeps
and gives back a BuildKit machine on the real server, with real agents and the stand-in daemon:
GetEndpoint (server-streaming), ReportHealth (client-streaming), ReleaseEndpoint, FinishBuild.

tests/e2e/node/sdk_machines.mjs makes the calls and prints what it saw as one JSON document. It
stops at two checkpoints (files in a directory the test gives it; it goes on at a line on its
stdin), so the test can open mutual TLS with the SDK's certificates while the build holds the
machine, and watch the machine being given back after ReleaseEndpoint but before FinishBuild.
While held, the script keeps the build alive with a ReportHealth stream, as a real client does
(the cluster cancels a build silent for 5 s, which a loaded machine can otherwise reach).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from depot_api.gen.depot.core.v1 import build_pb as core_build_pb

from .machines import AMD64, STANDIN_WORKER, Api, Cluster, api, cluster, mtls_list_workers, wait_for
from .node_scripts import NODE_DIR, SDK_VERSION, node_for_sdk, script_env

__all__ = ["api", "cluster"]  # fixtures, imported for pytest to find

SCRIPT = "sdk_machines.mjs"

PERMISSION_DENIED, RESOURCE_EXHAUSTED = 7, 8  # Connect / gRPC codes
HEALTH_REPORTS, HEALTH_EVERY_MS, DENIED_REPORTS = 4, 300, 5  # as in the script
PENDING_EVERY_MS = 500  # DEPOT_API_PENDING_INTERVAL in the machines cluster


class SdkScript:
    """sdk_machines.mjs running against the server, held at its checkpoints."""

    def __init__(self, url: str, token: str, project_id: str, hold_dir: Path) -> None:
        node = node_for_sdk(SDK_VERSION)
        self.hold_dir = hold_dir
        self.process = subprocess.Popen(
            [node, str(NODE_DIR / SCRIPT)],
            cwd=NODE_DIR,
            env=script_env(
                url,
                token,
                {"DEPOT_E2E_PROJECT_ID": project_id, "DEPOT_E2E_HOLD_DIR": str(hold_dir)},
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def checkpoint(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the script is held at the checkpoint; what it wrote there."""
        path = self.hold_dir / f"{name}.json"
        wait_for(
            lambda: path.exists() or self.process.poll() is not None,
            timeout,
            f"sdk_machines.mjs to reach checkpoint {name!r}",
        )
        if not path.exists():
            self.fail_with_output(f"sdk_machines.mjs ended before checkpoint {name!r}")
        document: dict[str, Any] = json.loads(path.read_text())
        return document

    def go_on(self) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write("go on\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            self.fail_with_output("sdk_machines.mjs ended while held at a checkpoint")

    def result(self) -> dict[str, Any]:
        stdout, stderr = self.process.communicate(timeout=60)
        assert self.process.returncode == 0, (
            f"sdk_machines.mjs exited with {self.process.returncode}\n"
            f"stderr:\n{stderr}\nstdout:\n{stdout}"
        )
        observed: dict[str, Any] = json.loads(stdout)
        return observed

    def fail_with_output(self, what: str) -> None:
        stdout, stderr = self.process.communicate(timeout=60)
        pytest.fail(
            f"{what} (exit {self.process.returncode})\nstderr:\n{stderr}\nstdout:\n{stdout}"
        )

    def stop(self) -> None:
        """Kill the script (by its PID) if it still runs, and close its pipes."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


async def build_status(api: Api, build_id: str) -> int:
    seen = await api.core_builds.get_build(
        core_build_pb.GetBuildRequest(build_id=build_id), headers=api.org
    )
    return int(seen.build.status)


async def test_sdk_node_gets_keeps_and_releases_a_machine(
    api: Api, cluster: Cluster, tmp_path: Path
) -> None:
    project = await api.project("sdk-machines")
    org_token = api.org["authorization"].removeprefix("Bearer ")
    script = await asyncio.to_thread(SdkScript, api.url, org_token, project, tmp_path)
    try:
        # Checkpoint 1: GetEndpoint answered and ReportHealth ended; the build holds the machine.
        held = await asyncio.to_thread(script.checkpoint, "active")
        build_id = held["buildId"]
        assert held["endpoint"] in {a.endpoint for a in cluster.agents}
        (machine,) = [a for a in cluster.agents if a.endpoint == held["endpoint"]]
        assert machine.lifecycle(project) == ["started"]
        # Real mutual TLS with exactly the PEMs the SDK handed back.
        workers = await asyncio.to_thread(
            mtls_list_workers,
            held["endpoint"],
            held["serverName"],
            held["clientCert"],
            held["clientKey"],
            held["caCert"],
        )
        assert workers == [STANDIN_WORKER]
        assert await build_status(api, build_id) == core_build_pb.Build.Status.RUNNING
        script.go_on()

        # Checkpoint 2: ReleaseEndpoint answered; FinishBuild not yet called. The machine is
        # given back: after its idle second the agent stops the daemon.
        released = await asyncio.to_thread(script.checkpoint, "released")
        assert released["buildId"] == build_id
        await asyncio.to_thread(
            wait_for, lambda: "stopped" in machine.events(project), 10, "the daemon to stop"
        )
        assert machine.lifecycle(project) == ["started", "stopped"]
        # Released, not ended: the stop came from ReleaseEndpoint, not from FinishBuild.
        assert await build_status(api, build_id) == core_build_pb.Build.Status.RUNNING
        script.go_on()

        seen = await asyncio.to_thread(script.result)
    finally:
        await asyncio.to_thread(script.stop)

    # The Platform value the SDK declares for AMD64 is the server's PLATFORM_AMD64.
    assert seen["platformAmd64"] == AMD64
    assert seen["buildId"] == build_id
    assert seen["otherBuildId"] != build_id

    # GetEndpoint: pending while the daemon started (at least one: it was not running yet),
    # then exactly one active as the last message of the stream. On a slow machine an attempt
    # may end in ResourceExhausted after the cluster's 6 s wait; the script retries those.
    *retried, served = seen["getEndpointAttempts"]
    for attempt in retried:
        assert attempt["error"]["code"] == RESOURCE_EXHAUSTED, attempt["error"]
        assert {m["case"] for m in attempt["messages"]} == {"pending"}
    assert served["error"] is None
    cases = [m["case"] for m in served["messages"]]
    served_pending = len(cases) - 1
    assert cases == ["pending"] * served_pending + ["active"]
    assert seen["pending"] >= 1
    assert seen["pending"] == served_pending + sum(len(a["messages"]) for a in retried)
    arrivals = [m["atMs"] for m in served["messages"]]
    assert arrivals == sorted(arrivals)
    # The server sends pending every 0.5 s and the SDK handed each over as it came, so the
    # arrivals span most of that time rather than coming together at the end.
    assert arrivals[-1] - arrivals[0] >= (served_pending - 1) * PENDING_EVERY_MS // 2, arrivals
    assert served["streamEndedMs"] >= arrivals[-1]

    # The active connection, as printed at the end: what the test used for the handshake.
    active = seen["active"]
    assert active == {key: held[key] for key in held if key != "buildId"}
    assert active["serverName"].endswith(".machines.depot-api.internal")
    assert active["clientCert"].startswith("-----BEGIN CERTIFICATE-----")
    assert active["caCert"].startswith("-----BEGIN CERTIFICATE-----")
    assert active["clientCert"] != active["caCert"]
    assert "PRIVATE KEY-----" in active["clientKey"]

    # ReportHealth: the SDK pulled the reports from the iterable as it sent them (about
    # 300 ms apart), and the one answer came after the last: an empty ReportHealthResponse.
    health = seen["health"]
    assert health["sent"] == HEALTH_REPORTS
    assert health["response"] == []
    sent_at = health["sentAtMs"]
    gaps = [later - earlier for earlier, later in pairwise(sent_at)]
    assert min(gaps) >= HEALTH_EVERY_MS * 0.9, sent_at
    assert health["answeredMs"] >= sent_at[-1] >= (HEALTH_REPORTS - 1) * HEALTH_EVERY_MS * 0.9

    # The keep-alive streams held open at both checkpoints ended when told to, each answered
    # with one empty ReportHealthResponse (after the release too: the build still ran).
    for held_at in (seen["heldActive"], seen["heldReleased"]):
        assert held_at["reports"] >= 1
        assert held_at["response"] == []

    # ReleaseEndpoint and FinishBuild answered empty messages; the build ended a success.
    assert seen["release"] == []
    assert seen["finish"] == []
    assert await build_status(api, build_id) == core_build_pb.Build.Status.SUCCESS

    # A build token used for another build: PermissionDenied on all three BuildKit RPCs, and
    # GetEndpoint's stream carried no message before the error.
    errors = seen["errors"]
    for rpc in ("getEndpoint", "reportHealth", "releaseEndpoint"):
        assert errors[rpc]["code"] == PERMISSION_DENIED, errors[rpc]
        assert errors[rpc]["name"] == "ConnectError"
    assert errors["getEndpointMessagesBeforeError"] == 0
    # The refused client stream failed early (normally at its first report): the SDK reported
    # the error without first draining the iterable of its reports, 300 ms apart.
    assert 1 <= errors["reportHealthReportsPulled"] < DENIED_REPORTS
