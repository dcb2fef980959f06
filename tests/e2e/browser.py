"""A real headless Chromium (Debian's, never a downloaded one) driven by Playwright, and the
console's sign-in in it. A machine without either fails the test with the line that fixes it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `make install` (Debian's chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: run `make install`")
    with sync_playwright() as playwright:
        # No sandbox: the suite may run as root.
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Watched:
    """What a page did that it must not: dialogs (alert), uncaught errors, console output.

    The console asks before a destructive form is sent (window.confirm): a test says how to
    answer each question it expects with `answer_confirm`, in order; the questions answered so
    are in `confirmed`. Any other dialog, or a confirm no answer was given for, is dismissed
    and counts against the page."""

    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    confirmed: list[str] = field(default_factory=list)
    answers: list[bool] = field(default_factory=list)
    # The addresses of the forms the page sent (POSTs), in order: a declined confirm sends none.
    posted: list[str] = field(default_factory=list)

    def answer_confirm(self, accept: bool) -> None:
        """Answer the next confirm the page asks: OK when accept, else Cancel."""
        self.answers.append(accept)

    def assert_quiet(self) -> None:
        assert self.dialogs == [], self.dialogs
        assert self.answers == [], f"confirms expected but never asked: {self.answers}"
        assert self.errors == [], self.errors
        assert not [m for m in self.console if "alert" in m or "Content Security" in m], (
            self.console
        )

    def on_dialog(self, dialog: Any) -> None:
        if dialog.type == "confirm" and self.answers:
            self.confirmed.append(dialog.message)
            if self.answers.pop(0):
                dialog.accept()
            else:
                dialog.dismiss()
            return
        self.dialogs.append(dialog.message)
        dialog.dismiss()


def watch(page: Any) -> Watched:
    watched = Watched()
    page.on("dialog", watched.on_dialog)
    page.on("pageerror", lambda e: watched.errors.append(str(e)))
    page.on("request", lambda r: watched.posted.append(r.url) if r.method == "POST" else None)
    page.on("console", lambda m: watched.console.append(m.text))
    return watched


def sign_in(page: Any, server_url: str, token: str) -> None:
    """Sign in through the console's own form, as a person would."""
    page.goto(f"{server_url}/console/")
    assert "/console/sign-in" in page.url, page.url
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server_url}/console/")
