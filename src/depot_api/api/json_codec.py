"""The JSON codec: unknown keys are ignored, unknown enum names are not.

Connect servers ignore unknown JSON keys so that newer clients keep working. Parsing
leniently, though, also turns an unknown enum name (a typo such as "HARDWARE_8x8") into the
zero value without a word. This codec parses strictly first; only when that fails does it
drop the keys the schema does not know and parse strictly again, so every remaining problem,
unknown enum names included, is reported to the caller as invalid_argument.
"""

from __future__ import annotations

import json
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
        try:
            return message_class.from_json(data)
        except (ValueError, TypeError):
            document = json.loads(data)  # invalid JSON raises here, with the parser's message
            known = _without_unknown_keys(document, message_class().desc())
            return message_from_json_value(message_class, known)


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
