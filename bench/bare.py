"""The reference: a bare ASGI endpoint on the same server software (pyvoy, same settings as
depot-api's workers) that answers every request with one constant Connect-style response.

Every figure of the benchmark is also given as a ratio to this endpoint's rate, measured in
the same run with the same load generator and protocol: what the machine, the server
software and the loopback can do at that moment, with no application work at all.
"""

from __future__ import annotations

from typing import Any

_JSON = b'{"buildId":"0000000000","projectId":"0000000000","status":"BUILD_STATUS_FINISHED"}'
# A Connect binary / gRPC answer: an empty protobuf message (valid for any response type).
_EMPTY = b""


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:  # read the request whole, as depot-api does for unary calls
        message = await receive()
        more = message.get("more_body", False) and message["type"] == "http.request"
    content_type = dict(scope["headers"]).get(b"content-type", b"")
    if content_type.startswith(b"application/grpc"):
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/grpc")],
                "trailers": True,
            }
        )
        await send(
            {"type": "http.response.body", "body": b"\x00\x00\x00\x00\x00", "more_body": False}
        )
        await send(
            {
                "type": "http.response.trailers",
                "headers": [(b"grpc-status", b"0")],
                "more_trailers": False,
            }
        )
        return
    body = _EMPTY if content_type == b"application/proto" else _JSON
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", content_type or b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
