"""The console's in-process fixtures: the organization's admin principal, and a browser
signed in with the organization's token (a test that needs a signed-out one defines its own)."""

from __future__ import annotations

import pytest

from depot_api.domain.principal import Principal
from tests.conftest import InProcessAPI
from tests.console_client import ConsoleBrowser


@pytest.fixture
async def admin(api: InProcessAPI) -> Principal:
    return await api.app.domain.authenticator.authenticate(f"Bearer {api.org_token}")


@pytest.fixture
async def browser(api: InProcessAPI) -> ConsoleBrowser:
    browser = ConsoleBrowser(api.http)
    await browser.sign_in(api.org_token)
    return browser
