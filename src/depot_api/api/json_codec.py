"""The JSON codec: unknown keys are ignored, unknown enum names are not.

Connect servers ignore unknown JSON keys so that newer clients keep working. Parsing
leniently, though, also turns an unknown enum name (a typo such as "HARDWARE_8x8") into the
zero value without a word. This codec parses strictly first; only when that fails does it
drop the keys the schema does not know and parse strictly again, so every remaining problem,
unknown enum names included, is reported to the caller as invalid_argument.

It also refuses an object naming two members of one oneof (`"success": {}` and `"error": {…}`),
as ProtoJSON requires; protobuf-py would keep the last one named.

The parser names a field it cannot read by its qualified proto name
(depot.core.v1.CachePolicy.keep_gb); the message names it instead by its path in the document,
as the caller wrote it (cachePolicy.keepGb).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from typing import Any, TypeVar

from protobuf import (
    DescFieldValueList,
    DescFieldValueMap,
    DescFieldValueMessage,
    DescMessage,
    Message,
    message_from_json_value,
)

M = TypeVar("M", bound=Message)


class LenientKeysJSONCodec:
    def name(self) -> str:
        return "json"

    def encode(self, message: Message) -> bytes:
        return message.to_json().encode()

    def decode(self, data: bytes | bytearray, message_class: type[M]) -> M:
        document = json.loads(data)  # invalid JSON raises here, with the parser's message
        desc = message_class.desc()
        _refuse_two_of_a_oneof(document, desc)
        try:
            return message_from_json_value(message_class, document)
        except _PARSE_ERRORS:
            pass
        try:
            return message_from_json_value(message_class, _without_unknown_keys(document, desc))
        except _PARSE_ERRORS as e:
            raise _as_written(e, document, desc) from None


# What protobuf-py raises for a document it cannot read (OverflowError: an integer too large
# for its field).
_PARSE_ERRORS = (ValueError, TypeError, OverflowError)


# How protobuf-py ends a message about one field's value.
_FOR_FIELD = re.compile(r" for field ([\w.]+)$")


def _as_written(error: Exception, document: Any, desc: DescMessage) -> Exception:
    """error, its field named by the path the caller wrote instead of its qualified name."""
    text = str(error)
    match = _FOR_FIELD.search(text)
    path = _path_to(document, desc, match.group(1)) if match else None
    if match is None or path is None:
        return error
    return ValueError(f"{'.'.join(path)}: {text[: match.start()]}")


def _path_to(value: Any, desc: DescMessage, qualified: str) -> list[str] | None:
    """The keys leading to the first field named qualified in the document (list positions
    left out, as in the domain's own field paths), or None. It follows the schema's messages
    only, so its depth is the document's depth in messages."""
    if isinstance(value, list):
        for entry in value:
            found = _path_to(entry, desc, qualified) if isinstance(entry, dict) else None
            if found is not None:
                return found
        return None
    if not isinstance(value, dict) or desc.type_name.startswith("google.protobuf."):
        return None
    fields = {key: field for field in desc.fields for key in (field.json_name, field.name)}
    for key, item in value.items():
        field = fields.get(key)
        if field is None:
            continue
        if f"{desc.type_name}.{field.name}" == qualified:
            return [key]
        kind = field.value
        inner = None
        if isinstance(kind, DescFieldValueMessage):
            inner = kind.message
        elif isinstance(kind, DescFieldValueList) and isinstance(kind.element, DescMessage):
            inner = kind.element
        elif isinstance(kind, DescFieldValueMap) and isinstance(kind.value, DescMessage):
            inner, item = kind.value, list(item.values()) if isinstance(item, dict) else None
        found = _path_to(item, inner, qualified) if inner is not None else None
        if found is not None:
            return [key, *found]
    return None


def _refuse_two_of_a_oneof(value: Any, desc: DescMessage) -> None:
    if not isinstance(value, dict) or not _has_oneofs(desc):
        return  # most messages: nothing to look at
    for oneof in desc.oneofs:
        named = [
            field.json_name
            for field in oneof.fields
            if value.get(field.json_name, value.get(field.name)) is not None
        ]
        if len(named) > 1:
            raise ValueError(f"{oneof} takes one of its fields, not {' and '.join(named)}")
    for field in desc.fields:
        item = value.get(field.json_name, value.get(field.name))
        kind = field.value
        if isinstance(kind, DescFieldValueMessage):
            _refuse_two_of_a_oneof(item, kind.message)
        elif isinstance(kind, DescFieldValueList) and isinstance(kind.element, DescMessage):
            for entry in item if isinstance(item, list) else ():
                _refuse_two_of_a_oneof(entry, kind.element)
        elif isinstance(kind, DescFieldValueMap) and isinstance(kind.value, DescMessage):
            for entry in item.values() if isinstance(item, dict) else ():
                _refuse_two_of_a_oneof(entry, kind.value)


@functools.cache
def _has_oneofs(desc: DescMessage) -> bool:
    """Whether desc or a message below it declares a oneof (well-known types excepted: they
    have their own JSON forms)."""
    seen: set[str] = set()
    stack = [desc]
    while stack:
        current = stack.pop()
        if current.type_name in seen or current.type_name.startswith("google.protobuf."):
            continue
        seen.add(current.type_name)
        if current.oneofs:
            return True
        stack.extend(_field_messages(current))
    return False


def _field_messages(desc: DescMessage) -> Iterator[DescMessage]:
    for field in desc.fields:
        kind = field.value
        if isinstance(kind, DescFieldValueMessage):
            yield kind.message
        elif isinstance(kind, DescFieldValueList) and isinstance(kind.element, DescMessage):
            yield kind.element
        elif isinstance(kind, DescFieldValueMap) and isinstance(kind.value, DescMessage):
            yield kind.value


def _without_unknown_keys(value: Any, desc: DescMessage) -> Any:
    if not isinstance(value, dict) or desc.type_name.startswith("google.protobuf."):
        return value  # not an object, or a well-known type with its own JSON form
    fields = {key: field for field in desc.fields for key in (field.json_name, field.name)}
    kept: dict[str, Any] = {}
    for key, item in value.items():
        field = fields.get(key)
        if field is None:
            continue
        kind = field.value
        if isinstance(kind, DescFieldValueMessage):
            item = _without_unknown_keys(item, kind.message)
        elif isinstance(kind, DescFieldValueList) and isinstance(kind.element, DescMessage):
            element = kind.element
            if isinstance(item, list):
                item = [_without_unknown_keys(entry, element) for entry in item]
        elif isinstance(kind, DescFieldValueMap) and isinstance(kind.value, DescMessage):
            entry_desc = kind.value
            if isinstance(item, dict):
                item = {k: _without_unknown_keys(v, entry_desc) for k, v in item.items()}
        kept[key] = item
    return kept
