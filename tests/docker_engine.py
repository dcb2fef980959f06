"""A private Docker Engine for the tests: the real BuildKit they build on.

Debian's Docker Engine (20.10) embeds BuildKit and serves it on its API socket. The tests start
their own dockerd, once per session, with everything in one temporary directory: data root,
exec root (where dockerd keeps its containerd's socket and state), API socket, pid file and log.
It changes nothing in the machine's network (no bridge, no iptables, no forwarding), so builds
and containers run with `--network none`. No registry is reachable, so the base image is made
here from Debian's static busybox and imported.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil

DOCKERD = Path("/usr/sbin/dockerd")
# Debian's client, by its path: another docker client may come first on PATH.
DOCKER = Path("/usr/bin/docker")
BUSYBOX = Path("/bin/busybox")
BASE_IMAGE = "depot-api-test-base:latest"
APPLETS = (
    "sh", "echo", "cat", "ls", "mkdir", "touch", "sleep", "test", "[", "true", "false",
    "printf", "wc", "head", "tail", "dd", "rm", "cp", "mv", "ln", "chmod", "env", "grep",
    "sed", "id", "uname", "find", "sort", "seq", "tr",
)  # fmt: skip
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
# A unix socket path must fit in 108 bytes; the longest dockerd makes under its directory is
# containerd's debug socket, exec/containerd/containerd-debug.sock.
LONGEST_SOCKET_SUFFIX = len("/exec/containerd/containerd-debug.sock")
SOCKET_PATH_LIMIT = 107
HOW_TO_DESELECT = 'deselect these tests with -m "not buildkit"'


class EngineUnavailable(Exception):
    """dockerd cannot run here; str() is one line saying why."""


@dataclass(frozen=True)
class DockerEngine:
    """A running private dockerd."""

    directory: Path
    socket: Path
    base_image: str
    log: Path
    pid: int

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def docker(
        self, *args: str, input: bytes | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[bytes]:
        """Run Debian's `docker -H <this engine> ARGS…`; raises CalledProcessError on failure."""
        return subprocess.run(
            [str(DOCKER), "-H", self.host, *args],
            input=input,
            capture_output=True,
            check=True,
            timeout=timeout,
            env=_client_environment(self.directory),
        )

    def log_tail(self, lines: int = 20) -> str:
        return _tail(self.log, lines)


@contextmanager
def running_engine() -> Iterator[DockerEngine]:
    """Start a private dockerd, import the base image, yield; stop it and remove everything."""
    _check_machine()
    directory = Path(tempfile.mkdtemp(prefix="depot-dockerd-"))
    if len(str(directory)) + LONGEST_SOCKET_SUFFIX > SOCKET_PATH_LIMIT:
        shutil.rmtree(directory)
        raise EngineUnavailable(
            f"the temporary directory {directory} is too long for dockerd's unix sockets; "
            "set TMPDIR to a shorter one"
        )
    log = directory / "dockerd.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        process = _start(directory, log)
        engine = DockerEngine(
            directory=directory,
            socket=directory / "docker.sock",
            base_image=BASE_IMAGE,
            log=log,
            pid=process.pid,
        )
        _wait_until_answering(engine, process)
        _import_base_image(engine)
        yield engine
    finally:
        if process is not None:
            if process.poll() is None:
                _remove_containers(engine)
            _stop(process, directory)
        _unmount_under(directory)
        shutil.rmtree(directory, ignore_errors=True)


def _check_machine() -> None:
    for path, package in (
        (DOCKERD, "docker.io"),
        (DOCKER, "docker.io"),
        (BUSYBOX, "busybox-static"),
    ):
        if not os.access(path, os.X_OK):
            raise EngineUnavailable(
                f"{path} is missing: install Debian's {package} (make install does)"
            )
    if os.geteuid() != 0:
        raise EngineUnavailable("dockerd needs root, and the tests do not run as root")


def _client_environment(directory: Path) -> dict[str, str]:
    """The environment without the caller's Docker settings, and a client config of its own."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    environment["DOCKER_CONFIG"] = str(directory / "client")
    return environment


def _start(directory: Path, log: Path) -> subprocess.Popen[bytes]:
    config = directory / "daemon.json"
    # An empty configuration, so the machine's /etc/docker/daemon.json plays no part.
    config.write_text("{}\n")
    (directory / "client").mkdir()
    with log.open("wb") as output:
        return subprocess.Popen(
            [
                str(DOCKERD),
                "--config-file",
                str(config),
                "--data-root",
                str(directory / "data"),
                "--exec-root",
                str(directory / "exec"),
                "--pidfile",
                str(directory / "dockerd.pid"),
                "-H",
                f"unix://{directory / 'docker.sock'}",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--ip-forward=false",
                "--ip-masq=false",
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=_client_environment(directory),
            # Its own session: a ^C at the terminal reaches pytest, which stops it in order.
            start_new_session=True,
        )


def _wait_until_answering(engine: DockerEngine, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        code = process.poll()
        if code is not None:
            raise EngineUnavailable(
                f"dockerd exited with status {code} while starting: {_last_line(engine.log)}"
            )
        if _pings(engine.socket):
            return
        if time.monotonic() > deadline:
            raise EngineUnavailable(
                f"dockerd did not answer /_ping within {START_TIMEOUT:g} s; "
                f"its log ends:\n{engine.log_tail()}"
            )
        time.sleep(0.05)


def _pings(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(2)
            connection.connect(str(path))
            connection.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answer = b""
            while chunk := connection.recv(4096):
                answer += chunk
    except OSError:
        return False
    return answer.startswith(b"HTTP/1.") and answer.split(b" ", 2)[1:2] == [b"200"]


def base_image_tar() -> bytes:
    """A root file system of busybox and its applets' links, as an uncompressed tar."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, mode in (("bin", 0o755), ("etc", 0o755), ("root", 0o700), ("tmp", 0o1777)):
            entry = tarfile.TarInfo(name)
            entry.type = tarfile.DIRTYPE
            entry.mode = mode
            tar.addfile(entry)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    return buffer.getvalue()


def _import_base_image(engine: DockerEngine) -> None:
    try:
        engine.docker(
            "import",
            "--change",
            "ENV PATH=/bin",
            "--change",
            'CMD ["sh"]',
            "-",
            engine.base_image,
            input=base_image_tar(),
        )
    except subprocess.CalledProcessError as error:
        message = error.stderr.decode(errors="replace").strip().replace("\n", " ")
        raise EngineUnavailable(f"docker import of the base image failed: {message}") from None


def _remove_containers(engine: DockerEngine) -> None:
    """Kill what tests left running: dockerd would give each container 10 s to stop."""
    with suppress(subprocess.SubprocessError):
        listed = engine.docker("ps", "--all", "--quiet", timeout=STOP_TIMEOUT).stdout.split()
        if listed:
            engine.docker("rm", "--force", *(c.decode() for c in listed), timeout=STOP_TIMEOUT)


def _stop(process: subprocess.Popen[bytes], directory: Path) -> None:
    """Stop dockerd, then anything it left running from its directory (containerd, shims)."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    leftovers = _processes_using(directory)
    for leftover in leftovers:
        with suppress(psutil.NoSuchProcess):
            leftover.terminate()
    _, alive = psutil.wait_procs(leftovers, timeout=STOP_TIMEOUT)
    for leftover in alive:
        with suppress(psutil.NoSuchProcess):
            leftover.kill()
    psutil.wait_procs(alive, timeout=STOP_TIMEOUT)


def _processes_using(directory: Path) -> list[psutil.Process]:
    """Processes started for this engine: their command line names its directory (containerd
    its config there, each shim its containerd socket there)."""
    found = []
    for candidate in psutil.process_iter(["cmdline"]):
        command = candidate.info["cmdline"] or []
        if candidate.pid != os.getpid() and any(str(directory) in arg for arg in command):
            found.append(candidate)
    return found


def _unmount_under(directory: Path) -> None:
    """dockerd mounts its data root and each container's overlay; a hard stop can leave them."""
    mounts = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == str(directory) or point.startswith(f"{directory}/"):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _last_line(path: Path) -> str:
    tail = _tail(path, 1)
    return tail.strip() or "(its log is empty)"
