"""The table of services (services.py) is the one source of what is served: every entry is
routed, guarded as it says, and known to the refusals' messages."""

from __future__ import annotations

import json

import pytest

from depot_api.api.guard import Guard
from depot_api.services import Service, served

from .conftest import InProcessAPI, bearer, raw_post

JSON = {"content-type": "application/json"}


@pytest.fixture
def database_url(sqlite_database_url: str) -> str:
    return sqlite_database_url  # nothing here is about storage


def services(api: InProcessAPI) -> list[Service]:
    return list(served(api.app.domain, api.settings))


def unary_methods(service: Service) -> list[str]:
    [described] = service.descriptor.services
    return [
        f"/{described.type_name}/{method.name}"
        for method in described.methods
        if method.method_kind == "unary"
    ]


async def test_every_entry_is_routed_and_guarded_as_it_says(api: InProcessAPI) -> None:
    _, machine_token = await api.app.domain.tokens.create_machine_token("agents")
    guards = set()
    for service in services(api):
        assert unary_methods(service), service
        guards.add(service.guard)
        for path in unary_methods(service):
            status, _, body = await raw_post(api, path, b"{}", JSON)
            answer = json.loads(body)
            if service.guard is Guard.NONE:  # reaches its handler
                assert answer["code"] != "unauthenticated", (path, answer)
            else:
                assert (status, answer["code"]) == (401, "unauthenticated"), (path, answer)
            wrong_token = {
                Guard.TOKEN: machine_token,
                Guard.MACHINE: api.org_token,
                Guard.NONE: None,
            }[service.guard]
            if wrong_token is not None:
                status, _, body = await raw_post(api, path, b"{}", {**JSON, **bearer(wrong_token)})
                assert (status, json.loads(body)["code"]) == (403, "permission_denied"), path
    assert guards == set(Guard)  # each kind of guard was checked


async def test_every_entry_is_in_the_refusals_catalog(api: InProcessAPI) -> None:
    for service in services(api):
        [described] = service.descriptor.services
        path = f"/{described.type_name}/NoSuchMethod"
        status, _, body = await raw_post(api, path, b"{}", JSON)
        message = json.loads(body)["message"]
        assert status == 404
        methods = ", ".join(method.name for method in described.methods)
        assert message.endswith(f"has no method by that name; its methods: {methods}"), message
