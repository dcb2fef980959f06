"""The kinds of value a setting takes: how each is read from text and written back as text.

A kind's `parse` raises ValueError whose message says what the value must be ("must be a
whole number from 0 to 65535"); the caller puts the setting's name, as the user gave it, in
front. `show` writes a value the way people write it (`120`, not `120.0`), so that `--help`
and the environment handed to worker processes read like what a user would type.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from string import Formatter
from typing import Any
from urllib.parse import urlsplit

# How to make a key for DEPOT_API_SECRET_KEY, quoted in its error.
FERNET_KEY_RECIPE = (
    'python3 -c "import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())"'
)

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

# The longest duration any setting accepts: beyond it a typo is likelier than intent, and
# far beyond it Python's timedelta overflows.
LONGEST = timedelta(days=365)


@dataclass(frozen=True)
class Kind:
    parse: Callable[[str], Any]
    show: Callable[[Any], str]
    # The text as given, fit for a message (a URL's password hidden).
    redact: Callable[[str], str] = str
    # An on/off setting: its flag takes no value (--name turns it on, --no-name off).
    switch: bool = False
    # A list: its flag may be given more than once, each adding items; the environment
    # variable holds them all, separated by commas.
    repeatable: bool = False


def number_text(value: float) -> str:
    """A number as people write it: 120, 0.5 (never 120.0 or 1e+06)."""
    if value == int(value):
        return str(int(value))
    return repr(value)


def whole_number(low: int, high: int | None = None) -> Kind:
    expected = f"a whole number, {low} or more"
    if high is not None:
        expected = f"a whole number from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"must be {expected}") from None
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be {expected}")
        return value

    return Kind(parse, str)


def number(low: float) -> Kind:
    """A decimal number (a rate), `low` or more."""

    def parse(text: str) -> float:
        value = _finite(text)
        if value is None or value < low:
            raise ValueError(f"must be a number, {number_text(low)} or more")
        return value

    return Kind(parse, number_text)


def seconds(*, low: float = 0.0, above_low: bool = False, high: timedelta = LONGEST) -> Kind:
    """A duration written as a number of seconds ("120", "0.5")."""
    most = number_text(high.total_seconds())
    most += {3600: " (an hour)", LONGEST.total_seconds(): " (a year)"}.get(high.total_seconds(), "")
    bound = f"more than {number_text(low)}" if above_low else f"{number_text(low)} or more"
    expected = f"a number of seconds (such as 120 or 0.5), {bound} and at most {most}"

    def parse(text: str) -> timedelta:
        value = _finite(text)
        if (
            value is None
            or value < low
            or (above_low and value == low)
            or value > high.total_seconds()
        ):
            raise ValueError(f"must be {expected}")
        return timedelta(seconds=value)

    def show(value: timedelta) -> str:
        return number_text(value.total_seconds())

    return Kind(parse, show)


def choice(options: Sequence[str]) -> Kind:
    """One of a few words, in any case; kept in lower case."""

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return Kind(parse, str)


_ON = ("true", "1", "yes", "on")
_OFF = ("false", "0", "no", "off")


def on_off() -> Kind:
    """On or off: true/false, 1/0, yes/no, on/off, in any case."""

    def parse(text: str) -> bool:
        value = text.strip().lower()
        if value in _ON:
            return True
        if value in _OFF:
            return False
        raise ValueError("must be true or false (also 1/0, yes/no, on/off)")

    return Kind(parse, lambda value: "true" if value else "false", switch=True)


def ip_address() -> Kind:
    """An address to listen on. The server binds it as it is, so a name will not do."""

    def parse(text: str) -> str:
        try:
            return str(ipaddress.ip_address(text.strip()))
        except ValueError:
            raise ValueError(
                "must be an IP address to listen on, such as 127.0.0.1, 0.0.0.0 or ::"
            ) from None

    return Kind(parse, str)


def listen_address() -> Kind:
    """IP:PORT ([IPv6]:PORT for IPv6) to listen on; empty means none."""

    def parse(text: str) -> str:
        text = text.strip()
        if not text:
            return ""
        host, _, port = text.rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]")
        try:
            ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
            number = int(port)
        except ValueError:
            ip, number = None, -1
        if ip is None or not 0 < number < 65536 or (ip.version == 6) != bracketed:
            raise ValueError(
                "must be IP:PORT to listen on, such as 127.0.0.1:9100 or [::1]:9100, "
                "with a port 1-65535"
            )
        return f"[{ip}]:{number}" if ip.version == 6 else f"{ip}:{number}"

    return Kind(parse, str)


def path(*, optional: bool = False) -> Kind:
    def parse(text: str) -> Path | None:
        if not text:
            if optional:
                return None
            raise ValueError("must be a path")
        return Path(text)

    return Kind(parse, str)


def word_list() -> Kind:
    """Comma-separated words (region IDs): at least one."""

    def parse(text: str) -> tuple[str, ...]:
        words = tuple(word.strip() for word in text.split(",") if word.strip())
        if not words:
            raise ValueError("must name at least one, separated by commas")
        return words

    def show(value: tuple[str, ...]) -> str:
        return ",".join(value)

    return Kind(parse, show)


def optional_word_list() -> Kind:
    """Comma-separated words, or none (empty)."""

    def parse(text: str) -> tuple[str, ...]:
        return tuple(word.strip() for word in text.split(",") if word.strip())

    return Kind(parse, ",".join, repeatable=True)


def provider_urls(providers: Sequence[str]) -> Kind:
    """PROVIDER=URL pairs, comma-separated (repeatable as a flag): each replaces a provider's
    URL. The URL must be https://, or http:// to a loopback address."""

    def parse(text: str) -> tuple[tuple[str, str], ...]:
        from depot_api.domain.oidc_issuers import fetch_problem

        pairs: dict[str, str] = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            provider, equals, url = item.partition("=")
            provider, url = provider.strip().lower(), url.strip().rstrip("/")
            if not equals or provider not in providers:
                raise ValueError(
                    f"{item!r} must be PROVIDER=URL with PROVIDER one of {', '.join(providers)}"
                )
            if (problem := fetch_problem(url)) is not None:
                raise ValueError(f"{provider}'s URL {url!r} {problem}")
            if provider in pairs:
                raise ValueError(f"names {provider} twice")
            pairs[provider] = url
        return tuple(pairs.items())

    def show(value: tuple[tuple[str, str], ...]) -> str:
        return ",".join(f"{provider}={url}" for provider, url in value)

    return Kind(parse, show, repeatable=True)


def database_url() -> Kind:
    """A PostgreSQL or SQLite URL; empty means SQLite in the data directory."""

    def parse(text: str) -> str | None:
        if not text:
            return None
        # Imported here: the store pulls in SQLAlchemy and Alembic, which reading settings
        # should not need.
        from depot_api.store.urls import normalize_url

        normalize_url(text)  # raises ValueError saying what is wrong
        return text

    def redact(text: str) -> str:
        from depot_api.store.urls import shown_url

        return shown_url(text)

    return Kind(parse, str, redact)


def fernet_key() -> Kind:
    """The key that seals private keys at rest (domain/secretbox.py); empty means the key file."""

    def parse(text: str) -> str | None:
        if not text:
            return None
        from depot_api.domain.secretbox import SecretBox

        try:
            SecretBox(text.strip().encode())
        except ValueError:
            raise ValueError(
                "must be a Fernet key (32 random bytes in URL-safe base64: 44 characters); "
                f"make one with {FERNET_KEY_RECIPE}"
            ) from None
        return text.strip()

    return Kind(parse, str)


def build_url_template() -> Kind:
    """A URL with {project_id} and {build_id} fields and no others; empty means none."""

    def parse(text: str) -> str:
        try:
            fields = {field for _, field, _, _ in Formatter().parse(text) if field is not None}
            text.format(project_id="p", build_id="b")
        except (AttributeError, KeyError, IndexError, ValueError):
            fields = {"?"}
        if not fields <= {"project_id", "build_id"}:
            raise ValueError("may use the fields {project_id} and {build_id} and no others")
        return text

    return Kind(parse, str)


def base_url() -> Kind:
    """An http(s) URL with a host and no query or fragment, kept without its trailing slash;
    empty means none."""

    def parse(text: str) -> str:
        text = text.strip()
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        except ValueError:
            parts = None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.query
            or parts.fragment
            or "?" in text
            or "#" in text
        ):
            raise ValueError(
                "must be an http:// or https:// URL with a host and no query or fragment, "
                "such as https://depot.example.com"
            )
        return text.rstrip("/")

    return Kind(parse, str)


def _finite(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None
