"""The private Docker Engine the buildkit tests build on: it runs, it is private, and its base
image runs; and where it cannot start, it says why in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import docker_engine as engine_module
from tests.docker_engine import APPLETS, DockerEngine, EngineUnavailable, running_engine


@pytest.mark.buildkit
def test_the_engine_answers_on_its_own_socket(docker_engine: DockerEngine) -> None:
    version = json.loads(docker_engine.docker("version", "--format", "{{json .}}").stdout)
    assert version["Server"]["Version"].startswith("20.10")
    info = json.loads(docker_engine.docker("info", "--format", "{{json .}}").stdout)
    assert info["DockerRootDir"] == str(docker_engine.directory / "data")
    assert docker_engine.socket.parent == docker_engine.directory
    # Its containerd, too, keeps its socket in the engine's directory.
    assert (docker_engine.directory / "exec/containerd/containerd.sock").is_socket()


@pytest.mark.buildkit
def test_the_base_image_runs_without_a_network(docker_engine: DockerEngine) -> None:
    ran = docker_engine.docker(
        "run", "--network", "none", "--rm", docker_engine.base_image, "busybox", "echo", "hi"
    )
    assert ran.stdout == b"hi\n"


@pytest.mark.buildkit
def test_the_base_image_has_the_applets(docker_engine: DockerEngine) -> None:
    script = 'for a in "$@"; do test -x "/bin/$a" && echo "$a $(readlink "/bin/$a")"; done'
    ran = docker_engine.docker(
        "run", "--network", "none", "--rm", docker_engine.base_image,
        "sh", "-c", script, "sh", *APPLETS,
    )  # fmt: skip
    assert ran.stdout.decode().splitlines() == [f"{applet} busybox" for applet in APPLETS]
    piped = docker_engine.docker(
        "run", "--network", "none", "--rm", docker_engine.base_image,
        "sh", "-c", "/bin/printf 'a\\nb\\n' | /bin/wc -l && dd bs=3 count=1 </dev/zero | wc -c",
    )  # fmt: skip
    assert piped.stdout.split() == [b"2", b"3"]


def test_a_missing_dockerd_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "DOCKERD", Path("/nonexistent/dockerd"))
    with pytest.raises(EngineUnavailable) as unavailable, running_engine():
        pass
    assert str(unavailable.value) == (
        "/nonexistent/dockerd is missing: install Debian's docker.io (make install does)"
    )


def test_a_dockerd_that_exits_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    failing = tmp_path / "dockerd"
    failing.write_text("#!/bin/sh\necho 'failed to start daemon: no luck' >&2\nexit 3\n")
    failing.chmod(0o755)
    monkeypatch.setattr(engine_module, "DOCKERD", failing)
    with pytest.raises(EngineUnavailable) as unavailable, running_engine():
        pass
    assert str(unavailable.value) == (
        "dockerd exited with status 3 while starting: failed to start daemon: no luck"
    )


def test_not_root_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module.os, "geteuid", lambda: 1000)
    with pytest.raises(EngineUnavailable) as unavailable, running_engine():
        pass
    assert str(unavailable.value) == "dockerd needs root, and the tests do not run as root"
