from __future__ import annotations

import pytest

from depot_api.domain.errors import InvalidArgument
from depot_api.domain.paging import (
    decode_page_token,
    encode_page_token,
    page_of,
    resolve_page_size,
)


def test_round_trip() -> None:
    position = (1_767_322_245_123_456, "abc123xyz0")
    assert decode_page_token(encode_page_token(position)) == position


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_is_the_first_page(token: str | None) -> None:
    assert decode_page_token(token) is None


@pytest.mark.parametrize(
    "token",
    ["garbage", "!!!!", encode_page_token((1, "abc"))[:-2], "cDE6MTIzOkFCQ0RFRkdISUo"],
)
def test_bad_tokens_are_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        decode_page_token(token)


@pytest.mark.parametrize(("given", "expected"), [(None, 30), (0, 30), (1, 1), (100, 100)])
def test_page_sizes(given: int | None, expected: int) -> None:
    assert resolve_page_size(given, default=30, maximum=100) == expected


@pytest.mark.parametrize("given", [-1, 101, 2**31 - 1])
def test_page_sizes_out_of_range(given: int) -> None:
    with pytest.raises(InvalidArgument, match="between 1 and 100"):
        resolve_page_size(given, default=30, maximum=100)


def test_page_of_cuts_at_the_limit() -> None:
    rows = [(i, f"id{i:08d}") for i in range(4)]
    page = page_of(rows, 3, lambda r: r)
    assert page.items == rows[:3]
    assert decode_page_token(page.next_page_token) == rows[2]
    last = page_of(rows[:3], 3, lambda r: r)
    assert (last.items, last.next_page_token) == (rows[:3], "")
