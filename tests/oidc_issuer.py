"""A local OIDC issuer on 127.0.0.1, for tests of CI jobs' tokens: OpenID discovery and a
JWKS over real HTTP, keys it signs with (and can rotate), an outage switch, counts of what it
was asked, and stand-ins for GitHub Actions' token endpoint (ACTIONS_ID_TOKEN_REQUEST_URL) and
Buildkite's agent API (BUILDKITE_AGENT_ENDPOINT), which sign with the same keys.

Every issuer URL under it works: `issuer.url + "/anything"` is an issuer of its own with the
same keys (CircleCI has one issuer per organization, `<base>/<organization UUID>`).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

DISCOVERY = "/.well-known/openid-configuration"
JWKS = "/jwks"
TOKEN_ENDPOINT = "/github-token"
# Buildkite's agent API as BUILDKITE_AGENT_ENDPOINT names it; its tokens' issuer.
BUILDKITE_AGENT_API = "/buildkite-agent/v3"
BUILDKITE_ISSUER_PATH = "/buildkite"
# What the stand-in token endpoint takes as ACTIONS_ID_TOKEN_REQUEST_TOKEN.
REQUEST_TOKEN = "stand-in-request-token"


@dataclass
class SigningKey:
    kid: str
    private: Any
    alg: str

    @property
    def public_jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg.startswith(("RS", "PS")) else ECAlgorithm
        jwk = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")


@dataclass
class LocalIssuer:
    url: str  # the base: http://127.0.0.1:PORT
    keys: list[SigningKey]
    down: bool = False
    # Requests by path (discovery and JWKS of each issuer, the token endpoint).
    requests: Counter[str] = field(default_factory=Counter)
    # The audiences the token endpoint was asked for.
    audiences_asked: list[str] = field(default_factory=list)
    # The claims the token endpoint puts in its tokens (besides iss, aud and times), and the
    # tokens it gave out.
    github_claims: dict[str, Any] = field(default_factory=dict)
    buildkite_claims: dict[str, Any] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list)

    def jwks_requests(self, issuer: str | None = None) -> int:
        return self.requests[urlsplit(issuer or self.url).path + JWKS]

    def rotate(self, new: SigningKey) -> None:
        """Publish only the new key from now on."""
        self.keys = [new]

    def token(
        self,
        claims: dict[str, Any] | None = None,
        *,
        issuer: str | None = None,
        key: SigningKey | None = None,
        alg: str | None = None,
        headers: dict[str, Any] | None = None,
        lifetime_s: float = 300,
        issued_at: float | None = None,
    ) -> str:
        """A signed JWT of this issuer (or the issuer given) with sane times and the Depot
        audience; claims override any of it."""
        key = key or self.keys[0]
        now = time.time() if issued_at is None else issued_at
        payload = {
            "iss": issuer or self.url,
            "aud": "https://depot.dev",
            "sub": "repo:acme/app:ref:refs/heads/main",
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + lifetime_s),
            "jti": str(uuid.uuid4()),
            **(claims or {}),
        }
        return jwt.encode(
            payload,
            key.private,
            algorithm=alg or key.alg,
            headers={"kid": key.kid, **(headers or {})},
        )

    def github_token(self, owner: str, repository: str, **claims: Any) -> str:
        return self.token(
            {
                "repository_owner": owner,
                "repository": f"{owner}/{repository}",
                "sub": f"repo:{owner}/{repository}:ref:refs/heads/main",
                **claims,
            }
        )


@contextmanager
def local_issuer() -> Iterator[LocalIssuer]:
    state: LocalIssuer | None = None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            assert state is not None
            parts = urlsplit(self.path)
            state.requests[parts.path] += 1
            if state.down:
                self._answer(503, {"error": "down for the test"})
            elif parts.path.endswith(DISCOVERY):
                issuer = state.url + parts.path.removesuffix(DISCOVERY)
                self._answer(200, {"issuer": issuer, "jwks_uri": issuer + JWKS})
            elif parts.path.endswith(JWKS):
                self._answer(200, {"keys": [key.public_jwk for key in state.keys]})
            elif parts.path == TOKEN_ENDPOINT:
                self._github_token(parts.query)
            else:
                self._answer(404, {"error": "no such path"})

        def do_POST(self) -> None:
            assert state is not None
            path = urlsplit(self.path).path
            state.requests[path] += 1
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not (
                path.startswith(BUILDKITE_AGENT_API + "/jobs/") and path.endswith("/oidc/tokens")
            ):
                self._answer(404, {"error": "no such path"})
                return
            if self.headers.get("Authorization") != f"Token {REQUEST_TOKEN}":
                self._answer(401, {"message": "bad agent token"})
                return
            audience = json.loads(body or b"{}").get("audience", "")
            state.audiences_asked.append(audience)
            token = state.token(
                {**state.buildkite_claims, "aud": audience},
                issuer=state.url + BUILDKITE_ISSUER_PATH,
            )
            state.issued.append(token)
            self._answer(200, {"token": token})

        def _github_token(self, query: str) -> None:
            assert state is not None
            if self.headers.get("Authorization", "").lower() != f"bearer {REQUEST_TOKEN}":
                self._answer(401, {"message": "bad request token"})
                return
            audience = parse_qs(query).get("audience", [""])[0]
            state.audiences_asked.append(audience)
            token = state.token({**state.github_claims, "aud": audience})
            state.issued.append(token)
            self._answer(200, {"value": token})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state = LocalIssuer(url=f"http://127.0.0.1:{server.server_address[1]}", keys=[rsa_key("k1")])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
