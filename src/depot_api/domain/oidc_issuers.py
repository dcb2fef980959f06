"""The OIDC issuers this server trusts, one per CI provider, and which provider an `iss`
claim names.

GitHub Actions and Buildkite each have one issuer. CircleCI has one per organization:
`<base>/<organization UUID>` (https://oidc.circleci.com/org/<UUID>), so its configured URL is
the base and the organization is read from the issuer itself. `--oidc-issuer PROVIDER=URL`
replaces a provider's URL (a self-hosted CI, or a test's local issuer).

Keys are fetched from an issuer over HTTPS only; plain HTTP is allowed for a loopback host
(127.0.0.0/8, ::1, localhost), where nothing crosses a network.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from depot_api.models import CiProvider

DEFAULT_ISSUERS: Mapping[CiProvider, str] = {
    CiProvider.GITHUB: "https://token.actions.githubusercontent.com",
    CiProvider.CIRCLECI: "https://oidc.circleci.com/org",
    CiProvider.BUILDKITE: "https://agent.buildkite.com",
}

# A CircleCI organization ID as its issuer path carries it (a UUID; kept loose but one path
# segment of a sane length, so that a forged issuer cannot point anywhere else).
_CIRCLECI_ORG = re.compile(r"[A-Za-z0-9-]{1,64}")


@dataclass(frozen=True, slots=True)
class IssuerMatch:
    provider: CiProvider
    # CircleCI's organization, from the issuer's last path segment.
    circleci_org: str | None = None


class Issuers:
    def __init__(self, overrides: Mapping[CiProvider, str]) -> None:
        self._urls = {
            provider: overrides.get(provider, url).rstrip("/")
            for provider, url in DEFAULT_ISSUERS.items()
        }

    def url(self, provider: CiProvider) -> str:
        return self._urls[provider]

    def recognize(self, issuer: str) -> IssuerMatch | None:
        """The provider whose issuer this is; None for an issuer this server does not trust."""
        for provider in (CiProvider.GITHUB, CiProvider.BUILDKITE):
            if issuer == self._urls[provider]:
                return IssuerMatch(provider)
        base = self._urls[CiProvider.CIRCLECI] + "/"
        if issuer.startswith(base) and _CIRCLECI_ORG.fullmatch(issuer[len(base) :]):
            return IssuerMatch(CiProvider.CIRCLECI, issuer[len(base) :])
        return None


def fetch_problem(url: str) -> str | None:
    """Why keys may not be fetched from url (None when they may): it must be an absolute
    https URL, or http to a loopback host, with no query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("https", "http") or not host:
        return "must be an https:// URL"
    if parts.query or parts.fragment:
        return "must have no query or fragment"
    if parts.scheme == "http" and not _is_loopback(host):
        return "must use https:// (plain http:// only for a loopback address)"
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
