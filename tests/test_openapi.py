"""The OpenAPI document served at /openapi.yaml stays true, cheaply (in process).

The deep check is the contract fuzzing run (campaigns/contract_fuzz.py, `make fuzz-contract`):
Schemathesis against a real server. These tests keep the document honest between runs: it is
what the server serves, it still contains the whole seed specification, every path in it
is an RPC the application answers, and every unary RPC served is in it (but for the services
left out on purpose, named below with why).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from depot_api.config import Settings
from depot_api.services import served

from .conftest import InProcessAPI, raw_post

PACKAGED = resources.files("depot_api").joinpath("openapi.yaml").read_bytes()
DOCUMENT: dict[str, Any] = yaml.safe_load(PACKAGED)
# The seed specification's document, copied into the tests (see the file's header).
SEED: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parent / "fixtures" / "seed-openapi.yaml").read_text()
)
# Prose the document may extend (the seed's text first, then ours); everything else is exact.
EXTENSIBLE_TEXT = {"description", "summary"}
# Served services whose RPCs the document leaves out (as its description says), and why.
UNDOCUMENTED_SERVICES = {
    # The depot CLI's own services: its private protocol, not an API to call by hand.
    "depot.cli.v1.BuildService",
    "depot.cli.v1.PushService",
    "depot.cli.v1beta1.LoginService",
    "depot.cli.v1beta1.ProjectsService",
    # The BuildKit agents' service: machine tokens only.
    "depotapi.machine.v1.MachineService",
}


def missing_from(seed: Any, document: Any, where: str = "") -> list[str]:
    """Where the document does not contain the seed: every key of every mapping, every list
    and value as written. The document may add keys, and add prose after the seed's."""
    if isinstance(seed, dict):
        if not isinstance(document, dict):
            return [f"{where}: not a mapping"]
        problems = []
        for key, value in seed.items():
            if key not in document:
                problems.append(f"{where}/{key}: missing")
            elif key in EXTENSIBLE_TEXT and isinstance(value, str):
                if not str(document[key]).startswith(value.rstrip()):
                    problems.append(f"{where}/{key}: the seed's text was changed")
            else:
                problems += missing_from(value, document[key], f"{where}/{key}")
        return problems
    return [] if seed == document else [f"{where}: {document!r} instead of {seed!r}"]


def test_the_seed_fixture_is_the_seed() -> None:
    assert SEED["info"]["title"] == "Depot API"
    assert len(SEED["paths"]) == 14


def test_every_seed_path_operation_and_schema_is_kept() -> None:
    problems = missing_from(SEED["paths"], DOCUMENT["paths"], "paths")
    problems += missing_from(SEED["components"], DOCUMENT["components"], "components")
    problems += missing_from(SEED["security"], DOCUMENT["security"], "security")
    assert problems == []


def test_the_checker_catches_changes() -> None:
    changed = json.loads(json.dumps(SEED))
    build = changed["components"]["schemas"]["Build"]["properties"]
    build["status"]["enum"].remove("BUILD_STATUS_CANCELED")
    del build["totalSteps"]
    changed["paths"]["/depot.build.v1.BuildService/GetBuild"]["post"]["operationId"] = "other"
    problems = missing_from(SEED, changed)
    assert len(problems) == 3, problems


def test_every_reference_resolves() -> None:
    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [ref for value in node.values() for ref in refs(value)]
        if isinstance(node, list):
            return [ref for value in node for ref in refs(value)]
        return []

    for ref in refs(DOCUMENT):
        node: Any = DOCUMENT
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(node, dict) and part in node, f"unresolved {ref}"
            node = node[part]


def test_operations_are_unique_posts_with_documented_errors() -> None:
    ids = []
    for path, item in DOCUMENT["paths"].items():
        assert list(item) == ["post"], path
        operation = item["post"]
        ids.append(operation["operationId"])
        # Every RPC answers these (no token; malformed JSON; no JSON body; too large).
        assert {"200", "400", "401", "415", "429"} <= set(operation["responses"]), path
    assert len(ids) == len(set(ids))


def test_the_server_url_is_the_default_address() -> None:
    url = urlsplit(DOCUMENT["servers"][0]["url"])
    defaults = Settings()
    assert (url.hostname, url.port) == (defaults.host, defaults.port)


async def test_the_served_document_is_the_packaged_file(api: InProcessAPI) -> None:
    response = await api.http.get("http://test/openapi.yaml")
    assert response.status == 200
    assert response.headers["content-type"] == "application/yaml"
    assert response.content == PACKAGED
    assert yaml.safe_load(response.content)["openapi"] == "3.0.1"


async def test_every_documented_path_is_served(api: InProcessAPI) -> None:
    """Not the plain 404 of an unknown path: the RPC's own refusal of a call without a token."""
    answers = {}
    for path in DOCUMENT["paths"]:
        status, headers, body = await raw_post(
            api, path, b"{}", {"content-type": "application/json"}
        )
        content_type = headers.get("content-type")
        code = json.loads(body).get("code") if content_type == "application/json" else body[:40]
        answers[path] = (status, content_type, code)
    refused = (401, "application/json", "unauthenticated")
    assert {path: answer for path, answer in answers.items() if answer != refused} == {}


async def test_other_methods_are_405_on_every_documented_path(api: InProcessAPI) -> None:
    """As connectrpc answers them. The seed's GetEndpoint view answered 501 (a server error)
    until the contract fuzzing found it."""
    answers = {}
    for path in DOCUMENT["paths"]:
        response = await api.http.put(
            f"http://test{path}", headers={"content-type": "application/json"}, content=b"{}"
        )
        answers[path] = (response.status, response.headers.get("allow"))
    assert {path: answer for path, answer in answers.items() if answer != (405, "POST")} == {}


async def test_a_form_post_gets_the_documented_415_on_every_documented_path(
    api: InProcessAPI,
) -> None:
    """`curl -d` sends a form: the answer is the documented Connect error (it had no body)."""
    documented = DOCUMENT["components"]["responses"]["UnsupportedMediaType"]
    codes = documented["content"]["application/json"]["schema"]["allOf"][1]["properties"]
    accept_post = documented["headers"]["Accept-Post"]["schema"]["enum"]
    answers = {}
    for path in DOCUMENT["paths"]:
        status, headers, body = await raw_post(
            api, path, b"{}", {"content-type": "application/x-www-form-urlencoded"}
        )
        content_type = headers.get("content-type")
        error = json.loads(body) if content_type == "application/json" else {}
        answers[path] = (
            status,
            content_type,
            error.get("code") in codes["code"]["enum"],
            "application/json" in error.get("message", ""),
            headers.get("accept-post") in accept_post,
        )
    expected = (415, "application/json", True, True, True)
    assert {path: answer for path, answer in answers.items() if answer != expected} == {}


def served_unary_rpcs(api: InProcessAPI) -> dict[str, set[str]]:
    """Each served service's unary RPCs as document paths (streaming calls have no plain JSON
    view, so no document can list them)."""
    rpcs: dict[str, set[str]] = {}
    for service in served(api.app.domain, api.settings):
        [described] = service.descriptor.services
        rpcs[described.type_name] = {
            f"/{described.type_name}/{method.name}"
            for method in described.methods
            if method.method_kind == "unary"
        }
    return rpcs


def undocumented(rpcs: dict[str, set[str]], documented: set[str]) -> set[str]:
    """The served RPCs the document should list and does not."""
    return {
        path
        for name, paths in rpcs.items()
        if name not in UNDOCUMENTED_SERVICES
        for path in paths - documented
    }


async def test_every_served_rpc_is_documented(api: InProcessAPI) -> None:
    """A new RPC (or service) must be added to the document, or its service named in
    UNDOCUMENTED_SERVICES with the reason. The trust policy RPCs were once served for a
    while without being documented."""
    rpcs = served_unary_rpcs(api)
    documented = set(DOCUMENT["paths"])
    assert undocumented(rpcs, documented) == set()
    # Nothing of a left-out service is documented, and every one left out is still served.
    assert set(rpcs) >= UNDOCUMENTED_SERVICES
    leaked = {path for name in UNDOCUMENTED_SERVICES for path in rpcs[name] & documented}
    assert leaked == set()


async def test_the_completeness_check_catches_a_missing_rpc(api: InProcessAPI) -> None:
    removed = "/depot.core.v1.ProjectService/AddTrustPolicy"
    documented = set(DOCUMENT["paths"])
    assert removed in documented
    assert undocumented(served_unary_rpcs(api), documented - {removed}) == {removed}
