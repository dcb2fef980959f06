"""The request log: one line per call on every protocol, valid JSON in JSON mode, the request
ID taken from X-Request-Id when usable and sent back, and never a secret in any line."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterator

import pytest
from connectrpc.errors import ConnectError

from depot_api.gen.depot.core.v1 import project_pb
from depot_api.logs import JSONFormatter, TextFormatter

from ..conftest import PROTOCOLS, InProcessAPI, bearer, raw_post
from ..factories import new_build

_LIST = "/depot.core.v1.ProjectService/ListProjects"


class Lines(logging.Handler):
    """The request logger's records, formatted as the server would write them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def json(self) -> list[dict[str, object]]:
        formatter = JSONFormatter()
        lines = [formatter.format(r) for r in self.records]
        assert all("\n" not in line for line in lines)
        return [json.loads(line) for line in lines]

    def text(self) -> list[str]:
        formatter = TextFormatter()
        return [formatter.format(r) for r in self.records]


@pytest.fixture
def lines() -> Iterator[Lines]:
    logger = logging.getLogger("depot_api.requests")
    handler = Lines()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
async def test_one_line_per_call_on_every_protocol(
    api: InProcessAPI, lines: Lines, protocol: str
) -> None:
    clients = api.clients(protocol)
    token = await api.app.domain.authenticator.authenticate(f"Bearer {api.org_token}")
    await clients.projects.list_projects(
        project_pb.ListProjectsRequest(), headers=bearer(api.org_token)
    )
    with pytest.raises(ConnectError):
        await clients.projects.list_projects(
            project_pb.ListProjectsRequest(), headers=bearer("dpo_not_a_token")
        )
    ok, refused = lines.json()
    wire = "connect" if protocol.startswith("connect") else protocol
    assert ok["msg"] == "request"
    assert {k: ok[k] for k in ("service", "method", "protocol", "code")} == {
        "service": "depot.core.v1.ProjectService",
        "method": "ListProjects",
        "protocol": wire,
        "code": "ok",
    }
    assert (ok["principal_kind"], ok["principal_id"]) == ("org", token.token_id)
    assert isinstance(ok["duration_ms"], float)
    assert ok["duration_ms"] >= 0
    assert re.fullmatch(r"[0-9a-f]{32}", str(ok["request_id"]))
    assert refused["code"] == "unauthenticated"
    assert (refused["principal_kind"], refused["principal_id"]) == (None, None)
    assert refused["request_id"] != ok["request_id"]


async def test_the_request_id_comes_from_the_proxy_and_goes_back(
    api: InProcessAPI, lines: Lines
) -> None:
    headers = {**bearer(api.org_token), "content-type": "application/json"}
    status, answer, _ = await raw_post(api, _LIST, b"{}", {**headers, "x-request-id": "lb-42.a"})
    assert (status, answer["x-request-id"]) == (200, "lb-42.a")
    # Unusable ones (too long, blanks, quotes, control characters) are replaced.
    for bad in ("x" * 129, "two words", 'a"b', "a\tb", ""):
        status, answer, _ = await raw_post(api, _LIST, b"{}", {**headers, "x-request-id": bad})
        assert status == 200
        assert re.fullmatch(r"[0-9a-f]{32}", answer["x-request-id"])
    logged = [line["request_id"] for line in lines.json()]
    assert logged[0] == "lb-42.a"
    assert all(re.fullmatch(r"[0-9a-f]{32}", str(i)) for i in logged[1:])
    assert len(logged) == 6
    # The plain routes and unknown paths answer with one too, and are logged too.
    response = await api.http.get("http://test/healthz", headers={"x-request-id": "h-1"})
    assert response.headers["x-request-id"] == "h-1"
    response = await api.http.post("http://test/depot.Nope/Nope", content=b"{}")
    assert response.status == 404
    last_two = lines.json()[-2:]
    assert [(x["service"], x["method"], x["code"]) for x in last_two] == [
        ("http", "/healthz", "200"),
        ("unknown", "unknown", "unimplemented"),
    ]


async def test_no_secret_reaches_a_line(api: InProcessAPI, lines: Lines) -> None:
    """Tokens of every kind, a JWT and a key sent in headers and bodies, on good and bad calls,
    in both formats."""
    _, build_token = await new_build(api.app.domain, api.org_token)
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT"}').decode().rstrip("=")
    jwt = f"{header}.eyJzdWIiOiJzZWNyZXQtc3ViamVjdCJ9.c2lnbmF0dXJlLXNlY3JldA"
    private_key = "-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASC-----END"
    secrets = [api.org_token, build_token, jwt, private_key, "dpo_made_up_secret_value"]
    for secret in secrets:
        for path in (_LIST, "/depot.core.v1.ProjectService/CreateProject", "/nowhere"):
            await raw_post(
                api,
                path,
                json.dumps({"name": secret, "token": secret}).encode(),
                {
                    "authorization": f"Bearer {secret}",
                    "content-type": "application/json",
                    "x-request-id": secret[:40],
                    "cookie": f"session={secret}",
                },
            )
    written = [json.dumps(line) for line in lines.json()] + lines.text()
    assert len(lines.records) == 3 * len(secrets)
    for line in written:
        for secret in secrets:
            assert secret not in line
            assert secret[:40] not in line
