"""The configuration reference in docs/operations.md, made from the settings table.

`python -m depot_api.config_reference` prints it, and with `--write docs/operations.md`
replaces the copy there; a test keeps that copy equal to it, so a row added to the table
(config.py) shows up in the docs or fails the test.
"""

from __future__ import annotations

import sys
from pathlib import Path

from depot_api.config import SETTINGS

BEGIN = "<!-- configuration reference: made by python -m depot_api.config_reference -->"
END = "<!-- end of the configuration reference -->"


def reference() -> str:
    """A Markdown table: file key, flag, environment variable, default, what it is."""
    lines = [
        BEGIN,
        "| file key | flag | environment variable | default | what it is |",
        "| --- | --- | --- | --- | --- |",
    ]
    for setting in SETTINGS:
        if not setting.commands:  # set by the supervisor for its workers, not by people
            continue
        help = setting.help + (" (secret: never shown)" if setting.secret else "")
        cells = [
            f"`{setting.field}`",
            f"`{setting.flag}`" if setting.flag else "-",
            f"`{setting.env}`",
            setting.describe_default() or "none",
            help,
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    lines.append(END)
    return "\n".join(lines) + "\n"


def with_reference(document: str) -> str:
    """The document with the text between its markers replaced by the reference."""
    start = document.index(BEGIN)
    end = document.index(END, start) + len(END) + 1
    return document[:start] + reference() + document[end:]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        target = Path(sys.argv[2])
        target.write_text(with_reference(target.read_text()))
    else:
        print(reference(), end="")
