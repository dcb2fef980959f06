"""One server per address: `depot-api serve` refuses a port that anything else holds.

The workers listen with SO_REUSEPORT so that they share the port, and the kernel lets any
process of the same user join such a port: a second server started on it would join the first
and the two would split the clients between their databases. So before it starts anything, the
supervisor checks the address with a plain bind (no SO_REUSEPORT), which fails if anything
listens there, another depot-api's workers included. SO_REUSEADDR on that bind lets a server
start again right after one stopped, while the old connections are in TIME_WAIT.

Two servers started at the same moment could both pass the check before either listens, so
each also holds a lock named after its address for its whole life: a Linux abstract socket,
which needs no file and goes away with the process, however it ends.

Port 0 (any free port) needs neither: the kernel never hands out a port that another socket
listens on, SO_REUSEPORT or not.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from depot_api.server.errors import ServeError


@contextmanager
def claim_address(host: str, port: int) -> Iterator[None]:
    """Hold host:port for this server while the block runs, or raise ServeError."""
    if port == 0:
        yield
        return
    with _lock(host, port):
        _check_free(host, port)
        yield


@contextmanager
def _lock(host: str, port: int) -> Iterator[None]:
    if sys.platform != "linux":  # no abstract sockets: the check alone
        yield
        return
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0depot-api serve {host}:{port}")
    except OSError as e:
        lock.close()
        if e.errno == errno.EADDRINUSE:
            raise ServeError(
                f"port {port} on {host} is already in use by another depot-api server; "
                "stop it or choose another --port"
            ) from None
        raise
    try:
        yield
    finally:
        lock.close()


def _check_free(host: str, port: int) -> None:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ServeError(
                    f"port {port} on {host} is already in use; "
                    "stop what listens there or choose another --port"
                ) from None
            raise ServeError(f"cannot listen on {host}:{port}: {e.strerror}") from None
