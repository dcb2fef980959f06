"""Which provider an `iss` claim names, and which issuer URLs keys may be fetched from."""

from __future__ import annotations

import pytest

from depot_api.domain.oidc_issuers import IssuerMatch, Issuers, fetch_problem
from depot_api.models import CiProvider

ORG = "2f1a5c8e-8b54-4c5a-9b53-0c1f1b2d3e4f"


@pytest.mark.parametrize(
    ("issuer", "match"),
    [
        ("https://token.actions.githubusercontent.com", IssuerMatch(CiProvider.GITHUB)),
        ("https://agent.buildkite.com", IssuerMatch(CiProvider.BUILDKITE)),
        (f"https://oidc.circleci.com/org/{ORG}", IssuerMatch(CiProvider.CIRCLECI, ORG)),
        ("https://token.actions.githubusercontent.com/", None),
        ("https://oidc.circleci.com/org/", None),
        (f"https://oidc.circleci.com/org/{ORG}/more", None),
        ("https://oidc.circleci.com/org/../../evil", None),
        ("https://oidc.circleci.com/organization", None),
        ("https://evil.example.com", None),
    ],
)
def test_the_default_issuers(issuer: str, match: IssuerMatch | None) -> None:
    assert Issuers({}).recognize(issuer) == match


def test_an_override_replaces_only_its_provider() -> None:
    issuers = Issuers({CiProvider.GITHUB: "http://127.0.0.1:9/gh/"})
    assert issuers.recognize("http://127.0.0.1:9/gh") == IssuerMatch(CiProvider.GITHUB)
    assert issuers.recognize("https://token.actions.githubusercontent.com") is None
    assert issuers.recognize("https://agent.buildkite.com") == IssuerMatch(CiProvider.BUILDKITE)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://token.actions.githubusercontent.com", None),
        ("http://127.0.0.1:8080/x", None),
        ("http://127.9.9.9", None),
        ("http://[::1]:80", None),
        ("http://localhost:1", None),
        ("http://example.com", "must use https:// (plain http:// only for a loopback address)"),
        ("http://10.0.0.1", "must use https:// (plain http:// only for a loopback address)"),
        ("ftp://example.com", "must be an https:// URL"),
        ("example.com", "must be an https:// URL"),
        ("https://a/?q=1", "must have no query or fragment"),
        ("https://a/#f", "must have no query or fragment"),
        ("https://a:notaport", "is not a valid URL"),
    ],
)
def test_where_keys_may_come_from(url: str, problem: str | None) -> None:
    assert fetch_problem(url) == problem
