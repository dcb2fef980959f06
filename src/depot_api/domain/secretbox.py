"""Sealing private keys before they reach the database.

The CA and certificate keys the PKI mints are stored so that any process can issue or hand
out certificates later; a copy of the database alone must not be enough to impersonate a
project's BuildKit machines. So keys are sealed with Fernet (AES-128-CBC with HMAC-SHA256,
from `cryptography`) under a key kept outside the database: a file in the data directory,
created on first use with mode 0600. Fernet authenticates as well as encrypts, so a tampered
or foreign ciphertext is refused rather than decrypted into garbage.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


class SecretBoxError(Exception):
    """A sealed value that is not one this box sealed: tampered, truncated or another key's."""


class SecretBox:
    """Symmetric authenticated encryption (Fernet from `cryptography`) for key material at rest."""

    __slots__ = ("_fernet",)

    def __init__(self, key: bytes) -> None:
        """key is a Fernet key (urlsafe base64 of 32 bytes); ValueError if it is malformed."""
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
            raise ValueError("not a Fernet key (expected urlsafe base64 of 32 bytes)") from exc

    @staticmethod
    def generate_key() -> bytes:
        return Fernet.generate_key()

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("utf-8")).decode("utf-8")
        except (InvalidToken, UnicodeError) as exc:
            raise SecretBoxError("sealed value is corrupt or was sealed under another key") from exc


def load_or_create_key(path: Path) -> bytes:
    """The key stored at path, creating the file (mode 0600) with a new key if there is none.

    Creation is atomic: the key is written to a private temporary file that is then linked
    into place, so a concurrent caller sees either no file or a complete one, and the loser of
    a race reads the winner's key.
    """
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    key = SecretBox.generate_key()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, key + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)  # fails if another process created path first
        except FileExistsError:
            return _read_key(path)
        _fsync_directory(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return key


def _read_key(path: Path) -> bytes:
    key = path.read_bytes().strip()
    try:
        SecretBox(key)
    except ValueError:
        raise ValueError(f"{path} does not hold a valid key (urlsafe base64 of 32 bytes)") from None
    return key


def _fsync_directory(directory: Path) -> None:
    """Make the new directory entry durable: losing the key loses every key sealed under it."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
