from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import ServerProcess

from .conftest import Org


def curl(server: ServerProcess, path: str, body: str, token: str, *flags: str) -> tuple[int, str]:
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            *flags,
            "-H",
            "Content-Type: application/json",
            "-H",
            f"Authorization: Bearer {token}",
            "-d",
            body,
            "-w",
            "\n%{http_code}",
            f"{server.url}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    text, _, status = result.stdout.rpartition("\n")
    return int(status), text


def test_the_initial_token_is_in_its_file_and_not_in_the_output(server: ServerProcess) -> None:
    output = "".join(server.output)
    assert str(server.data_dir / "initial-org-token") in output
    assert server.org_token and server.org_token not in output
    assert server.org_token[4:-6] not in output


def test_initial_org_token_works(server: ServerProcess) -> None:
    status, text = curl(
        server, "/depot.core.v1.OrganizationService/ListOrganizations", "{}", server.org_token
    )
    assert status == 200, text
    assert [o["name"] for o in json.loads(text)["organizations"]] == ["default"]


def test_fresh_org_is_isolated(server: ServerProcess, org: Org) -> None:
    status, text = curl(server, "/depot.core.v1.ProjectService/ListProjects", "{}", org.token)
    assert (status, json.loads(text)) == (200, {})


@pytest.mark.parametrize(
    "path",
    [
        "/depot.core.v1.ProjectService/ListProjects",  # refused: no token
        "/depot.core.v1.ProjectService/NoSuchMethod",
        "/no/such/path",
    ],
)
def test_refusals_arrive_cleanly_over_http2(server: ServerProcess, path: str) -> None:
    """Answers given without needing the body reach curl intact over h2c, every time.

    (Answering before the body was read made the server reset the stream after the answer,
    and curl reported the reset instead of the answer about once in ten calls.)"""
    codes = []
    for _ in range(100):
        result = subprocess.run(
            [
                "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                "--http2-prior-knowledge", "-X", "POST",
                "-H", "Content-Type: application/json", "-d", '{"name": "x"}',
                f"{server.url}{path}",
            ],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        codes.append((result.returncode, result.stdout))
    expected_status = "401" if path.endswith("ListProjects") else "404"
    assert set(codes) == {(0, expected_status)}
