"""GetEndpoint as the seed document models it: one plain JSON POST, one JSON answer.

GetEndpoint is server-streaming, which Connect serves only with enveloped content types
(application/connect+json, gRPC, …). The seed's HTTP/JSON view posts
`Content-Type: application/json` and expects a single object:

    {"endpoint": …, "serverName": …, "cert": {"cert": PEM, "key": PEM}, "caCert": {"cert": PEM}}

So that request is answered here: it is admitted as every call is (api/guard.py; it waits
like a stream, so it counts as one), waits for the machine exactly as the stream does (the
same domain call, the same deadline) and then writes that object; errors are Connect's unary
JSON errors with their HTTP status.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from depot_api.api.asgi import Receive, Scope, Send, media_type
from depot_api.api.drain import Drain
from depot_api.api.errors import to_connect_error
from depot_api.api.guard import Admission
from depot_api.api.json_codec import LenientKeysJSONCodec
from depot_api.api.platforms import platform_from_wire
from depot_api.domain.endpoints import Active, Endpoints
from depot_api.domain.principal import Principal
from depot_api.gen.depot.buildkit.v1 import buildkit_pb as pb

PATH = "/depot.buildkit.v1.BuildKitService/GetEndpoint"
_PROCEDURE = "depot.buildkit.v1.BuildKitService/GetEndpoint"

# The Connect protocol's HTTP status for each code (connectrpc.com/docs/protocol).
_HTTP_STATUS = {
    Code.CANCELED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


def is_plain_json(scope: Scope) -> bool:
    return media_type(scope) == b"application/json"


class SeedGetEndpoint:
    def __init__(
        self, admission: Admission, drain: Drain, endpoints: Endpoints, max_message_bytes: int
    ) -> None:
        self._admission = admission
        self._drain = drain
        self._endpoints = endpoints
        self._max_bytes = max_message_bytes
        self._codec = LenientKeysJSONCodec()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response_headers: dict[str, str] = {}
        try:
            answer = await self._answer(scope, receive, response_headers)
        except Exception as e:
            # The caller wrote JSON: fields are named by their JSON names (buildId).
            error = to_connect_error(e, _PROCEDURE, json_request=pb.GetEndpointRequest.desc())
            status = _HTTP_STATUS.get(error.code, 500)
            await _respond(send, status, _error_body(error), response_headers)
            return
        await _respond(send, 200, answer, response_headers)

    async def _answer(
        self, scope: Scope, receive: Receive, response_headers: dict[str, str]
    ) -> dict[str, Any]:
        # Only a POST reaches this view (app.py); other methods get connectrpc's 405.
        admitted = await self._admission.admit(
            _authorization(scope),
            procedure=_PROCEDURE,
            streaming=True,
            response_headers=response_headers,
        )
        try:
            return await self._drain.race(self._wait_for_endpoint(admitted.principal, receive))
        finally:
            self._admission.release(admitted)

    async def _wait_for_endpoint(self, principal: Principal, receive: Receive) -> dict[str, Any]:
        body = await self._read_body(receive)
        try:
            request = self._codec.decode(body, pb.GetEndpointRequest)
        except Exception as e:  # the parser's message names the problem
            raise ConnectError(Code.INVALID_ARGUMENT, f"unmarshal message: {e}") from None
        platform = platform_from_wire(request.platform)
        async for event in self._endpoints.acquire(principal, request.build_id, platform):
            if isinstance(event, Active):
                return {
                    "endpoint": event.endpoint,
                    "serverName": event.server_name,
                    "cert": {"cert": event.client_cert, "key": event.client_key},
                    "caCert": {"cert": event.ca_cert},
                }
        raise AssertionError("acquire ended without an active endpoint")

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectError(Code.CANCELED, "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_bytes:
                raise ConnectError(
                    Code.RESOURCE_EXHAUSTED,
                    f"message is larger than configured max {self._max_bytes}",
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _authorization(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name.lower() == b"authorization":
            return bytes(value).decode("latin-1")
    return None


def _error_body(error: ConnectError) -> dict[str, Any]:
    """The Connect protocol's error JSON, details (such as a retry hint) included."""
    body: dict[str, Any] = {"code": error.code.value, "message": error.message}
    if error.details:
        body["details"] = [
            # Connect's JSON carries each detail as unpadded base64 of its message.
            {"type": d.type_name, "value": base64.b64encode(d.message_bytes).decode().rstrip("=")}
            for d in error.details
        ]
    return body


async def _respond(send: Send, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
            ],
        }
    )
    # UTF-8, not \u escapes: a message quoting what the caller sent stays readable.
    body_bytes = json.dumps(body, ensure_ascii=False).encode()
    await send({"type": "http.response.body", "body": body_bytes})
