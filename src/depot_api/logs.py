"""Logging: one line per event on standard error, as key=value pairs a log shipper can parse."""

from __future__ import annotations

import logging
import sys

_FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r"


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger("depot_api")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
