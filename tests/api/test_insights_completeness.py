"""Whether a build's insights are complete, in the seed's Build view (GetBuild, ListBuilds):
what the BuildKit agents report with their status messages (ReportBuildStatus `dropped` and
`sideListener`), which the reference protos have no field for."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest
import yaml
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from depot_api.gen.depotapi.machine.v1 import machine_pb as pb

from ..conftest import InProcessAPI, bearer, raw_post
from .test_insights import FIRST_BUILD
from .test_machine_connections import Machine, _serving

# The shape the served OpenAPI document gives the view.
DOCUMENTED = yaml.safe_load(resources.files("depot_api").joinpath("openapi.yaml").read_bytes())[
    "components"
]["schemas"]["InsightsCompleteness"]


async def _report(machine: Machine, *, dropped: int = 0, side_listener: bool = False) -> None:
    batch = pb.BuildStatusBatch(
        build_id=machine.build_id,
        status_responses=[m.to_binary() for m in FIRST_BUILD],
        dropped=dropped,
        side_listener=side_listener,
    )
    await machine.clients.machines.report_build_status(
        pb.ReportBuildStatusRequest(machine_id=machine.machine_id, builds=[batch]),
        headers=machine.headers,
    )


async def _seed_builds(api: InProcessAPI, machine: Machine) -> tuple[Any, Any]:
    """The build as the seed's GetBuild shows it in JSON, and as its ListBuilds row."""
    headers = {"content-type": "application/json", **bearer(api.org_token)}
    status, _, body = await raw_post(
        api,
        "/depot.build.v1.BuildService/GetBuild",
        json.dumps({"buildId": machine.build_id}).encode(),
        headers,
    )
    assert status == 200, body
    got = json.loads(body)
    status, _, body = await raw_post(
        api,
        "/depot.build.v1.BuildService/ListBuilds",
        json.dumps({"projectId": got["projectId"]}).encode(),
        headers,
    )
    assert status == 200, body
    (listed,) = json.loads(body)["builds"]
    return got, listed


@pytest.mark.parametrize(
    ("dropped", "side_listener", "expected"),
    [
        (0, False, {"complete": True, "droppedMessages": 0, "sideListener": False}),
        (7, False, {"complete": False, "droppedMessages": 7, "sideListener": False}),
        (0, True, {"complete": True, "droppedMessages": 0, "sideListener": True}),
        (3, True, {"complete": False, "droppedMessages": 3, "sideListener": True}),
    ],
    ids=["complete", "incomplete", "partial", "incomplete-and-partial"],
)
async def test_the_build_says_whether_its_insights_are_complete(
    api: InProcessAPI, dropped: int, side_listener: bool, expected: dict[str, Any]
) -> None:
    machine = await _serving(api)
    await _report(machine, dropped=dropped, side_listener=side_listener)
    got, listed = await _seed_builds(api, machine)
    # Every field shows, false and 0 too: a client need not know proto3's defaults.
    assert got["insights"] == expected
    assert listed["insights"] == expected
    assert (got["totalSteps"], got["cachedSteps"]) == (3, 0)
    assert set(got["insights"]) == set(DOCUMENTED["required"]) == set(DOCUMENTED["properties"])


async def test_no_insights_shown_before_anything_is_reported(api: InProcessAPI) -> None:
    machine = await _serving(api)
    got, listed = await _seed_builds(api, machine)
    assert "insights" not in got and "totalSteps" not in got
    assert "insights" not in listed


async def test_the_flags_only_grow_over_later_reports(api: InProcessAPI) -> None:
    """An agent's dropped count is since it started serving the build: a later, smaller count
    does not undo the first, nor does a report without the side listener."""
    machine = await _serving(api)
    await _report(machine, dropped=5, side_listener=True)
    await _report(machine, dropped=2)
    got, _ = await _seed_builds(api, machine)
    assert got["insights"] == {"complete": False, "droppedMessages": 5, "sideListener": True}


async def test_a_count_beyond_the_fields_range_is_shown_as_its_largest(
    api: InProcessAPI,
) -> None:
    """The agent's count is an int64, the view's an int32: a huge count must not break the
    build's view."""
    machine = await _serving(api)
    await _report(machine, dropped=2**40)
    got, _ = await _seed_builds(api, machine)
    assert got["insights"] == {
        "complete": False,
        "droppedMessages": 2**31 - 1,
        "sideListener": False,
    }


async def test_a_negative_count_is_refused_and_changes_nothing(api: InProcessAPI) -> None:
    machine = await _serving(api)
    await _report(machine, dropped=1)
    with pytest.raises(ConnectError) as caught:
        await _report(machine, dropped=-4, side_listener=True)
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert "builds[0].dropped" in str(caught.value)
    got, _ = await _seed_builds(api, machine)
    assert got["insights"] == {"complete": False, "droppedMessages": 1, "sideListener": False}
