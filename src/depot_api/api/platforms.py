"""Platforms on the wire (both protos number them alike) and in the domain."""

from __future__ import annotations

from depot_api.domain.errors import InvalidField
from depot_api.models import Platform

# 0 (unspecified) means amd64, the platform clients assume when they name none.
_BY_NUMBER = {0: Platform.AMD64, 1: Platform.AMD64, 2: Platform.ARM64}


def platform_from_wire(number: int) -> Platform:
    try:
        return _BY_NUMBER[int(number)]
    except KeyError:
        raise InvalidField("platform", f"{int(number)} is not a known Platform value") from None
