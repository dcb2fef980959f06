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


def run_node_script(
    script: str, url: str, token: str, env: dict[str, str], timeout: float = 120
) -> dict[str, Any]:
    """Run tests/e2e/node/<script> against the server at url with token (DEPOT_API_URL,
    DEPOT_E2E_TOKEN) and env; returns the JSON document it printed."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("`node` is not on PATH: install Node.js 20 or later, then run `make install`")
    if not SDK_PACKAGE.is_file():
        pytest.fail("@depot/sdk-node is not installed in tests/e2e/node: run `make install`")
    result = subprocess.run(
        [node, str(NODE_DIR / script)],
        cwd=NODE_DIR,
        env={**os.environ, "DEPOT_API_URL": url, "DEPOT_E2E_TOKEN": token, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"{script} exited with {result.returncode}\n"
        f"stderr:\n{result.stderr}\nstdout:\n{result.stdout}"
    )
    observed: dict[str, Any] = json.loads(result.stdout)
    return observed
