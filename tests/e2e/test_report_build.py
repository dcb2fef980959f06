"""`depot-api report-build`: a BuildKit `--progress=rawjson` log of a multi-stage build run
elsewhere, uploaded with the build's token to a real server (on both databases), then read
with the official @depot/sdk-node: every step with BuildKit's own name, its times and cache
state, the RUN steps' lines in order, a failing step's error, the second build's cached steps
and saved time, and core GetBuild's counters agreeing with the steps. Malformed logs are
refused with their line numbers, and nothing of them is stored."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers import BIN, ServerProcess

from .conftest import Org
from .machines import api_for
from .node_scripts import run_node_script

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rawjson"
UNCACHED, CACHED = 1, 2


def report_build(server: ServerProcess, build_id: str, token: str, *source: str, stdin: str = ""):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [
            str(BIN / "depot-api"),
            "report-build",
            "--server",
            server.url,
            "--build-id",
            build_id,
            "--token",
            token,
            *source,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def read_with_sdk(server: ServerProcess, token: str, builds: list[dict[str, str]]) -> Any:
    return run_node_script(
        "sdk_insights.mjs", server.url, token, {"DEPOT_E2E_BUILDS": json.dumps(builds)}
    )


async def test_report_build_gives_a_build_run_elsewhere_its_insights(
    server: ServerProcess, org: Org
) -> None:
    api = api_for(server, org.token)
    project_id = await api.project("ci-runner")
    made = [await api.build(project_id) for _ in range(3)]
    logs = ["first-build.jsonl", "cached-build.jsonl", "failing-build.jsonl"]
    for build, log in zip(made, logs, strict=True):
        done = report_build(server, build.build_id, build.build_token, str(FIXTURES / log))
        assert done.returncode == 0, done.stderr
        assert f"of build {build.build_id}:" in done.stdout
    # Again, from standard input: nothing is merged twice.
    again = report_build(
        server,
        made[0].build_id,
        made[0].build_token,
        "-",
        stdin=(FIXTURES / logs[0]).read_text(),
    )
    assert again.returncode == 0, again.stderr
    assert "uploaded 15 status messages" in again.stdout
    assert "0 merged, 15 already there" in again.stdout

    first, second, failing = read_with_sdk(
        server,
        org.token,
        [{"projectId": project_id, "buildId": b.build_id} for b in made],
    )
    names = [s["name"] for s in first["steps"]]
    assert names == [
        "[internal] load build definition from Dockerfile",
        "[internal] load .dockerignore",
        "[internal] load metadata for docker.io/library/base:latest",
        "[stage-0 1/2] FROM docker.io/library/base:latest",
        "[internal] load build context",
        "[stage-0 2/2] RUN echo compiling && echo compiled > /out",
        "[stage-1 1/2] COPY --from=stage-0 /out /out",
        "[stage-1 2/2] RUN cat /out && echo linked",
    ]
    run = first["steps"][-1]
    assert (run["startedAt"], run["completedAt"]) == (
        "2026-11-30T16:00:04.100Z",
        "2026-11-30T16:00:06.100Z",
    )
    assert run["cacheState"] == UNCACHED and run["hasLogs"]
    assert [line["message"] for line in run["logs"]] == ["compiled", "linked"]
    assert [line["message"] for line in first["steps"][5]["logs"]] == ["compiling"]
    assert first["build"] == {
        "totalSteps": 8,
        "cachedSteps": 0,
        "savedDurationSeconds": 0,
    }

    cached = [s["name"] for s in second["steps"] if s["cacheState"] == CACHED]
    assert cached == [
        "[stage-0 1/2] FROM docker.io/library/base:latest",
        "[stage-0 2/2] RUN echo compiling && echo compiled > /out",
        "[stage-1 1/2] COPY --from=stage-0 /out /out",
        "[stage-1 2/2] RUN cat /out && echo linked",
    ]
    assert not any(s["hasLogs"] for s in second["steps"])
    # Saved: the RUN steps' 3 s and 2 s and the COPY's 0.2 s in the first build (its FROM
    # took no time), a minute earlier: 5.2 s, whole seconds in core.v1.Build.
    assert second["build"]["cachedSteps"] == len(cached)
    assert second["build"]["totalSteps"] == len(second["steps"])
    assert second["build"]["savedDurationSeconds"] == 5

    (bad,) = [s for s in failing["steps"] if s["error"]]
    assert bad["name"] == "[stage-0 2/2] RUN echo about to fail >&2 && false"
    assert "exit code: 1" in bad["error"]
    assert [line["message"] for line in bad["logs"]] == ["about to fail"]


async def test_a_malformed_log_is_refused_with_its_line_numbers_and_nothing_stored(
    server: ServerProcess, org: Org, tmp_path: Path
) -> None:
    api = api_for(server, org.token)
    project_id = await api.project("ci-runner")
    build = await api.build(project_id)
    refused = report_build(
        server, build.build_id, build.build_token, str(FIXTURES / "malformed.jsonl")
    )
    assert refused.returncode == 2, refused.stderr
    errors = refused.stderr.splitlines()
    assert errors[0].startswith("depot-api: ") and "malformed.jsonl line 3: " in errors[0]
    assert "vertexes[0].started is not an RFC 3339 time: 'yesterday'" in errors[0]
    assert any("line 5: logs[0].data is not base64" in e for e in errors), errors
    assert any("line 7: is not JSON" in e for e in errors), errors
    assert errors[-1] == ("nothing was uploaded: 3 of 16 lines are not BuildKit rawjson progress")
    (read,) = read_with_sdk(
        server, org.token, [{"projectId": project_id, "buildId": build.build_id}]
    )
    assert read["steps"] == []

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    nothing = report_build(server, build.build_id, build.build_token, str(empty))
    assert nothing.returncode == 2
    assert "holds no progress lines" in nothing.stderr
    missing = report_build(server, build.build_id, build.build_token, str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr and "No such file or directory" in missing.stderr
    wrong_token = report_build(
        server, build.build_id, "dpb_not-a-token", str(FIXTURES / "first-build.jsonl")
    )
    assert wrong_token.returncode == 1
    assert "the server refused the upload (unauthenticated)" in wrong_token.stderr
