"""The shape of a token secret: a typed prefix, a random body and a checksum.

    dpo_<32 random base62 characters><6 base62 characters of CRC-32>

The prefix names the kind (so secret scanners and people can tell tokens apart), and the
checksum lets a typo or a truncated paste be rejected before any database lookup. The body
carries about 190 bits of randomness. Only SHA-256(secret) is ever stored: the body is random,
so a plain fast hash is enough and a lookup by hash leaks nothing about the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib

from depot_api.models import TokenKind

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LENGTH = 32
_CHECKSUM_LENGTH = 6

PREFIXES: dict[TokenKind, str] = {
    TokenKind.ORG: "dpo_",
    TokenKind.USER: "dpu_",
    TokenKind.PROJECT: "dpp_",
    TokenKind.BUILD: "dpb_",
    TokenKind.MACHINE: "dpm_",
}
_KIND_BY_PREFIX = {prefix: kind for kind, prefix in PREFIXES.items()}
_PREFIX_LENGTH = 4
SECRET_LENGTH = _PREFIX_LENGTH + _BODY_LENGTH + _CHECKSUM_LENGTH


def mint(kind: TokenKind) -> str:
    """A new secret of the given kind."""
    prefix = PREFIXES[kind]
    body = "".join(secrets.choice(_BASE62) for _ in range(_BODY_LENGTH))
    return prefix + body + _checksum(prefix + body)


def kind_of(secret: str) -> TokenKind | None:
    """The kind a well-formed secret declares, or None when it is not one of ours."""
    if len(secret) != SECRET_LENGTH:
        return None
    kind = _KIND_BY_PREFIX.get(secret[:_PREFIX_LENGTH])
    if kind is None:
        return None
    payload, checksum = secret[:-_CHECKSUM_LENGTH], secret[-_CHECKSUM_LENGTH:]
    if any(c not in _BASE62 for c in secret[_PREFIX_LENGTH:]):
        return None
    # The checksum is public information about the body, so its comparison leaks nothing
    # useful; compare_digest all the same, so that no comparison of a secret's parts is timed.
    if not hmac.compare_digest(_checksum(payload), checksum):
        return None
    return kind


def hash_secret(secret: str) -> str:
    """What the store keeps and looks tokens up by."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _checksum(payload: str) -> str:
    value = zlib.crc32(payload.encode("ascii"))
    chars = []
    for _ in range(_CHECKSUM_LENGTH):
        value, digit = divmod(value, 62)
        chars.append(_BASE62[digit])
    return "".join(reversed(chars))
