"""A Bearer that is a JWT: a CI job's OIDC token, checked with PyJWT.

In order, each failure `unauthenticated` with what is wrong (never the token itself):
1. it is a JWT at all, signed with an asymmetric algorithm (never `none` or HMAC: a server
   that took HS256 could be fooled with the issuer's public key as the secret);
2. its issuer (`iss`) is one this server trusts (oidc_issuers);
3. its signature verifies with the issuer's key of its key ID (oidc_keys; `unavailable` when
   the issuer's keys cannot be had);
4. `exp`, `nbf` and `iat` hold, with a small leeway for clocks apart;
5. its audience is `https://depot.dev` (what the depot CLI asks its CI for), or one configured
   (`--oidc-audience`); a CircleCI token may also carry its organization's ID, which is what
   CircleCI's own token (CIRCLE_OIDC_TOKEN_V2, the one the CLI sends) is issued for;
6. it carries the claims its provider always sets (ci_identity).

Which projects it may build in is decided later, against the project's trust policies.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import jwt

from depot_api.domain.ci_identity import CiIdentity, identity_from_claims
from depot_api.domain.errors import Unauthenticated
from depot_api.domain.oidc_issuers import Issuers
from depot_api.domain.oidc_keys import IssuerKeys
from depot_api.models import CiProvider

DEPOT_AUDIENCE = "https://depot.dev"
ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
# Far above any CI provider's token (GitHub's are about 1.5 KB): a bound on parsing work.
MAX_TOKEN_LENGTH = 16 * 1024


def looks_like_jwt(secret: str) -> bool:
    """A JWT's compact form: three base64url parts, the first a JSON object ("eyJ" is `{"`).
    depot-api's own tokens never contain a dot."""
    return secret.startswith("eyJ") and secret.count(".") == 2


class CiTokens:
    def __init__(
        self,
        issuers: Issuers,
        keys: IssuerKeys,
        *,
        audiences: Sequence[str],
        leeway: timedelta,
    ) -> None:
        self._issuers = issuers
        self._keys = keys
        self._audiences = [DEPOT_AUDIENCE, *audiences]
        self._leeway = leeway

    async def verify(self, token: str) -> CiIdentity:
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated(f"the OIDC token is longer than {MAX_TOKEN_LENGTH} characters")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthenticated("malformed token: not a depot-api token nor a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ASYMMETRIC_ALGORITHMS:
            raise Unauthenticated(
                f"the OIDC token's algorithm {algorithm!r} is not accepted; "
                f"only asymmetric signatures are ({', '.join(ASYMMETRIC_ALGORITHMS)})"
            )
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise Unauthenticated("the OIDC token names no issuer (iss)")
        match = self._issuers.recognize(issuer)
        if match is None:
            raise Unauthenticated(
                f"the OIDC token's issuer {issuer!r} is not one this server trusts "
                "(GitHub Actions, CircleCI, Buildkite, or as set with --oidc-issuer)"
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("the OIDC token's header names no key ID (kid)")
        key = await self._keys.key(issuer, kid)
        audiences = list(self._audiences)
        if match.provider is CiProvider.CIRCLECI and match.circleci_org is not None:
            audiences.append(match.circleci_org)
        claims = self._decode(token, key, algorithm, issuer, audiences, unverified)
        return identity_from_claims(match.provider, issuer, match.circleci_org, claims)

    def _decode(
        self,
        token: str,
        key: jwt.PyJWK,
        algorithm: str,
        issuer: str,
        audiences: list[str],
        unverified: dict[str, Any],
    ) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=audiences,
                issuer=issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the OIDC token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("the OIDC token is not valid yet (nbf or iat ahead)") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                f"the OIDC token's audience {unverified.get('aud')!r} is not accepted; "
                f"expected {' or '.join(audiences)}"
            ) from None
        except jwt.MissingRequiredClaimError as e:
            raise Unauthenticated(f"the OIDC token has no {e.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated(
                f"the OIDC token's signature does not verify with {issuer}'s key {key.key_id!r}"
            ) from None
        except jwt.PyJWTError as e:
            # PyJWT's messages name the problem, never the token.
            raise Unauthenticated(f"the OIDC token is not valid: {e}") from None
