"""SecretBox seals key material at rest; its key lives in a private file created on first use."""

from __future__ import annotations

import base64
import functools
import os
import re
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from depot_api.domain.secretbox import SecretBox, SecretBoxError, load_or_create_key

PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n"
    "-----END PRIVATE KEY-----\n"
)


def test_round_trip() -> None:
    box = SecretBox(SecretBox.generate_key())
    sealed = box.seal(PEM)
    assert PEM not in sealed
    assert "PRIVATE KEY" not in sealed
    assert box.open(sealed) == PEM
    assert box.open(box.seal("")) == ""
    assert box.open(box.seal("naïve ✓")) == "naïve ✓"


def test_sealing_is_randomized() -> None:
    box = SecretBox(SecretBox.generate_key())
    first, second = box.seal(PEM), box.seal(PEM)
    assert first != second
    assert box.open(first) == box.open(second) == PEM


def test_the_token_is_fernet() -> None:
    key = SecretBox.generate_key()
    assert len(base64.urlsafe_b64decode(key)) == 32
    assert Fernet(key).decrypt(SecretBox(key).seal("x").encode()) == b"x"


def test_tampering_is_detected() -> None:
    box = SecretBox(SecretBox.generate_key())
    raw = bytearray(base64.urlsafe_b64decode(box.seal(PEM)))
    for position in (0, 9, 30, len(raw) // 2, len(raw) - 1):  # version, IV, body, MAC
        tampered = raw.copy()
        tampered[position] ^= 0x01
        with pytest.raises(SecretBoxError, match="corrupt or was sealed under another key"):
            box.open(base64.urlsafe_b64encode(bytes(tampered)).decode())
    with pytest.raises(SecretBoxError):
        box.open(box.seal(PEM)[:-4])
    with pytest.raises(SecretBoxError):
        box.open("not a token at all")


def test_wrong_key_is_refused() -> None:
    sealed = SecretBox(SecretBox.generate_key()).seal(PEM)
    with pytest.raises(SecretBoxError):
        SecretBox(SecretBox.generate_key()).open(sealed)


@pytest.mark.parametrize(
    "key",
    [b"", b"too-short", base64.urlsafe_b64encode(b"\0" * 31), b"!" * 44, os.urandom(32)],
    # Named, not shown: a random value in a test's ID differs between parallel workers.
    ids=["empty", "too-short", "31-bytes", "not-base64", "raw-random-bytes"],
)
def test_malformed_keys_are_refused(key: bytes) -> None:
    with pytest.raises(ValueError, match="not a Fernet key"):
        SecretBox(key)


def test_key_file_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "secretbox.key"
    key = load_or_create_key(path)
    SecretBox(key)  # usable
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().strip() == key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secretbox.key"]  # no temporaries left


def test_key_file_mode_ignores_a_permissive_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        load_or_create_key(tmp_path / "key")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600


def test_second_call_returns_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "secretbox.key"
    first = load_or_create_key(path)
    assert load_or_create_key(path) == first
    sealed = SecretBox(first).seal(PEM)
    assert SecretBox(load_or_create_key(path)).open(sealed) == PEM


def test_existing_key_is_read_with_whitespace_stripped(tmp_path: Path) -> None:
    key = SecretBox.generate_key()
    path = tmp_path / "key"
    path.write_bytes(b"  " + key + b"\r\n\n")
    assert load_or_create_key(path) == key


def test_concurrent_creation_yields_one_key(tmp_path: Path) -> None:
    for attempt in range(20):
        path = tmp_path / f"key-{attempt}"
        keys, errors = race(4, functools.partial(load_or_create_key, path))
        assert errors == []
        assert len(keys) == 4
        assert len(set(keys)) == 1
        assert path.read_bytes().strip() == keys[0]
    assert all(p.name.startswith("key-") for p in tmp_path.iterdir())  # no temporaries left


def race(threads: int, call: Callable[[], bytes]) -> tuple[list[bytes], list[BaseException]]:
    """Run call in that many threads released at the same instant."""
    start = threading.Barrier(threads)
    results: list[bytes] = []
    errors: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            results.append(call())
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results, errors


def test_losing_the_race_returns_the_winners_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secretbox.key"
    winner = SecretBox.generate_key()
    link = os.link

    def another_process_wins(src: str | Path, dst: str | Path) -> None:
        # Between our look and our link, another process puts its complete key in place.
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as file:
            file.write(winner + b"\n")
        link(src, dst)

    monkeypatch.setattr(os, "link", another_process_wins)
    assert load_or_create_key(path) == winner
    assert path.read_bytes() == winner + b"\n"
    assert [p.name for p in tmp_path.iterdir()] == ["secretbox.key"]


def test_malformed_key_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "secretbox.key"
    path.write_text("this is not a key\n")
    with pytest.raises(ValueError, match=re.escape(f"{path} does not hold a valid key")):
        load_or_create_key(path)
    assert path.read_text() == "this is not a key\n"  # left alone for the operator to inspect


def test_empty_key_file_is_malformed(tmp_path: Path) -> None:
    path = tmp_path / "secretbox.key"
    path.touch()
    with pytest.raises(ValueError, match=r"secretbox\.key does not hold a valid key"):
        load_or_create_key(path)
