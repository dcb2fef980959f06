"""Answers for requests that reach no handler: an unknown path or method, a wrong HTTP
method, a content type that no protocol here reads.

connectrpc refuses the last three with a bare status (404, 405, 415) and no body, which leaves
a caller with curl guessing. Each refusal here says what was not found or what is expected:

- on an RPC's path, a Connect error in JSON, keeping the status and headers connectrpc chose
  (Allow, Accept-Post). The Connect protocol requires 415 for a codec the server lacks and
  says nothing of its body; the code is `unimplemented`, as the protocol asks for a
  compression the server lacks, with the message listing what is served;
- on a path shaped like an RPC (/package.Service/Method) of a service not served here, the
  same: 404, `unimplemented`, naming the path;
- anywhere else, one line of plain text.

The status is kept on every protocol: gRPC and gRPC-Web clients read a refusal from it, as
their protocols specify, and never from the body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from protobuf import DescFile

from depot_api.api.asgi import ASGIMessage, Scope, Send, media_type

# The content types served, for the messages.
_UNARY = "application/json (Connect JSON) or application/proto"
_STREAM = "application/connect+json or application/connect+proto (Connect streaming)"
_GRPC_TOO = "gRPC and gRPC-Web are served too (application/grpc…, application/grpc-web…)"
_RPC_PATH = re.compile(r"/((?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*)/([A-Za-z_]\w*)")
# What connectrpc answers without a body.
_REFUSALS = frozenset((404, 405, 415))


class Catalog:
    """The RPCs served, by path, for messages that say what a path takes."""

    def __init__(self, files: Iterable[DescFile], *, plain_json: Iterable[str] = ()) -> None:
        # method path -> its kind ("unary", "server_streaming", …)
        self._kinds: dict[str, str] = {}
        # service name -> its method names
        self._methods: dict[str, list[str]] = {}
        for file in files:
            for service in file.services:
                self._methods[service.type_name] = [m.name for m in service.methods]
                for method in service.methods:
                    self._kinds[f"/{service.type_name}/{method.name}"] = method.method_kind
        # RPC paths that also answer a plain application/json POST (the seed's GetEndpoint).
        self._plain_json = frozenset(plain_json)

    def add_service(self, name: str, methods: Iterable[str], kind: str) -> None:
        """A service whose descriptor is not at hand (gRPC reflection)."""
        self._methods[name] = list(methods)
        for method in methods:
            self._kinds[f"/{name}/{method}"] = kind

    def unsupported_media_type(self, path: str, content_type: str) -> str:
        kind = self._kinds.get(path)
        given = f"not {content_type}" if content_type else "and the request has none"
        procedure = path.removeprefix("/")
        if kind == "unary":
            return f"{procedure} takes Content-Type {_UNARY}, {given}; {_GRPC_TOO}"
        if kind is None:
            takes = f"{_UNARY} for a unary method, {_STREAM} for a streaming one"
            return f"{procedure} takes Content-Type {takes}, {given}; {_GRPC_TOO}"
        takes = _STREAM
        if path in self._plain_json:
            takes += ", or application/json for one JSON answer"
        kind_name = kind.replace("_", "-")
        return f"{procedure} is {kind_name}: it takes Content-Type {takes}, {given}; {_GRPC_TOO}"

    def not_found(self, path: str) -> str:
        match = _RPC_PATH.fullmatch(path)
        service = match.group(1) if match else path.removeprefix("/").rsplit("/", 1)[0]
        methods = self._methods.get(service)
        if methods is not None:
            return f"{path}: {service} has no method by that name; its methods: " + ", ".join(
                methods
            )
        return f"{path}: no service {service} here; the services: " + ", ".join(
            sorted(self._methods)
        )

    def knows(self, path: str) -> bool:
        """Whether path is one of the RPCs served here (/package.Service/Method)."""
        return path in self._kinds

    def is_rpc_path(self, path: str) -> bool:
        """Whether path names an RPC (/package.Service/Method), served here or not."""
        return _RPC_PATH.fullmatch(path) is not None


def explaining_refusals(catalog: Catalog, scope: Scope, send: Send) -> Send:
    """send, with a Connect error as the body of connectrpc's bodiless refusals."""
    explanation: bytes | None = None
    started = False

    async def explaining_send(message: ASGIMessage) -> None:
        nonlocal explanation, started
        if started:  # the usual case: an answer connectrpc wrote itself
            if explanation is not None and message["type"] == "http.response.body":
                message = {**message, "body": explanation}
                explanation = None
            await send(message)
            return
        started = True
        status = message.get("status")
        headers = message.get("headers", [])
        if status in _REFUSALS and not any(name.lower() == b"content-type" for name, _ in headers):
            explanation = connect_error("unimplemented", _refusal(catalog, scope, status, headers))
            message = {**message, "headers": [*headers, (b"content-type", b"application/json")]}
        await send(message)

    return explaining_send


def connect_error(code: str, message: str) -> bytes:
    """A Connect error's JSON, in UTF-8 (a lone surrogate from a path, which UTF-8 cannot
    carry, as a JSON escape)."""
    body = json.dumps({"code": code, "message": message}, ensure_ascii=False)
    return body.encode("utf-8", "backslashreplace")


def _refusal(
    catalog: Catalog, scope: Scope, status: int, headers: list[tuple[bytes, bytes]]
) -> str:
    path: str = scope["path"]
    if status == 404:
        return catalog.not_found(path)
    if status == 415:
        content_type = media_type(scope).decode("latin-1")
        return catalog.unsupported_media_type(path, content_type)
    allowed = next((v.decode("latin-1") for k, v in headers if k.lower() == b"allow"), "POST")
    methods = " or ".join(m.strip() for m in allowed.split(","))
    return f"{path.removeprefix('/')} is called with {methods}, not {scope['method']}"
