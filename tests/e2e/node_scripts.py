"""Running the Node scripts in tests/e2e/node (the official @depot/sdk-node's calls): each
prints one JSON document; a missing Node or SDK fails the test, saying what to install."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"
SDK_PACKAGE = NODE_DIR / "node_modules" / "@depot" / "sdk-node" / "package.json"
# The version `make install` puts there, which the SDK tests were written against.
SDK_VERSION = "1.4.0"


def node_for_sdk(sdk_version: str | None = None) -> str:
    """The `node` to run the scripts with. Fails the test (never skips) when Node or the SDK is
    not installed, or when the SDK is not sdk_version (if given)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("`node` is not on PATH: install Node.js 20 or later, then run `make install`")
    if not SDK_PACKAGE.is_file():
        pytest.fail("@depot/sdk-node is not installed in tests/e2e/node: run `make install`")
    if sdk_version is not None:
        installed = json.loads(SDK_PACKAGE.read_text())["version"]
        if installed != sdk_version:
            pytest.fail(
                f"tests/e2e/node has @depot/sdk-node {installed}, not {sdk_version}: "
                "run `make install`"
            )
    return node


def script_env(url: str, token: str, env: dict[str, str]) -> dict[str, str]:
    """A script's environment: the server at url (DEPOT_API_URL), the token (DEPOT_E2E_TOKEN),
    and the script's own variables."""
    return {**os.environ, "DEPOT_API_URL": url, "DEPOT_E2E_TOKEN": token, **env}


def run_node_script(
    script: str,
    url: str,
    token: str,
    env: dict[str, str],
    timeout: float = 120,
    sdk_version: str | None = None,
) -> Any:
    """Run tests/e2e/node/<script> against the server at url with token and env; returns the
    JSON document it printed."""
    node = node_for_sdk(sdk_version)
    result = subprocess.run(
        [node, str(NODE_DIR / script)],
        cwd=NODE_DIR,
        env=script_env(url, token, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"{script} exited with {result.returncode}\n"
        f"stderr:\n{result.stderr}\nstdout:\n{result.stdout}"
    )
    return json.loads(result.stdout)
