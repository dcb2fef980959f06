"""A worker whose application fails to load: the error is one line, the exception it raised."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyvoy import PyvoyServer

from depot_api.server.errors import ServeError
from depot_api.server.worker import Worker

pytestmark = pytest.mark.e2e


async def test_an_application_that_fails_to_load_in_a_worker_is_one_line() -> None:
    config = PyvoyServer(
        "tests.no_such_module:app", port=0, lifespan=True, tls_enable_http3=False
    ).get_envoy_config()
    with pytest.raises(ServeError) as raised:
        await Worker.start(config, {})
    assert str(raised.value) == (
        "a worker failed to start: ModuleNotFoundError: No module named 'tests.no_such_module'"
    )


async def test_an_application_that_raises_while_loading_is_one_line(tmp_path: Path) -> None:
    """pyvoy prints this one with its traceback: the line is the exception, not a frame."""
    config = PyvoyServer(
        "depot_api.asgi:app", port=0, lifespan=True, tls_enable_http3=False
    ).get_envoy_config()
    missing = tmp_path / "missing"  # the application cannot make its secret key there
    with pytest.raises(ServeError) as raised:
        await Worker.start(config, {"DEPOT_API_DATA_DIR": str(missing)})
    assert str(raised.value).startswith(
        f"a worker failed to start: FileNotFoundError: [Errno 2] No such file or directory: "
        f"'{missing}/"
    ), raised.value
