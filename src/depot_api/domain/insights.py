"""Build insights: what BuildKit said about a build (its steps, their logs, cache hits and
errors), merged from the status messages the agents read at the machines' front doors or a
`depot-api report-build` upload, and read back step by step and line by line.

Merging is idempotent: a message is known by a hash of its bytes, and one merged before is
skipped, so a batch the agent sends again after an outage changes nothing. A call is checked
whole before anything is stored: a malformed message or a build the caller may not report
refuses the call and stores nothing.

Logs are kept as BuildKit sent them, in chunks of at most LOG_CHUNK_BYTES, under a per-build
cap; they are read back as lines (a line may span chunks), and expire with the retention
setting while the steps and counters stay.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from depot_api.domain.builds import Builds
from depot_api.domain.errors import InvalidField, NotFound, PermissionDenied
from depot_api.domain.ids import require_id
from depot_api.domain.machines import require_machine_token
from depot_api.domain.paging import resolve_page_size
from depot_api.domain.principal import Principal
from depot_api.models import (
    Build,
    BuildInsights,
    BuildStep,
    InsightsFlags,
    MergeLimits,
    Page,
    StatusMessage,
)
from depot_api.store.interface import InsightStore, MachineStore, MergeResult
from depot_api.times import to_micros

# Defaults of the settings (config.py).
DEFAULT_MAX_LOG_BYTES = 16 * 1024 * 1024
DEFAULT_LOG_RETENTION = timedelta(days=30)
# A stored log chunk holds at most this much: longer output is cut into several.
LOG_CHUNK_BYTES = 64 * 1024
# Bounds on one call.
MAX_BUILDS_PER_REPORT = 100
MAX_MESSAGES_PER_CALL = 10_000
# How many builds' logs one merge expires at most (the rest at the next merges).
EXPIRE_PER_MERGE = 20
# Paging.
STEP_PAGE_DEFAULT = 1000
STEP_PAGE_MAX = 10_000
LOG_PAGE_DEFAULT = 1000
LOG_PAGE_MAX = 10_000
# A page of log lines holds about this many bytes at most, whatever its page size.
LOG_PAGE_BYTES = 1024 * 1024
# Chunks read per database round trip while assembling a page of lines.
_CHUNKS_PER_READ = 16
_DIGEST_MAX = 255
_NAME_MAX = 4096
_ERROR_MAX = 65_536

CUT_MARKER_TEXT = (
    "[depot-api] the log was cut here: this build's logs reached their cap of {cap} bytes"
)


@dataclass(frozen=True, slots=True)
class ReportedBuild:
    """What a machine's agent read of one build since its last report."""

    build_id: str
    messages: Sequence[StatusMessage]
    flags: InsightsFlags


@dataclass(frozen=True, slots=True)
class LogLine:
    message: str
    at_us: int


@dataclass(frozen=True, slots=True)
class StepView:
    """A step as a page shows it: with the first lines of its log."""

    step: BuildStep
    lines: list[LogLine]
    # The log goes on past `lines` (a log page or the API has all of it).
    more_lines: bool


@dataclass(frozen=True, slots=True)
class BuildView:
    """A build as a page shows it (the shared link's, the console's): its counters, its steps
    with the first lines of their logs, and the time it was read (a running step's bar ends
    there)."""

    build: Build
    insights: BuildInsights | None
    steps: list[StepView]
    # The build has more steps than the page shows.
    more_steps: bool
    now_us: int


class Insights:
    def __init__(
        self,
        *,
        insight_store: InsightStore,
        machine_store: MachineStore,
        builds: Builds,
        max_log_bytes: int = DEFAULT_MAX_LOG_BYTES,
        log_retention: timedelta = DEFAULT_LOG_RETENTION,
        now: Callable[[], datetime],
    ) -> None:
        self._store = insight_store
        self._machine_store = machine_store
        self._builds = builds
        self._limits = MergeLimits(
            max_log_bytes=max_log_bytes,
            cut_marker=("\n" + CUT_MARKER_TEXT.format(cap=max_log_bytes) + "\n").encode(),
        )
        self._retention = log_retention
        self._now = now

    # Merging

    async def report_from_machine(
        self, principal: Principal, machine_id: str, reports: Sequence[ReportedBuild]
    ) -> list[MergeResult]:
        """Merge what a machine's agent read of its builds. Every build must have been served
        by this machine (it held an endpoint on it at some time); NotFound for a machine that
        is not the caller's, PermissionDenied for a build it did not serve: the whole call is
        refused before anything is stored."""
        require_machine_token(principal)
        require_id(machine_id, "machine_id")
        if len(reports) > MAX_BUILDS_PER_REPORT:
            raise InvalidField(
                "builds", f"holds {len(reports)} builds; send at most {MAX_BUILDS_PER_REPORT}"
            )
        total = 0
        for index, report in enumerate(reports):
            require_id(report.build_id, f"builds[{index}].build_id")
            if report.flags.dropped < 0:
                raise InvalidField(f"builds[{index}].dropped", "must not be negative")
            total += len(report.messages)
        _require_message_count(total, "builds[].status_responses")
        machine = await self._machine_store.get_machine(machine_id)
        if machine is None or machine.token_id != principal.token_id:
            raise NotFound(f"machine {machine_id} not found; register again")
        builds: list[Build] = []
        for report in reports:
            build = await self._store.build_served_by(report.build_id, machine_id)
            if build is None:
                raise PermissionDenied(
                    f"build {report.build_id} was not served by machine {machine_id}"
                )
            builds.append(build)
        results = [
            await self._merge(build, report.messages, report.flags)
            for build, report in zip(builds, reports, strict=True)
        ]
        await self._expire_old_logs()
        return results

    async def upload(
        self, principal: Principal, build_id: str, messages: Sequence[StatusMessage]
    ) -> MergeResult:
        """Merge status messages of a build run on BuildKit elsewhere (report-build), sent by
        any caller that may drive the build (its build token above all)."""
        _require_message_count(len(messages), "status_responses")
        build = await self._builds.get(principal, build_id)
        result = await self._merge(build, messages, InsightsFlags())
        await self._expire_old_logs()
        return result

    async def _merge(
        self, build: Build, messages: Sequence[StatusMessage], flags: InsightsFlags
    ) -> MergeResult:
        return await self._store.merge(
            build.id,
            project_id=build.project_id,
            build_created_us=build.created_us,
            messages=[_bounded(m) for m in messages],
            flags=flags,
            limits=self._limits,
            now_us=to_micros(self._now()),
        )

    async def _expire_old_logs(self) -> None:
        await self._store.expire_logs(
            keep_since_us=to_micros(self._now() - self._retention), limit=EXPIRE_PER_MERGE
        )

    # Reading

    async def steps(
        self,
        principal: Principal,
        project_id: str,
        build_id: str,
        page_size: int | None,
        page_token: str | None,
    ) -> Page[BuildStep]:
        build = await self._readable(principal, project_id, build_id)
        return await self.steps_of(build, page_size, page_token)

    async def steps_of(
        self, build: Build, page_size: int | None, page_token: str | None
    ) -> Page[BuildStep]:
        """The steps of a build the caller may read (its reach checked already)."""
        limit = resolve_page_size(page_size, default=STEP_PAGE_DEFAULT, maximum=STEP_PAGE_MAX)
        after = _decode_token(page_token, _STEP_TOKEN, 1)[0] if page_token else -1
        rows = await self._store.list_steps(build.id, after=after, limit=limit + 1)
        if self._logs_expired(build):
            rows = [replace(step, has_logs=False) for step in rows]
        if len(rows) <= limit:
            return Page(rows, "")
        return Page(rows[:limit], _encode_token(_STEP_TOKEN, rows[limit - 1].position))

    async def step_logs(
        self,
        principal: Principal,
        project_id: str,
        build_id: str,
        digest: str,
        page_size: int | None,
        page_token: str | None,
    ) -> Page[LogLine]:
        """The step's output as lines, in order: each line with the time BuildKit gave the
        output it began in. A page ends at page_size lines or about LOG_PAGE_BYTES."""
        build = await self._readable(principal, project_id, build_id)
        return await self.step_logs_of(build, digest, page_size, page_token)

    async def step_logs_of(
        self, build: Build, digest: str, page_size: int | None, page_token: str | None
    ) -> Page[LogLine]:
        """A step's lines of a build the caller may read (its reach checked already)."""
        if not digest:
            raise InvalidField("build_step_digest", "is required")
        limit = resolve_page_size(page_size, default=LOG_PAGE_DEFAULT, maximum=LOG_PAGE_MAX)
        seq, offset = _decode_token(page_token, _LOG_TOKEN, 2) if page_token else (0, 0)
        step = await self._store.get_step(build.id, digest[:_DIGEST_MAX])
        if step is None:
            raise NotFound(f"build {build.id} has no step {digest[:80]}")
        if not step.has_logs or self._logs_expired(build):
            return Page([], "")
        reader = _LineReader(limit)
        while not reader.full:
            chunks = await self._store.read_log(
                build.id, step.digest, from_seq=seq, limit=_CHUNKS_PER_READ
            )
            if not chunks:
                break
            for chunk in chunks:
                reader.feed(chunk.seq, chunk.at_us, chunk.data[offset:], offset)
                offset = 0
                if reader.full:
                    break
            seq = chunks[-1].seq + 1
        lines, resume = reader.finish()
        if resume is None:
            return Page(lines, "")
        # Is there anything at the resume point? (A page that ends with the log ends here.)
        rest = await self._store.read_log(build.id, step.digest, from_seq=resume[0], limit=2)
        if not any(c.seq > resume[0] or len(c.data) > resume[1] for c in rest):
            return Page(lines, "")
        return Page(lines, _encode_token(_LOG_TOKEN, *resume))

    async def step_of(self, build: Build, digest: str) -> BuildStep:
        """One step of a build the caller may read (its reach checked already)."""
        require_digest(digest, "build_step_digest")
        step = await self._store.get_step(build.id, digest)
        if step is None:
            raise NotFound(f"build {build.id} has no step {digest[:80]}")
        if step.has_logs and self._logs_expired(build):
            step = replace(step, has_logs=False)
        return step

    async def view_of(self, build: Build, max_steps: int, lines_per_step: int) -> BuildView:
        """What a build's page shows: its counters, its first max_steps steps, and the first
        lines_per_step lines of each one's log (a build the caller may read)."""
        now_us = to_micros(self._now())
        counters = (await self.counters([build])).get(build.id)
        page = await self.steps_of(build, max_steps, None)
        steps = []
        for step in page.items:
            lines: list[LogLine] = []
            more = False
            if step.has_logs:
                log = await self.step_logs_of(build, step.digest, lines_per_step, None)
                lines, more = log.items, bool(log.next_page_token)
            steps.append(StepView(step, lines, more))
        return BuildView(build, counters, steps, bool(page.next_page_token), now_us)

    async def counters(self, builds: Sequence[Build]) -> dict[str, BuildInsights]:
        """The insights counters of these builds (those that have any), by build ID."""
        return await self._store.insights([b.id for b in builds])

    async def _readable(self, principal: Principal, project_id: str, build_id: str) -> Build:
        build = await self._builds.get(principal, build_id)
        if project_id and project_id != build.project_id:
            # The build is not in the project named: as for any build out of reach.
            raise NotFound(f"build {build_id} not found in project {project_id}")
        return build

    def _logs_expired(self, build: Build) -> bool:
        return build.created_us < to_micros(self._now() - self._retention)


def _require_message_count(count: int, field: str) -> None:
    if count > MAX_MESSAGES_PER_CALL:
        raise InvalidField(
            field, f"holds {count} status messages; send at most {MAX_MESSAGES_PER_CALL} per call"
        )


def _bounded(message: StatusMessage) -> StatusMessage:
    """The message with its texts within their bounds and its logs cut into chunks."""
    if all(len(piece.data) <= LOG_CHUNK_BYTES for piece in message.logs) and all(
        len(v.name) <= _NAME_MAX and len(v.error) <= _ERROR_MAX for v in message.vertexes
    ):
        return message
    logs = tuple(
        replace(piece, data=piece.data[start : start + LOG_CHUNK_BYTES])
        for piece in message.logs
        for start in range(0, max(len(piece.data), 1), LOG_CHUNK_BYTES)
    )
    vertexes = tuple(
        replace(v, name=v.name[:_NAME_MAX], error=v.error[:_ERROR_MAX]) for v in message.vertexes
    )
    return replace(message, vertexes=vertexes, logs=logs)


def require_digest(digest: str, field: str) -> None:
    """A vertex digest as BuildKit writes them (algorithm:hex), within the column's bound."""
    if not digest:
        raise InvalidField(field, "is required")
    if len(digest) > _DIGEST_MAX or _DIGEST.fullmatch(digest) is None:
        raise InvalidField(field, f"is not a digest such as sha256:…, got {digest[:80]!r}")


_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[A-Za-z0-9=_-]+")


class _LineReader:
    """Lines from a step's chunks, fed in order. A line is cut at LOG_CHUNK_BYTES (so one
    line never holds more), and a page at `limit` lines or about LOG_PAGE_BYTES."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lines: list[LogLine] = []
        self._bytes = 0
        self._current = bytearray()
        self._current_at: int | None = None
        # Where the next line begins: (chunk seq, byte offset).
        self._resume: tuple[int, int] | None = None

    @property
    def full(self) -> bool:
        return len(self._lines) >= self._limit or self._bytes >= LOG_PAGE_BYTES

    def feed(self, seq: int, at_us: int, data: bytes, base: int) -> None:
        start = 0
        while start < len(data) and not self.full:
            if self._current_at is None:
                self._current_at = at_us
            end = data.find(b"\n", start)
            stop = len(data) if end == -1 else end
            self._current += data[start:stop]
            start = stop if end == -1 else end + 1
            if end != -1 or len(self._current) >= LOG_CHUNK_BYTES:
                self._emit()
            if self.full:
                self._resume = (seq, base + start) if start < len(data) else (seq + 1, 0)

    def _emit(self) -> None:
        text = bytes(self._current).rstrip(b"\r").decode("utf-8", errors="replace")
        assert self._current_at is not None
        self._lines.append(LogLine(text, self._current_at))
        self._bytes += len(self._current)
        self._current = bytearray()
        self._current_at = None

    def finish(self) -> tuple[list[LogLine], tuple[int, int] | None]:
        """The page's lines, and where the next page begins (None: the log ended)."""
        if self.full:
            return self._lines, self._resume
        if self._current_at is not None:
            self._emit()
        return self._lines, None


# The kinds of page token (a word, not a secret).
_STEP_TOKEN = "s1"  # noqa: S105
_LOG_TOKEN = "l1"  # noqa: S105


def _encode_token(kind: str, *numbers: int) -> str:
    raw = ":".join([kind, *map(str, numbers)]).encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_token(token: str | None, kind: str, count: int) -> tuple[int, ...]:
    try:
        raw = base64.urlsafe_b64decode((token or "") + "=" * (-len(token or "") % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    parts = raw.split(":")
    if (
        len(parts) != count + 1
        or parts[0] != kind
        or not all(p.isdigit() and len(p) <= 18 for p in parts[1:])
    ):
        raise InvalidField("page_token", "is not a page token returned by this listing")
    return tuple(int(p) for p in parts[1:])
