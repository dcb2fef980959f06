from __future__ import annotations

import json
import subprocess

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


def test_initial_org_token_works(server: ServerProcess) -> None:
    status, text = curl(
        server, "/depot.core.v1.OrganizationService/ListOrganizations", "{}", server.org_token
    )
    assert status == 200, text
    assert [o["name"] for o in json.loads(text)["organizations"]] == ["default"]


def test_fresh_org_is_isolated(server: ServerProcess, org: Org) -> None:
    status, text = curl(server, "/depot.core.v1.ProjectService/ListProjects", "{}", org.token)
    assert (status, json.loads(text)) == (200, {})
