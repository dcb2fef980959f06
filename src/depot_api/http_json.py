"""Fetching small JSON documents over HTTP(S) for the domain: the OIDC issuers' discovery
documents and key sets (domain.oidc_keys.JsonSource).

Bounded in every way an issuer could misbehave: a time limit per fetch, a size limit, no
redirects (a redirect could lead from https to plain http), and any failure becomes
FetchFailed with one line saying what happened.

Its HTTP client is closed (close()) when the server stops.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pyqwest import Client, HTTPTransport

from depot_api.domain.oidc_keys import FetchFailed

FETCH_TIMEOUT_S = 10.0
MAX_DOCUMENT_BYTES = 1024 * 1024


class HttpJsonSource:
    def __init__(self, *, timeout_s: float = FETCH_TIMEOUT_S) -> None:
        self._timeout_s = timeout_s
        self._transport: HTTPTransport | None = None
        self._client: Client | None = None

    def _http(self) -> Client:
        # Made on first use, on the loop that uses it.
        if self._client is None:
            self._transport = HTTPTransport(
                timeout=self._timeout_s,
                connect_timeout=self._timeout_s,
                follow_redirects=False,
                tls_include_system_certs=True,
                # The system's resolver, as everything else on the host uses (/etc/hosts,
                # resolv.conf). The client's own resolver also left the process aborting at
                # exit now and then after a failed lookup.
                use_system_dns=True,
            )
            self._client = Client(self._transport)
        return self._client

    async def close(self) -> None:
        """Close the client, if one was made (it is made again on the next fetch)."""
        transport, self._transport, self._client = self._transport, None, None
        if transport is not None:
            await transport.aclose()

    async def get_json(self, url: str) -> Any:
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._http().get(url, headers={"accept": "application/json"})
        except TimeoutError:
            raise FetchFailed(f"{url} did not answer within {self._timeout_s:g} s") from None
        except Exception as e:  # the client's errors (refused, reset, TLS) name themselves
            raise FetchFailed(f"{url} could not be reached: {type(e).__name__}") from None
        if response.status != 200:
            raise FetchFailed(f"{url} answered HTTP {response.status}")
        content = response.content
        if len(content) > MAX_DOCUMENT_BYTES:
            raise FetchFailed(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
        try:
            return json.loads(content)
        except ValueError:
            raise FetchFailed(f"{url} answered something that is not JSON") from None
