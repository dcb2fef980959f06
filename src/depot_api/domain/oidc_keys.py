"""The public keys of OIDC issuers: found by OpenID discovery, kept, and fetched again only
when needed and not too often.

An issuer's keys are fetched (discovery, then its JWKS) the first time a token of it arrives,
again when a token names a key ID not among them (the issuer rotated its keys), and again once
they are older than KEYS_MAX_AGE. Fetches of one issuer are at least `refetch_interval` apart,
so tokens naming made-up key IDs cannot make this server hammer an issuer: within the interval
an unknown key ID is refused from what is kept. Concurrent calls that need a fetch share one.

When a fetch fails, kept keys go on being used; a key that cannot be checked because the
issuer's keys cannot be had is `unavailable` (retry), not a refusal of the token.

Only public keys of asymmetric kinds are kept (RSA, EC, OKP): a JWKS entry of a symmetric
("oct") key, or one meant for encryption, is ignored.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from jwt import PyJWK, PyJWKError, PyJWTError

from depot_api.domain.errors import Unauthenticated, Unavailable
from depot_api.domain.oidc_issuers import fetch_problem

KEYS_MAX_AGE = timedelta(hours=1)
# Issuers whose keys are kept at most (CircleCI has one issuer per organization).
KEPT_ISSUERS = 1000
_ASYMMETRIC_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})


class FetchFailed(Exception):
    """A document could not be had; the message says why, for the caller and the log."""


class JsonSource(Protocol):
    async def get_json(self, url: str) -> Any:
        """The JSON document at url; raises FetchFailed."""


@dataclass
class _IssuerState:
    keys: dict[str, PyJWK] = field(default_factory=dict)
    # Monotonic seconds: of the last successful fetch, and of the last attempt.
    fetched_at: float | None = None
    attempted_at: float | None = None
    # Why the last attempt failed; None when it succeeded.
    error: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class IssuerKeys:
    def __init__(
        self,
        source: JsonSource,
        *,
        refetch_interval: timedelta,
        clock: Callable[[], float],
    ) -> None:
        self._source = source
        self._interval = refetch_interval.total_seconds()
        self._max_age = KEYS_MAX_AGE.total_seconds()
        self._clock = clock
        self._issuers: OrderedDict[str, _IssuerState] = OrderedDict()

    async def key(self, issuer: str, kid: str) -> PyJWK:
        """The issuer's public key of this ID. Raises Unauthenticated when the issuer does not
        publish it, Unavailable when the issuer's keys cannot be fetched."""
        state = self._state(issuer)
        if (found := state.keys.get(kid)) is not None and not self._old(state):
            return found
        async with state.lock:
            found = state.keys.get(kid)
            if found is None or self._old(state):
                now = self._clock()
                if state.attempted_at is None or now - state.attempted_at >= self._interval:
                    await self._fetch(issuer, state, now)
                found = state.keys.get(kid)
        if found is not None:
            return found
        if state.error is not None:
            raise Unavailable(
                f"the keys of OIDC issuer {issuer} cannot be fetched ({state.error}); retry shortly"
            )
        raise Unauthenticated(f"OIDC issuer {issuer} publishes no key with ID {kid!r}")

    def _state(self, issuer: str) -> _IssuerState:
        state = self._issuers.get(issuer)
        if state is None:
            if len(self._issuers) >= KEPT_ISSUERS:
                self._issuers.popitem(last=False)  # the one least recently added
            state = self._issuers[issuer] = _IssuerState()
        return state

    def _old(self, state: _IssuerState) -> bool:
        return state.fetched_at is None or self._clock() - state.fetched_at >= self._max_age

    async def _fetch(self, issuer: str, state: _IssuerState, now: float) -> None:
        state.attempted_at = now
        try:
            keys = await self._read_keys(issuer)
        except FetchFailed as e:
            state.error = str(e)
            return
        state.keys, state.fetched_at, state.error = keys, self._clock(), None

    async def _read_keys(self, issuer: str) -> dict[str, PyJWK]:
        discovery = await self._source.get_json(f"{issuer}/.well-known/openid-configuration")
        if not isinstance(discovery, dict):
            raise FetchFailed("its OpenID configuration is not a JSON object")
        if discovery.get("issuer") != issuer:
            raise FetchFailed("its OpenID configuration names another issuer")
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise FetchFailed("its OpenID configuration has no jwks_uri")
        if (problem := fetch_problem(jwks_uri)) is not None:
            raise FetchFailed(f"its jwks_uri {jwks_uri} {problem}")
        jwks = await self._source.get_json(jwks_uri)
        entries = jwks.get("keys") if isinstance(jwks, dict) else None
        if not isinstance(entries, list):
            raise FetchFailed("its JWKS has no list of keys")
        return _public_keys(entries)


def _public_keys(entries: list[Any]) -> dict[str, PyJWK]:
    keys: dict[str, PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("kty") not in _ASYMMETRIC_KEY_TYPES or entry.get("use", "sig") != "sig":
            continue
        try:
            keys[entry["kid"]] = PyJWK(entry)
        except (PyJWKError, PyJWTError, ValueError, TypeError, KeyError):
            continue  # a key this server cannot use; the others still count
    return keys
