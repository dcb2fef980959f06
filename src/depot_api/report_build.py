"""`depot-api report-build`: a build run on BuildKit elsewhere (a CI runner's own) gets
insights from its `--progress=rawjson` log, uploaded with the build's token.

The whole log is read and checked first, line by line, without holding it (standard input is
spooled to a temporary file to be read twice); one bad line refuses the upload, naming every
bad line (up to a bound), and nothing is sent. Then it is sent in batches, each merged whole by
the server. The server's merge is idempotent: an upload cut short (the server away, the
runner stopped) is sent again whole, and what had arrived is not merged twice.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from connectrpc.errors import ConnectError

from depot_api.gen.depotapi.insights.v1 import insights_pb as pb
from depot_api.gen.depotapi.insights.v1.insights_connect import BuildInsightsServiceClientSync
from depot_api.rawjson import RawJsonError, parse_line

# A batch stays well under the server's default limit on a request (4 MiB).
BATCH_BYTES = 2 * 1024 * 1024
BATCH_MESSAGES = 5000
# A line bigger than this cannot be sent in one request.
LINE_MAX_BYTES = 3 * 1024 * 1024
# Bad lines named at most, before the rest are only counted.
ERRORS_SHOWN = 20
_SPOOL_IN_MEMORY = 8 * 1024 * 1024
_CALL_TIMEOUT_MS = 60_000


class ReportFailed(Exception):
    """The upload cannot be done: the message says why, in lines for the user."""

    def __init__(self, message: str, *, usage: bool) -> None:
        super().__init__(message)
        # True: the input is wrong (nothing was sent). False: the server or the network.
        self.usage = usage


@dataclass(frozen=True)
class Reported:
    messages: int
    merged: int
    repeated: int


def report_build(server: str, build_id: str, token: str, source: str) -> Reported:
    """Check the log at source (a path, or "-" for standard input), then upload it."""
    with _opened(source) as log:
        name = "standard input" if source == "-" else source
        count = _check(log, name)
        log.seek(0)
        return _upload(server, build_id, token, log, count)


def _opened(source: str) -> IO[bytes]:
    if source != "-":
        try:
            return Path(source).open("rb")
        except OSError as e:
            raise ReportFailed(f"cannot read {source}: {e.strerror}", usage=True) from None
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
    while chunk := sys.stdin.buffer.read(1024 * 1024):
        spool.write(chunk)
    spool.seek(0)
    return spool


def _lines(log: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(log, 1):
        if line.strip():
            yield number, line


def _check(log: IO[bytes], name: str) -> int:
    errors: list[str] = []
    bad = count = 0
    for number, line in _lines(log):
        problem = None
        if len(line) > LINE_MAX_BYTES:
            problem = f"line {number}: is longer than {LINE_MAX_BYTES} bytes"
        else:
            try:
                parse_line(line, number)
            except RawJsonError as e:
                problem = str(e)
        if problem is None:
            count += 1
            continue
        bad += 1
        if len(errors) < ERRORS_SHOWN:
            errors.append(f"{name} {problem}")
    if bad:
        more = f"\n… and {bad - len(errors)} more bad lines" if bad > len(errors) else ""
        raise ReportFailed(
            "\n".join(errors) + more + f"\nnothing was uploaded: {bad} of "
            f"{bad + count} lines are not BuildKit rawjson progress",
            usage=True,
        )
    if count == 0:
        raise ReportFailed(f"{name} holds no progress lines: nothing to upload", usage=True)
    return count


def _batches(log: IO[bytes]) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    size = 0
    for number, line in _lines(log):
        data = parse_line(line, number).to_binary()
        if batch and (size + len(data) > BATCH_BYTES or len(batch) >= BATCH_MESSAGES):
            yield batch
            batch, size = [], 0
        batch.append(data)
        size += len(data)
    if batch:
        yield batch


def _upload(server: str, build_id: str, token: str, log: IO[bytes], count: int) -> Reported:
    merged = repeated = sent = 0
    headers = {"authorization": f"Bearer {token}"}
    # The blocking client: a command with one call at a time needs no event loop (and the
    # asynchronous client's runtime can abort the process as it exits).
    with BuildInsightsServiceClientSync(server, timeout_ms=_CALL_TIMEOUT_MS) as client:
        for batch in _batches(log):
            try:
                answer = client.upload_build_status(
                    pb.UploadBuildStatusRequest(build_id=build_id, status_responses=batch),
                    headers=headers,
                )
            except ConnectError as e:
                raise ReportFailed(
                    f"the server refused the upload ({e.code.name.lower()}): {e.message}\n"
                    f"{sent} of {count} status messages had been sent; run the same command "
                    "again to send the rest (what arrived is not merged twice)",
                    usage=False,
                ) from None
            except OSError as e:
                raise ReportFailed(
                    f"cannot reach {server}: {e}\n{sent} of {count} status messages had been "
                    "sent; run the same command again to send the rest",
                    usage=False,
                ) from None
            sent += len(batch)
            merged += answer.merged
            repeated += answer.repeated
    return Reported(messages=count, merged=merged, repeated=repeated)
