"""Build insights from real BuildKit: multi-stage builds run on the tests' Docker Engine (its
embedded BuildKit), their status messages recorded byte for byte (tests/buildkit_status.py),
written as a `--progress=rawjson` log, uploaded with `depot-api report-build` to a real server
(on both databases) and read with the official @depot/sdk-node: BuildKit's own step names,
start and completion, logs in order, the second build's cached steps and saved time, a failing
step's error, and core GetBuild's counters agreeing with the steps."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.buildkit_status import rawjson_lines, record_build
from tests.docker_engine import DockerEngine
from tests.helpers import ServerProcess

from .conftest import Org
from .machines import api_for
from .test_report_build import CACHED, UNCACHED, read_with_sdk, report_build

pytestmark = pytest.mark.buildkit


def multi_stage(marker: str) -> str:
    return (
        "FROM depot-api-test-base:latest AS build\n"
        f"RUN echo compiling {marker} && sleep 1 && echo compiled {marker} > /out\n"
        "FROM depot-api-test-base:latest\n"
        "COPY --from=build /out /out\n"
        "RUN cat /out && echo linked\n"
    )


async def test_a_real_buildkit_builds_rawjson_log_gives_its_build_insights(
    server: ServerProcess, org: Org, docker_engine: DockerEngine, tmp_path: Path
) -> None:
    marker = secrets.token_hex(6)  # its own cache: steps no other test ran
    first = record_build(docker_engine, multi_stage(marker))
    second = record_build(docker_engine, multi_stage(marker))
    failing = record_build(
        docker_engine,
        f"FROM depot-api-test-base:latest\nRUN echo about to fail {marker} >&2 && false\n",
    )
    assert not first.error and not second.error, (first.error, second.error)
    assert "exit code: 1" in failing.error

    api = api_for(server, org.token)
    project_id = await api.project("engine")
    builds = []
    for n, recorded in enumerate((first, second, failing)):
        log = tmp_path / f"build-{n}.jsonl"
        log.write_text("\n".join(rawjson_lines(recorded.status_responses)) + "\n")
        build = await api.build(project_id)
        done = report_build(server, build.build_id, build.build_token, str(log))
        assert done.returncode == 0, done.stderr
        builds.append({"projectId": project_id, "buildId": build.build_id})

    read_first, read_second, read_failing = read_with_sdk(server, org.token, builds)

    by_name = {s["name"]: s for s in read_first["steps"]}
    compile_step = by_name[
        f"[build 2/2] RUN echo compiling {marker} && sleep 1 && echo compiled {marker} > /out"
    ]
    link_step = by_name["[stage-1 3/3] RUN cat /out && echo linked"]
    assert "[stage-1 2/3] COPY --from=build /out /out" in by_name
    for step in (compile_step, link_step):
        assert step["cacheState"] == UNCACHED
        assert step["startedAt"] < step["completedAt"]
        assert step["hasLogs"]
    assert [line["message"] for line in compile_step["logs"]] == [f"compiling {marker}"]
    assert [line["message"] for line in link_step["logs"]] == [f"compiled {marker}", "linked"]
    assert read_first["build"]["totalSteps"] == len(read_first["steps"])
    assert read_first["build"]["cachedSteps"] == sum(
        s["cacheState"] == CACHED for s in read_first["steps"]
    )

    again = {s["name"]: s for s in read_second["steps"]}
    for name in (compile_step["name"], link_step["name"]):
        assert again[name]["cacheState"] == CACHED
        assert not again[name]["hasLogs"]
    assert read_second["build"]["cachedSteps"] == sum(
        s["cacheState"] == CACHED for s in read_second["steps"]
    )
    assert read_second["build"]["totalSteps"] == len(read_second["steps"])
    # The compile step slept a second in the first build.
    assert read_second["build"]["savedDurationSeconds"] >= 1

    (failed,) = [s for s in read_failing["steps"] if s["error"]]
    assert failed["name"] == f"[2/2] RUN echo about to fail {marker} >&2 && false"
    assert "exit code: 1" in failed["error"]
    assert [line["message"] for line in failed["logs"]] == [f"about to fail {marker}"]
