"""An OIDC issuer's keys (domain.oidc_keys) fetched over real HTTP from a local issuer, with
a clock the test moves by hand: fetched once and kept, fetched again once for a rotated key
ID, never more often than the refetch interval, an outage answered `unavailable` and got
over, and keys that cannot sign tokens ignored."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest

from depot_api.domain.errors import Unauthenticated, Unavailable
from depot_api.domain.oidc_keys import KEYS_MAX_AGE, IssuerKeys
from depot_api.http_json import HttpJsonSource
from tests.oidc_issuer import DISCOVERY, LocalIssuer, ec_key, local_issuer, rsa_key

INTERVAL = 30.0


@dataclass
class Monotonic:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with local_issuer() as running:
        yield running


@pytest.fixture
def clock() -> Monotonic:
    return Monotonic()


@pytest.fixture
def keys(clock: Monotonic) -> IssuerKeys:
    return IssuerKeys(
        HttpJsonSource(timeout_s=5), refetch_interval=timedelta(seconds=INTERVAL), clock=clock
    )


async def test_keys_are_fetched_once_and_kept(issuer: LocalIssuer, keys: IssuerKeys) -> None:
    first = await keys.key(issuer.url, "k1")
    again = await keys.key(issuer.url, "k1")
    assert first is again
    assert first.key_id == "k1"
    assert issuer.requests[DISCOVERY] == 1
    assert issuer.jwks_requests() == 1


async def test_a_rotated_key_id_is_fetched_once_however_many_ask(
    issuer: LocalIssuer, keys: IssuerKeys, clock: Monotonic
) -> None:
    await keys.key(issuer.url, "k1")
    issuer.rotate(ec_key("k2"))
    clock.now += INTERVAL  # the rotation comes later than the interval
    found = await asyncio.gather(*(keys.key(issuer.url, "k2") for _ in range(10)))
    assert {key.key_id for key in found} == {"k2"}
    assert issuer.jwks_requests() == 2
    await keys.key(issuer.url, "k2")
    assert issuer.jwks_requests() == 2


async def test_unknown_key_ids_do_not_hammer_the_issuer(
    issuer: LocalIssuer, keys: IssuerKeys, clock: Monotonic
) -> None:
    await keys.key(issuer.url, "k1")
    for made_up in ("x1", "x2", "x3"):
        with pytest.raises(Unauthenticated, match=f"publishes no key with ID '{made_up}'"):
            await keys.key(issuer.url, made_up)
    assert issuer.jwks_requests() == 1  # all within the interval: refused from what is kept
    clock.now += INTERVAL
    with pytest.raises(Unauthenticated):
        await keys.key(issuer.url, "x4")
    assert issuer.jwks_requests() == 2


async def test_an_outage_is_unavailable_and_then_over(
    issuer: LocalIssuer, keys: IssuerKeys, clock: Monotonic
) -> None:
    issuer.down = True
    with pytest.raises(Unavailable, match=r"cannot be fetched \(.* answered HTTP 503\)"):
        await keys.key(issuer.url, "k1")
    with pytest.raises(Unavailable):
        await keys.key(issuer.url, "k1")
    assert issuer.requests[DISCOVERY] == 1  # the second was not tried: within the interval
    issuer.down = False
    clock.now += INTERVAL
    assert (await keys.key(issuer.url, "k1")).key_id == "k1"


async def test_an_issuer_that_is_not_listening_is_unavailable(
    issuer: LocalIssuer, keys: IssuerKeys
) -> None:
    with pytest.raises(Unavailable, match="could not be reached"):
        await keys.key("http://127.0.0.1:1", "k1")


async def test_kept_keys_outlive_an_outage(
    issuer: LocalIssuer, keys: IssuerKeys, clock: Monotonic
) -> None:
    kept = await keys.key(issuer.url, "k1")
    issuer.down = True
    clock.now += KEYS_MAX_AGE.total_seconds()  # old enough to be fetched again, which fails
    assert await keys.key(issuer.url, "k1") is kept
    assert issuer.jwks_requests() == 1


async def test_symmetric_and_encryption_keys_are_ignored(
    issuer: LocalIssuer, keys: IssuerKeys
) -> None:
    signing = rsa_key("sig")
    issuer.keys = [signing]
    original = signing.public_jwk
    # Published as they are by the issuer: an HMAC key and an encryption key with the same
    # shape as a signing key.
    extra = [
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {**original, "kid": "enc", "use": "enc"},
        {"kty": "RSA", "kid": "broken", "n": "!", "e": "AQAB"},
    ]
    source = _Extra(extra)
    with_extra = IssuerKeys(source, refetch_interval=timedelta(seconds=INTERVAL), clock=lambda: 0)
    assert (await with_extra.key(issuer.url, "sig")).key_id == "sig"
    for ignored in ("hmac", "enc", "broken"):
        with pytest.raises(Unauthenticated, match="publishes no key"):
            await with_extra.key(issuer.url, ignored)


class _Extra:
    """The local issuer's documents over HTTP, with extra JWKS entries added."""

    def __init__(self, extra: list[dict[str, object]]) -> None:
        self._http = HttpJsonSource(timeout_s=5)
        self._extra = extra

    async def get_json(self, url: str) -> object:
        document = await self._http.get_json(url)
        if isinstance(document, dict) and "keys" in document:
            document["keys"] = [*document["keys"], *self._extra]
        return document


@pytest.mark.parametrize(
    ("discovery", "problem"),
    [
        ({"issuer": "http://elsewhere", "jwks_uri": "http://127.0.0.1:9/jwks"}, "another issuer"),
        ({"issuer": "{issuer}"}, "no jwks_uri"),
        (
            {"issuer": "{issuer}", "jwks_uri": "http://example.com/jwks"},
            "must use https://",
        ),
        ([1, 2], "not a JSON object"),
    ],
)
async def test_a_bad_discovery_document_is_unavailable_naming_it(
    issuer: LocalIssuer, discovery: object, problem: str
) -> None:
    class Discovery:
        async def get_json(self, url: str) -> object:
            text = json.dumps(discovery).replace("{issuer}", issuer.url)
            return json.loads(text)

    keys = IssuerKeys(Discovery(), refetch_interval=timedelta(seconds=1), clock=lambda: 0)
    with pytest.raises(Unavailable, match=problem):
        await keys.key(issuer.url, "k1")
