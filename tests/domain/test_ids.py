from __future__ import annotations

import pytest

from depot_api.domain.errors import InvalidArgument
from depot_api.domain.ids import is_id, new_id, quoted, require_id
from depot_api.domain.token_format import mint
from depot_api.models import TokenKind


def test_new_ids_have_the_shape() -> None:
    assert all(is_id(new_id()) for _ in range(100))


def test_a_bad_id_is_echoed_short_and_printable() -> None:
    with pytest.raises(InvalidArgument, match=r'build_id "a\\nb" is not a valid ID'):
        require_id("a\nb", "build_id")
    assert quoted("x" * 100) == '"' + "x" * 40 + '…"'


def test_a_bad_id_is_echoed_in_its_own_script() -> None:
    """Only what would not print is escaped: "café" was echoed as "caf\\xe9"."""
    with pytest.raises(InvalidArgument) as refused:
        require_id("café", "project_id")
    assert refused.value.message.startswith('project_id "café" is not a valid ID')
    assert quoted("日本\u200b\ud800\t") == '"日本\\u200b\\ud800\\t"'


@pytest.mark.parametrize("kind", list(TokenKind))
def test_a_token_secret_in_an_id_field_is_not_echoed(kind: TokenKind) -> None:
    secret = mint(kind)
    with pytest.raises(InvalidArgument) as refused:
        require_id(secret, "build_id")
    assert secret[4:10] not in refused.value.message
    assert f'"{secret[:4]}…" (a token secret, not repeated here)' in refused.value.message
