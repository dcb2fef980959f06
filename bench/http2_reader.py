"""What the front door's passive HTTP/2 reader costs by itself: the CPU time to read a build's
bytes as the splice hands them over, without any network or daemon.

The traffic is shaped like a build's (tests/test_build_status.py has the same frames): HPACK
header blocks for a Session, a Status and a Solve stream, then the context as 16 KiB DATA
frames on the Session stream (skipped: not followed), fed in the splice's 256 KiB chunks; and
the other way, Status messages of 1 KiB on the Status stream (followed: each one is cut out and
kept). Prints MB/s for each direction and the CPU seconds per GB.

    python -m bench.http2_reader [--mb 200]
"""

from __future__ import annotations

import argparse
import time

import hpack

from depot_api.agent.http2_reader import SOLVE, STATUS, ConnectionReader

_CHUNK = 1 << 18
_FRAME = 1 << 14
MB = 10**6


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def _request(encoder: hpack.Encoder, stream: int, path: str, body: bytes) -> bytes:
    headers = encoder.encode(
        [(":method", "POST"), (":scheme", "https"), (":path", path), ("te", "trailers")]
    )
    message = b"\x00" + len(body).to_bytes(4, "big") + body
    return _frame(1, 0x4, stream, headers) + _frame(0, 0, stream, message)


def traffic(megabytes: int) -> tuple[bytes, bytes]:
    client, daemon = hpack.Encoder(), hpack.Encoder()
    up = _request(client, 1, "/moby.buildkit.v1.Control/Session", b"")
    up += _request(client, 3, STATUS, b"\x0a\x03ref")
    up += _request(client, 5, SOLVE, b"\x0a\x03ref")
    body = bytes(_FRAME)
    up += _frame(0, 0, 1, body) * (megabytes * MB // _FRAME)
    down = _frame(1, 0x4, 3, daemon.encode([(":status", "200")]))
    message = b"\x00" + (1024).to_bytes(4, "big") + bytes(1024)
    down += _frame(0, 0, 3, message) * (megabytes * MB // len(message) // 10)
    return up, down


def cpu_seconds(feed: object, data: bytes) -> float:
    assert callable(feed)
    started = time.process_time()
    for at in range(0, len(data), _CHUNK):
        feed(data[at : at + _CHUNK])
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="the context's size (MB)")
    args = parser.parse_args()
    up, down = traffic(args.mb)
    kept: list[bytes] = []
    reader = ConnectionReader(lambda ref, path: None, lambda ref, message: kept.append(message))
    up_seconds = cpu_seconds(reader.from_client, up)
    down_seconds = cpu_seconds(reader.from_daemon, down)
    assert not reader.lost, reader.lost
    print(
        f"client→daemon, {len(up) / MB:.0f} MB of context in 16 KiB DATA frames (skipped): "
        f"{up_seconds:.3f} CPU s, {len(up) / MB / up_seconds:.0f} MB/s, "
        f"{up_seconds / (len(up) / 1e9):.2f} CPU s per GB"
    )
    print(
        f"daemon→client, {len(down) / MB:.0f} MB of Status messages of 1 KiB ({len(kept)} kept): "
        f"{down_seconds:.3f} CPU s, {len(down) / MB / down_seconds:.0f} MB/s"
    )


if __name__ == "__main__":
    main()
