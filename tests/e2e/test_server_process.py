from __future__ import annotations

import json
import random
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


_BAD_PATH_MESSAGE = "the request path's %-escapes do not decode to UTF-8 text\n"


@pytest.mark.parametrize("protocol", ["--http1.1", "--http2-prior-knowledge"])
@pytest.mark.parametrize(
    "path",
    [
        "/x/a%d%B8",  # a lone continuation byte, after an escape that is not one
        "/depot.core.v1.ProjectService/%FF",
        "/depot.core.v1.ProjectService/ListProjects%C3",  # a sequence cut short
        "/x/%ED%A0%80",  # a surrogate
        "/x/%C0%AF",  # an overlong "/"
        "/x/%F4%90%80%80",  # above U+10FFFF
        "/x/%e9t%e9?q=1",  # Latin-1, lower-case escapes, with a query
    ],
)
def test_a_path_that_is_not_utf8_is_refused_at_once(
    server: ServerProcess, protocol: str, path: str
) -> None:
    """Refused with 400 and one line, over HTTP/1.1 and h2c; such paths used to hang (the
    server could not make the request's path into text and never answered)."""
    status, text = curl(server, path, '{"name": "x"}', server.org_token, protocol, "-m", "20")
    assert (status, text) == (400, _BAD_PATH_MESSAGE)


@pytest.mark.parametrize("protocol", ["--http1.1", "--http2-prior-knowledge"])
def test_fuzzed_escaped_paths_get_an_answer(server: ServerProcess, protocol: str) -> None:
    """Random bytes, %-escaped, as the method's name: 400 exactly when they are not UTF-8,
    else the app's 404 (no such method), each within 20 s. (One curl per request: curl 7.88
    fails every request after the first on a reused h2c connection, whatever the answer.)"""
    rng = random.Random(17)
    names = [rng.randbytes(rng.randint(1, 6)) for _ in range(50)]
    # Valid multi-byte text too, which random bytes rarely are.
    names += [rng.choice(["é", "😀", "ß€", "\x00", "\U0010ffff"]).encode() for _ in range(15)]
    statuses, expected = [], []
    for name in names:
        escaped = "".join(f"%{b:02X}" for b in name)
        status, _ = curl(
            server, f"/depot.core.v1.ProjectService/{escaped}", "{}", "", protocol, "-m", "20"
        )
        statuses.append(status)
        try:
            name.decode()
        except UnicodeDecodeError:
            expected.append(400)
        else:
            expected.append(404)
    assert statuses == expected, names
    assert 400 in expected and 404 in expected
