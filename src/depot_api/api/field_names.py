"""Fields named as the caller writes them: JSON names for JSON callers, proto names otherwise.

The domain names a field by its path in the request as the .proto file spells it
("cache_policy.keep_gb"). A caller that sends JSON (Connect JSON, unary or streaming, the plain
application/json POST, gRPC or gRPC-Web with +json) writes "cachePolicy.keepGb", so its
messages name that; the path is rendered through the request message's descriptor, which knows
each field's JSON name. A binary protobuf caller never writes a name, and the code generated
for it spells fields as the .proto file does, so it keeps the proto names.
"""

from __future__ import annotations

import functools

from protobuf import DescField, DescFieldValueList, DescFieldValueMessage, DescMessage


def is_json(content_type: str) -> bool:
    """Whether a request's Content-Type carries JSON: application/json or application/…+json."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def json_path(request: DescMessage, path: str) -> str:
    """A dotted proto field path ("cache_policy.keep_gb") with JSON names ("cachePolicy.keepGb").

    A name the descriptor does not have (the domain named something that is not a field of
    this request) gets protobuf's default JSON name, which is what a JSON caller would write.
    """
    names = []
    message: DescMessage | None = request
    for name in path.split("."):
        field = _fields(message).get(name) if message is not None else None
        if field is None:
            names.append(_default_json_name(name))
            message = None
            continue
        names.append(field.json_name)
        message = _message_of(field)
    return ".".join(names)


@functools.cache
def _fields(message: DescMessage) -> dict[str, DescField]:
    return {field.name: field for field in message.fields}


def _message_of(field: DescField) -> DescMessage | None:
    kind = field.value
    if isinstance(kind, DescFieldValueMessage):
        return kind.message
    if isinstance(kind, DescFieldValueList) and isinstance(kind.element, DescMessage):
        return kind.element
    return None


def _default_json_name(name: str) -> str:
    """protobuf's rule: drop each underscore and capitalize the letter after it."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)
