from __future__ import annotations

import pytest

from depot_api.domain.token_format import PREFIXES, SECRET_LENGTH, hash_secret, kind_of, mint
from depot_api.models import TokenKind


# Every kind with a secret of depot-api's own (a CI job's OIDC token is its provider's JWT).
@pytest.mark.parametrize("kind", list(PREFIXES))
def test_minted_secrets_declare_their_kind(kind: TokenKind) -> None:
    secret = mint(kind)
    assert secret.startswith(PREFIXES[kind])
    assert len(secret) == SECRET_LENGTH
    assert kind_of(secret) is kind


def test_prefixes_are_distinct() -> None:
    assert len(set(PREFIXES.values())) == len(PREFIXES)


def test_secrets_differ() -> None:
    assert len({mint(TokenKind.ORG) for _ in range(1000)}) == 1000


@pytest.mark.parametrize("position", [4, 10, 20, 35, 36, 41])
def test_a_single_changed_character_is_caught(position: int) -> None:
    secret = mint(TokenKind.PROJECT)
    for replacement in "0aZ":
        if secret[position] == replacement:
            continue
        typo = secret[:position] + replacement + secret[position + 1 :]
        assert kind_of(typo) is None


@pytest.mark.parametrize(
    "text",
    ["", "dpo_", "nope", "x" * SECRET_LENGTH, "dpx_" + "a" * (SECRET_LENGTH - 4)],
)
def test_foreign_text_is_not_a_token(text: str) -> None:
    assert kind_of(text) is None


def test_truncated_and_extended_secrets_are_rejected() -> None:
    secret = mint(TokenKind.BUILD)
    assert kind_of(secret[:-1]) is None
    assert kind_of(secret + "a") is None


def test_non_ascii_is_rejected() -> None:
    secret = mint(TokenKind.USER)
    assert kind_of(secret[:10] + "é" + secret[11:]) is None


def test_hash_is_sha256_hex_and_not_the_secret() -> None:
    secret = mint(TokenKind.ORG)
    digest = hash_secret(secret)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert secret not in digest
