from __future__ import annotations

import pytest

from depot_api.api.field_names import is_json, json_path
from depot_api.gen.depot.cli.v1 import build_pb as cli_build_pb
from depot_api.gen.depot.core.v1 import project_pb


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("name", "name"),
        ("region_id", "regionId"),
        ("cache_policy.keep_gb", "cachePolicy.keepGb"),
        # Not a field of this request: protobuf's default JSON name, as a JSON caller writes.
        ("expires_in_seconds", "expiresInSeconds"),
        ("cache_policy.not_a_field.x_y", "cachePolicy.notAField.xY"),
    ],
)
def test_json_path_names_fields_by_their_json_names(path: str, named: str) -> None:
    assert json_path(project_pb.CreateProjectRequest.desc(), path) == named


def test_json_path_goes_through_lists_of_messages() -> None:
    request = cli_build_pb.ReportStatusStreamRequest.desc()
    assert json_path(request, "stable_digests") == "stableDigests"
    assert json_path(request, "statuses.vertexes") == "statuses.vertexes"


@pytest.mark.parametrize(
    ("content_type", "writes_json"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/connect+json", True),
        ("application/grpc+json", True),
        ("application/grpc-web+json", True),
        ("application/proto", False),
        ("application/connect+proto", False),
        ("application/grpc", False),
        ("application/grpc-web", False),
        ("text/json+x", False),
        ("", False),
    ],
)
def test_is_json(content_type: str, writes_json: bool) -> None:
    assert is_json(content_type) is writes_json
