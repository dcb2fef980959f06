"""Build insights over SQL (the InsightStore of store.interface): steps merged field by field,
logs kept in order in bounded chunks under a per-build cap, counters, and log retention.

A merge is one write transaction that first takes the build's insights row (created on first
use, then locked FOR UPDATE on PostgreSQL; SQLite's writers are serialised already), so that
concurrent merges into one build (a retried batch answered by another server process, an
upload beside the agent's reports) apply one after the other. Everything the merge writes
is decided in Python from the rows it read under that lock, and written with multi-row
statements: a batch of thousands of steps costs a few statements, not thousands.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    case,
    delete,
    exists,
    false,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from depot_api.models import (
    Build,
    BuildInsights,
    BuildStep,
    InsightsFlags,
    LogChunk,
    MergeLimits,
    StatusMessage,
    VertexUpdate,
)
from depot_api.store import schema as t
from depot_api.store.builds import BUILD_COLUMNS, build_of_row
from depot_api.store.database import Database
from depot_api.store.driver import Query, Row, Session, bound
from depot_api.store.interface import InsightStore, MergeResult

i, s, lg, seen = t.build_insights, t.build_steps, t.build_step_logs, t.build_status_seen

# Rows per multi-row statement: well under both databases' limits on bound parameters.
_ROWS_PER_STATEMENT = 400
# Bytes of log data per multi-row insert: bounds what one statement holds in memory.
_LOG_BYTES_PER_STATEMENT = 1024 * 1024

INTERNAL_PREFIX = "[internal]"

T = TypeVar("T")


def _batches(items: Sequence[T], size: int = _ROWS_PER_STATEMENT) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _create_row(dialect: Any) -> Query:
    return Query(
        dialect.insert(i)
        .values(
            build_id=bindparam("build_id"),
            project_id=bindparam("project_id"),
            build_created_at=bindparam("build_created_at"),
            steps=0,
            log_bytes=0,
            log_bytes_cut=0,
            dropped=0,
            side_listener=False,
            logs_expired=False,
            updated_at=bindparam("now"),
        )
        .on_conflict_do_nothing(index_elements=[i.c.build_id])
    )


_CREATE = {"postgresql": _create_row(postgresql), "sqlite": _create_row(sqlite)}
# SQLite's dialect writes no FOR UPDATE (its write transaction holds the database's lock).
_LOCK = Query(select(i).where(i.c.build_id == bindparam("build_id")).with_for_update())
_INSIGHTS = Query(select(i).where(i.c.build_id == bindparam("build_id")))
_SAVE = Query(
    update(i)
    .where(i.c.build_id == bindparam("build_id"))
    .values(
        steps=bindparam("steps"),
        log_bytes=bindparam("log_bytes"),
        log_bytes_cut=bindparam("log_bytes_cut"),
        dropped=bindparam("dropped"),
        side_listener=bindparam("side_listener"),
        updated_at=bindparam("now"),
    )
)
_UPDATE_STEP = Query(
    update(s)
    .where(s.c.build_id == bindparam("b_build_id"), s.c.digest == bindparam("b_digest"))
    .values(
        name=bindparam("name"),
        inputs=bindparam("inputs"),
        started_at=bindparam("started_at"),
        completed_at=bindparam("completed_at"),
        cached=bindparam("cached"),
        error=bindparam("error"),
        log_chunks=bindparam("log_chunks"),
        log_cut=bindparam("log_cut"),
    )
)

_INSERT_STEP = Query(
    insert(s).values(
        bound(
            "build_id",
            "digest",
            "project_id",
            "position",
            "name",
            "inputs",
            "started_at",
            "completed_at",
            "cached",
            "error",
            "log_chunks",
            "log_cut",
        )
    )
)
_INSERT_CHUNK = Query(insert(lg).values(bound("build_id", "digest", "seq", "at", "stream", "data")))
_INSERT_SEEN = Query(insert(seen).values(bound("build_id", "message_key")))
_SEEN_OF = Query(
    select(seen.c.message_key).where(
        seen.c.build_id == bindparam("build_id"),
        seen.c.message_key.in_(bindparam("keys", expanding=True)),
    )
)

_STEP_COLUMNS = (
    s.c.build_id,
    s.c.digest,
    s.c.position,
    s.c.name,
    s.c.inputs,
    s.c.started_at,
    s.c.completed_at,
    s.c.cached,
    s.c.error,
    s.c.log_chunks,
    s.c.log_cut,
)
_STEPS_OF = Query(
    select(*_STEP_COLUMNS).where(
        s.c.build_id == bindparam("build_id"), s.c.digest.in_(bindparam("digests", expanding=True))
    )
)
_STEPS_PAGE = Query(
    select(*_STEP_COLUMNS, i.c.logs_expired)
    .join(i, i.c.build_id == s.c.build_id)
    .where(s.c.build_id == bindparam("build_id"), s.c.position > bindparam("after"))
    .order_by(s.c.position)
    .limit(bindparam("limit"))
)
_STEP = Query(
    select(*_STEP_COLUMNS, i.c.logs_expired)
    .join(i, i.c.build_id == s.c.build_id)
    .where(s.c.build_id == bindparam("build_id"), s.c.digest == bindparam("digest"))
)
_CHUNKS = Query(
    select(lg.c.seq, lg.c.at, lg.c.stream, lg.c.data)
    .where(
        lg.c.build_id == bindparam("build_id"),
        lg.c.digest == bindparam("digest"),
        lg.c.seq >= bindparam("from_seq"),
    )
    .order_by(lg.c.seq)
    .limit(bindparam("limit"))
)

# A build (of a live project) that held an endpoint on the machine, released or not.
_SERVED = Query(
    select(*BUILD_COLUMNS)
    .join(t.projects, t.projects.c.id == t.builds.c.project_id)
    .where(
        t.builds.c.id == bindparam("build_id"),
        t.projects.c.deleted_at.is_(None),
        exists().where(
            t.build_endpoints.c.build_id == t.builds.c.id,
            t.build_endpoints.c.machine_id == bindparam("machine_id"),
        ),
    )
)

# Retention: builds created before the bound whose logs are still kept, oldest first.
_EXPIRING = Query(
    select(i.c.build_id)
    .where(i.c.logs_expired == false(), i.c.build_created_at < bindparam("keep_since"))
    .order_by(i.c.build_created_at)
    .limit(bindparam("limit"))
)
_EXPIRE_LOGS = Query(delete(lg).where(lg.c.build_id == bindparam("build_id")))
_EXPIRE_SEEN = Query(delete(seen).where(seen.c.build_id == bindparam("build_id")))
_MARK_EXPIRED = Query(
    update(i).where(i.c.build_id == bindparam("build_id")).values(logs_expired=True)
)


def saved_us(step: Any) -> ColumnElement[Any]:
    """The duration of the latest uncached, successful run of the step's digest in its
    project that completed no later than the cached step did (docs/decisions.md)."""
    run = t.build_steps.alias("run")
    return (
        select(run.c.completed_at - run.c.started_at)
        .where(
            run.c.project_id == step.c.project_id,
            run.c.digest == step.c.digest,
            run.c.cached == false(),
            run.c.error.is_(None),
            run.c.started_at.is_not(None),
            run.c.completed_at.is_not(None),
            run.c.completed_at <= func.coalesce(step.c.completed_at, step.c.started_at),
        )
        .order_by(run.c.completed_at.desc())
        .limit(1)
        .scalar_subquery()
    )


def _counters() -> Any:
    counted = s.c.cached == true()
    saved = case(
        (
            and_(counted, s.c.name.not_like(INTERNAL_PREFIX + "%")),
            func.coalesce(saved_us(s), 0),
        ),
        else_=0,
    )
    return (
        select(
            s.c.build_id,
            func.count().label("total"),
            func.sum(case((counted, 1), else_=0)).label("cached"),
            func.sum(saved).label("saved"),
        )
        .where(s.c.build_id.in_(bindparam("build_ids", expanding=True)))
        .group_by(s.c.build_id)
    )


# Compiled once: GetBuild and every ListBuilds page read these (compiling them at each call
# cost GetBuild most of its speed).
_INSIGHTS_OF = Query(select(i).where(i.c.build_id.in_(bindparam("build_ids", expanding=True))))
_COUNTERS = Query(_counters())


@dataclass
class _Step:
    """A step's row as the merge changes it."""

    digest: str
    position: int
    name: str = ""
    inputs: str = ""
    started_at: int | None = None
    completed_at: int | None = None
    cached: bool = False
    error: str | None = None
    log_chunks: int = 0
    log_cut: bool = False
    is_new: bool = False
    changed: bool = False
    chunks: list[dict[str, Any]] = field(default_factory=list)

    def merge(self, v: VertexUpdate) -> None:
        """BuildKit resends a vertex whole as it changes; the merge keeps what any message
        said, the same whatever order messages arrive in: a name and inputs once given, the
        earliest start, the latest completion, cached once cached, the error once failed."""
        before = self._values()
        if v.name:
            self.name = v.name
        if v.inputs:
            self.inputs = "\n".join(v.inputs)
        if v.started_us is not None:
            self.started_at = (
                v.started_us if self.started_at is None else min(self.started_at, v.started_us)
            )
        if v.completed_us is not None:
            self.completed_at = (
                v.completed_us
                if self.completed_at is None
                else max(self.completed_at, v.completed_us)
            )
        self.cached = self.cached or v.cached
        if v.error:
            self.error = v.error
        self.changed = self.changed or self._values() != before

    def add_chunk(self, build_id: str, at_us: int, stream: int, data: bytes) -> None:
        self.chunks.append(
            {
                "build_id": build_id,
                "digest": self.digest,
                "seq": self.log_chunks,
                "at": at_us,
                "stream": stream,
                "data": data,
            }
        )
        self.log_chunks += 1
        self.changed = True

    def _values(self) -> tuple[Any, ...]:
        return (
            self.name,
            self.inputs,
            self.started_at,
            self.completed_at,
            self.cached,
            self.error,
        )


class SqlInsightStore(InsightStore):
    def __init__(self, database: Database) -> None:
        self._db = database
        self._create = _CREATE[database.dialect_name]

    async def merge(
        self,
        build_id: str,
        *,
        project_id: str,
        build_created_us: int,
        messages: Sequence[StatusMessage],
        flags: InsightsFlags,
        limits: MergeLimits,
        now_us: int,
    ) -> MergeResult:
        async with self._db.write() as session:
            await session.run(
                self._create,
                build_id=build_id,
                project_id=project_id,
                build_created_at=build_created_us,
                now=now_us,
            )
            row = await session.one(_LOCK, build_id=build_id)
            assert row is not None
            fresh = await self._unseen(session, build_id, messages)
            steps = await self._steps(session, build_id, fresh)
            next_position = int(row["steps"])
            log_bytes, log_bytes_cut = int(row["log_bytes"]), int(row["log_bytes_cut"])
            expired = bool(row["logs_expired"])

            def step(digest: str) -> _Step:
                nonlocal next_position
                found = steps.get(digest)
                if found is None:
                    found = steps[digest] = _Step(digest, next_position, is_new=True)
                    next_position += 1
                return found

            for message in fresh:
                for vertex in message.vertexes:
                    step(vertex.digest).merge(vertex)
                for piece in message.logs:
                    target = step(piece.digest)
                    if expired or target.log_cut:
                        log_bytes_cut += len(piece.data)
                        continue
                    room = limits.max_log_bytes - log_bytes
                    kept = piece.data[: max(room, 0)]
                    if kept:
                        target.add_chunk(build_id, piece.at_us, piece.stream, kept)
                        log_bytes += len(kept)
                    if len(kept) < len(piece.data):
                        log_bytes_cut += len(piece.data) - len(kept)
                        target.add_chunk(build_id, piece.at_us, piece.stream, limits.cut_marker)
                        target.log_cut = True

            await self._write_steps(session, build_id, project_id, steps.values())
            await self._write_seen(session, build_id, [m.key for m in fresh])
            await session.run(
                _SAVE,
                build_id=build_id,
                steps=next_position,
                log_bytes=log_bytes,
                log_bytes_cut=log_bytes_cut,
                dropped=max(int(row["dropped"]), flags.dropped),
                side_listener=bool(row["side_listener"]) or flags.side_listener,
                now=now_us,
            )
        return MergeResult(merged=len(fresh), repeated=len(messages) - len(fresh))

    async def _unseen(
        self, session: Session, build_id: str, messages: Sequence[StatusMessage]
    ) -> list[StatusMessage]:
        """The messages not merged before (nor earlier in this batch), in order."""
        known: set[str] = set()
        keys = sorted({m.key for m in messages})
        for batch in _batches(keys):
            rows = await session.all(_SEEN_OF, build_id=build_id, keys=list(batch))
            known.update(r[0] for r in rows)
        fresh = []
        for message in messages:
            if message.key not in known:
                known.add(message.key)
                fresh.append(message)
        return fresh

    async def _steps(
        self, session: Session, build_id: str, messages: Iterable[StatusMessage]
    ) -> dict[str, _Step]:
        """The stored rows of the steps these messages speak of."""
        digests = sorted(
            {v.digest for m in messages for v in m.vertexes}
            | {piece.digest for m in messages for piece in m.logs}
        )
        found: dict[str, _Step] = {}
        for batch in _batches(digests):
            rows = await session.all(_STEPS_OF, build_id=build_id, digests=list(batch))
            for r in rows:
                found[r["digest"]] = _Step(
                    digest=r["digest"],
                    position=r["position"],
                    name=r["name"],
                    inputs=r["inputs"],
                    started_at=r["started_at"],
                    completed_at=r["completed_at"],
                    cached=bool(r["cached"]),
                    error=r["error"],
                    log_chunks=r["log_chunks"],
                    log_cut=bool(r["log_cut"]),
                )
        return found

    async def _write_steps(
        self, session: Session, build_id: str, project_id: str, steps: Iterable[_Step]
    ) -> None:
        new_rows, changed_rows, chunks = [], [], []
        for step in steps:
            chunks.extend(step.chunks)
            values = {
                "name": step.name,
                "inputs": step.inputs,
                "started_at": step.started_at,
                "completed_at": step.completed_at,
                "cached": step.cached,
                "error": step.error,
                "log_chunks": step.log_chunks,
                "log_cut": step.log_cut,
            }
            if step.is_new:
                new_rows.append(
                    {
                        "build_id": build_id,
                        "digest": step.digest,
                        "project_id": project_id,
                        "position": step.position,
                        **values,
                    }
                )
            elif step.changed:
                changed_rows.append({"b_build_id": build_id, "b_digest": step.digest, **values})
        await session.run_many(_INSERT_STEP, new_rows)
        await session.run_many(_UPDATE_STEP, changed_rows)
        # Chunks in groups of about a megabyte: what one driver call holds stays bounded.
        pending: list[dict[str, Any]] = []
        size = 0
        for chunk in chunks:
            pending.append(chunk)
            size += len(chunk["data"])
            if size >= _LOG_BYTES_PER_STATEMENT:
                await session.run_many(_INSERT_CHUNK, pending)
                pending, size = [], 0
        await session.run_many(_INSERT_CHUNK, pending)

    async def _write_seen(self, session: Session, build_id: str, keys: list[str]) -> None:
        await session.run_many(
            _INSERT_SEEN, [{"build_id": build_id, "message_key": k} for k in keys]
        )

    async def build_served_by(self, build_id: str, machine_id: str) -> Build | None:
        async with self._db.read() as session:
            row = await session.one(_SERVED, build_id=build_id, machine_id=machine_id)
        return None if row is None else build_of_row(row)

    async def list_steps(self, build_id: str, *, after: int, limit: int) -> list[BuildStep]:
        async with self._db.read() as session:
            rows = await session.all(_STEPS_PAGE, build_id=build_id, after=after, limit=limit)
        return [_step(r) for r in rows]

    async def get_step(self, build_id: str, digest: str) -> BuildStep | None:
        async with self._db.read() as session:
            row = await session.one(_STEP, build_id=build_id, digest=digest)
        return None if row is None else _step(row)

    async def read_log(
        self, build_id: str, digest: str, *, from_seq: int, limit: int
    ) -> list[LogChunk]:
        async with self._db.read() as session:
            rows = await session.all(
                _CHUNKS, build_id=build_id, digest=digest, from_seq=from_seq, limit=limit
            )
        return [LogChunk(r["seq"], r["at"], r["stream"], bytes(r["data"])) for r in rows]

    async def insights(self, build_ids: list[str]) -> dict[str, BuildInsights]:
        if not build_ids:
            return {}
        found: dict[str, BuildInsights] = {}
        async with self._db.read() as session:
            for batch in _batches(build_ids):
                rows = await session.all(_INSIGHTS_OF, build_ids=list(batch))
                if not rows:  # nothing was reported of these builds' steps
                    continue
                with_insights = [r["build_id"] for r in rows]
                counters = {
                    r["build_id"]: r for r in await session.all(_COUNTERS, build_ids=with_insights)
                }
                for r in rows:
                    counted = counters.get(r["build_id"])
                    found[r["build_id"]] = BuildInsights(
                        build_id=r["build_id"],
                        total_steps=int(counted["total"]) if counted else 0,
                        cached_steps=int(counted["cached"] or 0) if counted else 0,
                        saved_us=int(counted["saved"] or 0) if counted else 0,
                        log_bytes=int(r["log_bytes"]),
                        log_bytes_cut=int(r["log_bytes_cut"]),
                        dropped=int(r["dropped"]),
                        side_listener=bool(r["side_listener"]),
                        logs_expired=bool(r["logs_expired"]),
                    )
        return found

    async def expire_logs(self, *, keep_since_us: int, limit: int) -> list[str]:
        async with self._db.write() as session:
            rows = await session.all(_EXPIRING, keep_since=keep_since_us, limit=limit)
            expired = [r[0] for r in rows]
            for build_id in expired:
                await session.run(_EXPIRE_LOGS, build_id=build_id)
                await session.run(_EXPIRE_SEEN, build_id=build_id)
                await session.run(_MARK_EXPIRED, build_id=build_id)
        return expired


def _step(r: Row) -> BuildStep:
    return BuildStep(
        build_id=r["build_id"],
        digest=r["digest"],
        position=r["position"],
        name=r["name"],
        inputs=tuple(r["inputs"].split("\n")) if r["inputs"] else (),
        started_us=r["started_at"],
        completed_us=r["completed_at"],
        cached=bool(r["cached"]),
        error=r["error"],
        has_logs=r["log_chunks"] > 0 and not r["logs_expired"],
    )
