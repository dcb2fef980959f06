"""The configuration file (`--config FILE`): a TOML file of settings, below the environment.

Its keys are the names of a settings table's rows (config.py: `port`, `log_level`, ...; the
agent's are its own table's). Values are TOML's own: strings, numbers, booleans, and a list of
strings where a setting takes several words (`regions = ["eu-central-1"]`). Each value is turned
into the text a flag or variable would carry, so that the setting's kind checks it the same way
whichever way it came. A file that cannot be read, is not TOML, has a key no setting has or a
value of a type no setting takes is refused as a whole, in one line.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from depot_api.setting_kinds import number_text


class ConfigFileError(Exception):
    """The file as a whole cannot be used; str() names the file and what is wrong."""


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    # Each key's value as a flag would give it.
    texts: Mapping[str, str]


def read_config_file(path: Path, known: Collection[str]) -> ConfigFile:
    """The file's settings as text, each key one of `known`; ConfigFileError otherwise."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigFileError(f"{path}: cannot be read: {e.strerror or e}") from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigFileError(f"{path}: is not valid TOML: {e}") from None
    texts: dict[str, str] = {}
    for key, value in document.items():
        if key not in known:
            raise ConfigFileError(f"{path}: {_unknown(key, known)}")
        text = _as_text(value)
        if text is None:
            raise ConfigFileError(
                f"{path}: {key} must be a string, a number, true or false, or a list of strings"
                f" (not a {_toml_type(value)})"
            )
        texts[key] = text
    return ConfigFile(path, texts)


def _unknown(key: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    if "-" in key and key.replace("-", "_") in known:
        hint = f"; write it {key.replace('-', '_')}"
    return f"unknown setting {key!r}{hint} (docs/operations.md lists them)"


def _as_text(value: object) -> str | None:
    if isinstance(value, bool):  # before int: a bool is an int in Python
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):  # inf and nan are TOML too; the setting's kind refuses them
        return number_text(value) if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    return None


def _toml_type(value: object) -> str:
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "list of other things than strings"
    return "date or time"
