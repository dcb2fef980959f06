"""Build insights, end to end, on both databases: the real depot CLI builds a multi-stage
Dockerfile on a real BuildKit (the private Docker Engine's) through an agent whose front door
reads the build's status as it forwards it; the official @depot/sdk-node then reads the steps
and logs from the server (tests/e2e/node/sdk_build_insights.mjs). Faults: the server stopped
during a build and started again; the agent killed in the middle of one.

The Engine runs without a network (tests/docker_engine.py): every build uses `--network none`.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from depot_api.store import Store, open_store
from tests.databases import BACKENDS, database
from tests.docker_engine import DockerEngine
from tests.helpers import ServerProcess, running_server, stop_process

from .conftest import admin
from .machines import QUICK, AgentProcess, Api, agent, api_for
from .node_scripts import run_node_script
from .test_depot_cli import DEPOT, depot

pytestmark = pytest.mark.buildkit

UNCACHED, CACHED = 1, 2  # GetBuildStepsResponse.BuildStep.CacheState
# The server and the CLI's health reports may be away for seconds in the fault tests.
PATIENT = {
    **QUICK,
    "DEPOT_API_MACHINE_LOST_AFTER": "60",
    "DEPOT_API_LIVENESS_WINDOW": "60",
}


@dataclass
class Site:
    server: ServerProcess
    agent: AgentProcess
    engine: DockerEngine
    token: str  # an organization token
    api: Api


@contextmanager
def site_on(
    backend: str, root: Path, engine: DockerEngine, env: dict[str, str] = QUICK
) -> Iterator[Site]:
    if not DEPOT.exists():
        pytest.fail("the depot CLI is not installed in tests/e2e/node: run `make install`")
    with ExitStack() as stack:
        url = stack.enter_context(database(backend, root))
        server = stack.enter_context(running_server(root / "data", "--database", url, env=env))
        machine_token = admin(server, "create-machine-token", "--description", "insights")
        machine = stack.enter_context(
            agent(server.url, machine_token, root / "agent", docker_socket=engine.socket)
        )
        org_id = admin(server, "create-org", "--name", "insights")
        token = admin(server, "create-token", "--org", org_id)
        yield Site(server, machine, engine, token, api_for(server, token))


@pytest.fixture(scope="module", params=BACKENDS)
def site(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    docker_engine: DockerEngine,
) -> Iterator[Site]:
    with site_on(
        request.param, tmp_path_factory.mktemp(f"insights-{request.param}"), docker_engine
    ) as s:
        yield s


@pytest.fixture
async def store(site: Site) -> AsyncIterator[Store]:
    opened = open_store(site.server.database)
    try:
        yield opened
    finally:
        await opened.close()


def multi_stage(directory: Path, run: str, marker: str) -> Path:
    """Two stages: `base` writes a file, the second (BuildKit's `stage-1`) copies it and runs
    `run`."""
    directory.mkdir(parents=True)
    (directory / "Dockerfile").write_text(
        "FROM depot-api-test-base:latest AS base\n"
        f"RUN echo {marker}-base > /base.txt\n"
        "\n"
        "FROM depot-api-test-base:latest\n"
        "COPY --from=base /base.txt /base.txt\n"
        f"RUN {run}\n"
    )
    return directory


def build(
    site: Site, project_id: str, context: Path, output: Path
) -> subprocess.CompletedProcess[str]:
    return depot(
        site.server.url, site.token, "build", "--project", project_id,
        "--network", "none", "--progress", "plain",
        "--output", f"type=local,dest={output}", str(context),
        home=context.parent / "home",
    )  # fmt: skip


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"exit {result.returncode}\n{output}"
    return output


def read_insights(site: Site, project_id: str, *build_ids: str) -> dict[str, Any]:
    env = {"DEPOT_E2E_PROJECT_ID": project_id, "DEPOT_E2E_BUILD_IDS": ",".join(build_ids)}
    found: dict[str, Any] = run_node_script(
        "sdk_build_insights.mjs", site.server.url, site.token, env, timeout=60
    )
    return found


def insights_once(
    site: Site, project_id: str, build_id: str, ready: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The build's insights once `ready` holds for them and they have settled: the same on
    two reads a second apart. The agent reports every half second and the build's end may
    come a moment after the CLI's; the steps and the counters are read by separate calls, so
    only settled insights can be compared with each other."""
    deadline = time.monotonic() + 30
    before: dict[str, Any] | None = None
    while True:
        found = read_insights(site, project_id, build_id)[build_id]
        if ready(found) and found == before:
            return found
        assert time.monotonic() < deadline, json.dumps(found, indent=1)
        before = found if ready(found) else None
        time.sleep(1)


async def builds_of(store: Store, project_id: str) -> list[str]:
    return [b.id for b in reversed(await store.builds.list_builds(project_id, None, 10))]


async def only_build(site: Site, project_id: str) -> str:
    store = open_store(site.server.database)
    try:
        (build_id,) = await builds_of(store, project_id)
    finally:
        await store.close()
    return build_id


def step(found: dict[str, Any], fragment: str) -> dict[str, Any]:
    matching = [s for s in found["steps"] if fragment in s["name"]]
    assert len(matching) == 1, (fragment, [s["name"] for s in found["steps"]])
    return matching[0]


def all_completed(found: dict[str, Any]) -> bool:
    steps = found["steps"]
    return (
        bool(steps)
        and all(s["completedAt"] is not None for s in steps)
        and any("] RUN " in s["name"] and s["hasLogs"] for s in steps)
    )


def completed_run(run_fragment: str) -> Callable[[dict[str, Any]], bool]:
    def ready(found: dict[str, Any]) -> bool:
        runs = [s for s in found["steps"] if run_fragment in s["name"]]
        return bool(runs) and runs[0]["completedAt"] is not None and all_completed(found)

    return ready


async def test_steps_logs_cache_and_counters(site: Site, store: Store, tmp_path: Path) -> None:
    project_id = await site.api.project("insights")
    marker = secrets.token_hex(4)
    run = f"echo {marker}-one && sleep 1 && echo {marker}-two && echo {marker}-three"
    context = multi_stage(tmp_path / "ctx", run, marker)
    succeeded(await asyncio.to_thread(build, site, project_id, context, tmp_path / "out1"))
    (first_id,) = await builds_of(store, project_id)
    first = await asyncio.to_thread(
        insights_once, site, project_id, first_id, completed_run(f"{marker}-one")
    )
    names = [s["name"] for s in first["steps"]]
    # BuildKit's own names, stage and position included.
    assert any(n.startswith("[base 2/2] RUN echo") for n in names), names
    assert any(n.startswith("[stage-1 2/3] COPY --from=base") for n in names), names
    the_run = step(first, "[stage-1 3/3] RUN echo")
    assert the_run["cacheState"] == UNCACHED and the_run["error"] is None
    assert the_run["startedAt"] is not None and the_run["completedAt"] >= the_run["startedAt"]
    assert the_run["completedAt"] - the_run["startedAt"] >= 1  # it slept a second
    assert the_run["hasLogs"]
    lines = [line.strip() for chunk in the_run["logs"] for line in chunk.splitlines()]
    printed = [line for line in lines if line.startswith(marker)]
    assert printed == [f"{marker}-one", f"{marker}-two", f"{marker}-three"], the_run["logs"]
    counters = first["build"]
    assert counters["totalSteps"] == len(first["steps"])
    assert counters["cachedSteps"] == sum(s["cacheState"] == CACHED for s in first["steps"])
    assert counters["buildDurationSeconds"] is not None and counters["buildDurationSeconds"] >= 1

    # The same build again: every step of the Dockerfile from cache, time saved.
    succeeded(await asyncio.to_thread(build, site, project_id, context, tmp_path / "out2"))
    _, second_id = await builds_of(store, project_id)

    def cached_run(found: dict[str, Any]) -> bool:
        runs = [s for s in found["steps"] if "[stage-1 3/3] RUN" in s["name"]]
        return bool(runs) and runs[0]["cacheState"] == CACHED

    second = await asyncio.to_thread(insights_once, site, project_id, second_id, cached_run)
    again = step(second, "[stage-1 3/3] RUN echo")
    assert again["digest"] == the_run["digest"]
    assert not again["hasLogs"]  # BuildKit sends no logs for a cached step
    assert step(second, "[base 2/2] RUN")["cacheState"] == CACHED
    counters = second["build"]
    assert counters["totalSteps"] == len(second["steps"])
    assert counters["cachedSteps"] == sum(s["cacheState"] == CACHED for s in second["steps"])
    assert counters["cachedSteps"] >= 2
    assert counters["savedDurationSeconds"] is not None and counters["savedDurationSeconds"] >= 1


async def test_a_failing_step_has_its_error_and_its_output(
    site: Site, store: Store, tmp_path: Path
) -> None:
    project_id = await site.api.project("insights-failing")
    marker = secrets.token_hex(4)
    context = multi_stage(tmp_path / "ctx", f"echo {marker}-failing >&2 && exit 1", marker)
    result = await asyncio.to_thread(build, site, project_id, context, tmp_path / "out")
    assert result.returncode != 0
    (build_id,) = await builds_of(store, project_id)

    def failed(found: dict[str, Any]) -> bool:
        runs = [s for s in found["steps"] if "[stage-1 3/3] RUN" in s["name"]]
        return bool(runs) and runs[0]["error"] is not None and runs[0]["hasLogs"]

    found = await asyncio.to_thread(insights_once, site, project_id, build_id, failed)
    failing = step(found, "[stage-1 3/3] RUN")
    assert "exit code: 1" in failing["error"], failing
    assert any(f"{marker}-failing" in chunk for chunk in failing["logs"]), failing["logs"]


# Faults: each with a server and an agent of its own (one database is enough here).


@pytest.fixture
def own_site(tmp_path: Path, docker_engine: DockerEngine) -> Iterator[Site]:
    with site_on(BACKENDS[0], tmp_path / "site", docker_engine, env=PATIENT) as s:
        yield s


def running_build(
    site: Site, project_id: str, context: Path, output: Path
) -> subprocess.Popen[str]:
    home = context.parent / "home"
    home.mkdir(exist_ok=True)
    return subprocess.Popen(
        [
            str(DEPOT), "build", "--project", project_id, "--network", "none",
            "--progress", "plain", "--output", f"type=local,dest={output}", str(context),
        ],
        env={
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "DEPOT_API_URL": site.server.url,
            "DEPOT_TOKEN": site.token,
            "DEPOT_NO_UPDATE_NOTIFIER": "1",
        },
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def wait_for_output(process: subprocess.Popen[str], text: str, timeout: float = 60) -> str:
    """The CLI's output up to its first line holding `text`."""
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"{text!r} not in the build's output:\n{seen}")


async def test_a_server_stopped_during_a_build_gets_every_step_when_back(
    own_site: Site, tmp_path: Path
) -> None:
    site = own_site
    project_id = await site.api.project("outage")
    marker = secrets.token_hex(4)
    run = (
        f"echo {marker}-before && sleep 3 && echo {marker}-during && sleep 4 && echo {marker}-after"
    )
    context = multi_stage(tmp_path / "ctx", run, marker)
    process = running_build(site, project_id, context, tmp_path / "out")
    try:
        await asyncio.to_thread(wait_for_output, process, f"{marker}-before")
        # Down while the RUN prints `during`; back before it ends.
        stop_process(site.server.process)
        await asyncio.sleep(4)
        with running_server(
            site.server.data_dir, "--database", site.server.database,
            "--port", str(site.server.port), env=PATIENT,
        ):  # fmt: skip
            output, _ = await asyncio.to_thread(process.communicate, timeout=120)
            assert process.returncode == 0, output
            build_id = await only_build(site, project_id)
            found = await asyncio.to_thread(
                insights_once, site, project_id, build_id, completed_run(f"{marker}-before")
            )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    the_run = step(found, "[stage-1 3/3] RUN echo")
    printed = [
        line.strip()
        for chunk in the_run["logs"]
        for line in chunk.splitlines()
        if line.strip().startswith(marker)
    ]
    assert printed == [f"{marker}-before", f"{marker}-during", f"{marker}-after"], the_run
    assert all(s["completedAt"] is not None for s in found["steps"])
    assert found["build"]["totalSteps"] == len(found["steps"])
    # The agent did meet the outage: its reports failed, were kept, and went through later.
    agent_log = site.agent.state_dir.with_name(f"{site.agent.state_dir.name}.log").read_text()
    assert "build status not taken" in agent_log, agent_log
    assert "the server takes build status again" in agent_log, agent_log


async def test_what_arrived_stays_when_the_agent_is_killed_mid_build(
    own_site: Site, tmp_path: Path
) -> None:
    site = own_site
    project_id = await site.api.project("killed")
    marker = secrets.token_hex(4)
    context = multi_stage(tmp_path / "ctx", f"echo {marker}-before && sleep 30", marker)
    process = running_build(site, project_id, context, tmp_path / "out")
    try:
        await asyncio.to_thread(wait_for_output, process, f"{marker}-before")
        build_id = await only_build(site, project_id)

        def run_started(found: dict[str, Any]) -> bool:
            runs = [s for s in found["steps"] if "[stage-1 3/3] RUN" in s["name"]]
            return bool(runs) and any(f"{marker}-before" in c for c in runs[0]["logs"])

        await asyncio.to_thread(insights_once, site, project_id, build_id, run_started)
        site.agent.process.send_signal(signal.SIGKILL)
        site.agent.process.wait()
        output, _ = await asyncio.to_thread(process.communicate, timeout=120)
        assert process.returncode != 0, output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    found = read_insights(site, project_id, build_id)[build_id]
    kept = step(found, "[stage-1 3/3] RUN echo")
    assert kept["startedAt"] is not None
    assert any(f"{marker}-before" in c for c in kept["logs"]), kept
    assert step(found, "[base 2/2] RUN")["completedAt"] is not None
