"""The crash loop: SIGKILL the server under CreateBuild/FinishBuild load, restart it, again and
again, then check over the API that every acknowledged write survived.

    python -m campaigns.crash_loop --backend sqlite --kills 20 --seconds-between-kills 5
    python -m campaigns.crash_loop --self-check   # the checker against wrong records, no server

A call is *acknowledged* when it got a complete HTTP 200 answer; one that got no complete answer
(the server died under it) is *unknown*: it may or may not have taken effect. What must hold
afterwards (`check`):

- every acknowledged CreateBuild's build exists;
- every acknowledged FinishBuild's build is in exactly the outcome that was sent;
- a build whose FinishBuild is unknown is running, or ended with the outcome that was sent;
- a build the clients never learned of (its CreateBuild was unknown) is running: nobody
  finished it;
- every restarted server answers /readyz with 200, and (SQLite) the file passes
  `PRAGMA integrity_check` after every kill.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import random
import secrets
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from campaigns.server import HOST, START_TIMEOUT_S, ServerProcess

POSTGRES = os.environ.get("CRASH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")

CREATE_PROJECT = "/depot.core.v1.ProjectService/CreateProject"
CREATE_BUILD = "/depot.build.v1.BuildService/CreateBuild"
FINISH_BUILD = "/depot.build.v1.BuildService/FinishBuild"
LIST_BUILDS = "/depot.build.v1.BuildService/ListBuilds"
GET_BUILD_REAL = "/depot.core.v1.BuildService/GetBuild"

RUNNING = "BUILD_STATUS_RUNNING"
# The outcome a client sends → the status the seed's view (ListBuilds) and the real view
# (depot.core.v1 GetBuild) must show once it is acknowledged.
SEED_STATUS = {"success": "BUILD_STATUS_FINISHED", "error": "BUILD_STATUS_FAILED"}
REAL_STATUS = {"success": "STATUS_SUCCESS", "error": "STATUS_FAILED"}

# Answers that say "not now" rather than "no": the call may be tried again.
RETRYABLE = {"unavailable", "internal", "unknown", "deadline_exceeded", "resource_exhausted"}
# How often a client sends one FinishBuild before it gives up (it stays unknown).
FINISH_ATTEMPTS = 5
CALL_TIMEOUT_S = 15.0


# --- What the clients were told, and the check ------------------------------------------------


@dataclass
class Ledger:
    """Every answer the clients got. Shared by the client threads, under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    created: set[str] = field(default_factory=set)  # acknowledged CreateBuild
    finished: dict[str, str] = field(default_factory=dict)  # acknowledged FinishBuild → outcome
    finish_unknown: dict[str, str] = field(default_factory=dict)  # sent, never acknowledged
    unknown_creates: int = 0
    unknown_calls: int = 0  # every call without a complete answer, retries included
    finish_retried: int = 0  # finishes acknowledged when sent again after an unanswered one
    refused: Counter[str] = field(default_factory=Counter)  # non-200 answers, by method and code
    violations: list[str] = field(default_factory=list)

    def refused_creates(self) -> int:
        return sum(n for key, n in self.refused.items() if key.startswith("CreateBuild"))


def check(ledger: Ledger, listed: dict[str, str]) -> list[str]:
    """The violations of the property, given every build of the project and its seed status."""
    problems: list[str] = []
    for build_id in sorted(ledger.created):
        status = listed.get(build_id)
        if status is None:
            problems.append(f"acknowledged build {build_id} is missing")
            continue
        if build_id in ledger.finished:
            want = SEED_STATUS[ledger.finished[build_id]]
            if status != want:
                problems.append(f"build {build_id}: finish acknowledged as {want}, found {status}")
        elif build_id in ledger.finish_unknown:
            allowed = {RUNNING, SEED_STATUS[ledger.finish_unknown[build_id]]}
            if status not in allowed:
                problems.append(f"build {build_id}: finish unknown, found {status}")
        elif status != RUNNING:
            problems.append(f"build {build_id}: never finished, found {status}")
    strangers = {b: s for b, s in listed.items() if b not in ledger.created}
    for build_id, status in sorted(strangers.items()):
        if status != RUNNING:
            problems.append(
                f"build {build_id}: its creation was never acknowledged, found {status}"
            )
    # Builds nobody was told about can only come from CreateBuild calls without an answer (or
    # with one that was not 200): any more would be builds that came from nowhere.
    possible = ledger.unknown_creates + ledger.refused_creates()
    if len(strangers) > possible:
        problems.append(f"{len(strangers)} unacknowledged builds, at most {possible} possible")
    return problems


def self_check() -> int:
    """Show that `check` catches wrong records: each broken listing must be reported, and the
    right one must not. No server involved."""
    ledger = Ledger()
    ledger.created = {"a", "b", "c", "d"}
    ledger.finished = {"a": "success", "b": "error"}
    ledger.finish_unknown = {"c": "success"}
    ledger.unknown_creates = 1
    good = {"a": SEED_STATUS["success"], "b": SEED_STATUS["error"], "c": RUNNING, "d": RUNNING}
    cases = {
        "a correct listing": (good, False),
        "an unknown finish that took effect": ({**good, "c": SEED_STATUS["success"]}, False),
        "a build from an unanswered CreateBuild": ({**good, "x": RUNNING}, False),
        "a lost acknowledged build": ({k: v for k, v in good.items() if k != "d"}, True),
        "a lost acknowledged finish": ({**good, "a": RUNNING}, True),
        "the wrong outcome": ({**good, "b": SEED_STATUS["success"]}, True),
        "an unknown finish with another outcome": ({**good, "c": SEED_STATUS["error"]}, True),
        "a build finished that nobody finished": ({**good, "d": SEED_STATUS["error"]}, True),
        "a stranger that is finished": ({**good, "x": SEED_STATUS["success"]}, True),
        "more strangers than unanswered calls": ({**good, "x": RUNNING, "y": RUNNING}, True),
    }
    failures = 0
    for name, (listing, broken) in cases.items():
        found = check(ledger, listing)
        ok = bool(found) == broken
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {found or 'no violation'}")
    return 1 if failures else 0


# --- Calls -------------------------------------------------------------------------------------


Answer = tuple[int, dict[str, Any]]


def call(port: int, path: str, body: dict[str, Any], token: str) -> Answer | None:
    """One Connect unary JSON call on a fresh connection; None when no complete answer came
    (refused, reset, cut short or timed out): the server may or may not have acted on it."""
    connection = http.client.HTTPConnection(HOST, port, timeout=CALL_TIMEOUT_S)
    try:
        connection.request(
            "POST",
            path,
            json.dumps(body),
            {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        connection.close()


def ready(port: int) -> bool:
    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        connection.request("GET", "/readyz")
        response = connection.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


# --- The server --------------------------------------------------------------------------------


def wait_ready(server: ServerProcess) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready(server.port):
            return True
        time.sleep(0.1)
    return False


class Endpoint:
    """Where the clients send calls: the current server's port, while it is up."""

    def __init__(self) -> None:
        self.port = 0
        self.up = threading.Event()
        self.stop = threading.Event()

    def wait(self) -> int | None:
        """The port once the server is up; None once the load is to end."""
        while not self.stop.is_set():
            if self.up.wait(0.05):
                return self.port
        return None


# --- The load ----------------------------------------------------------------------------------


def client(endpoint: Endpoint, ledger: Ledger, project_id: str, org_token: str, seed: int) -> None:
    """CreateBuild, then FinishBuild with a random outcome (with the build's own token), until
    told to stop."""
    rng = random.Random(seed)  # noqa: S311 (load, not secrets)
    while (port := endpoint.wait()) is not None:
        answer = call(port, CREATE_BUILD, {"projectId": project_id}, org_token)
        if answer is None:
            with ledger.lock:
                ledger.unknown_creates += 1
                ledger.unknown_calls += 1
            continue
        status, body = answer
        if status != 200:
            with ledger.lock:
                ledger.refused[f"CreateBuild {body.get('code')}"] += 1
            continue
        build_id, build_token = body["buildId"], body["buildToken"]
        outcome = rng.choice(("success", "error"))
        with ledger.lock:
            ledger.created.add(build_id)
            ledger.finish_unknown[build_id] = outcome
        finish(endpoint, ledger, build_id, build_token, outcome)


def finish(endpoint: Endpoint, ledger: Ledger, build_id: str, token: str, outcome: str) -> None:
    """FinishBuild until it is acknowledged. After a crash the same outcome is sent again, as a
    real client would: the server must answer OK whether or not the first attempt took effect
    (and the build token, from before the crash, must still work)."""
    request: dict[str, Any] = {"buildId": build_id}
    request[outcome] = {} if outcome == "success" else {"error": "crash loop"}
    unanswered = False
    for _ in range(FINISH_ATTEMPTS):
        port = endpoint.wait()
        if port is None:
            return  # the load is over: this finish stays unknown
        answer = call(port, FINISH_BUILD, request, token)
        if answer is None:
            unanswered = True
            with ledger.lock:
                ledger.unknown_calls += 1
            continue
        status, body = answer
        with ledger.lock:
            if status == 200:
                del ledger.finish_unknown[build_id]
                ledger.finished[build_id] = outcome
                ledger.finish_retried += unanswered
                return
            code = body.get("code")
            ledger.refused[f"FinishBuild {code}"] += 1
            if code not in RETRYABLE:
                # Not found, a refused token or a different outcome: the server forgot the
                # build, its token, or what happened to it.
                ledger.violations.append(
                    f"FinishBuild({outcome}) of acknowledged build {build_id}: {code} "
                    f"{body.get('message', '')}"
                )
                return
        time.sleep(0.1)


# --- The campaign ------------------------------------------------------------------------------


@dataclass
class Figures:
    kills: int = 0
    seconds: float = 0.0
    builds_listed: int = 0
    restart_seconds: list[float] = field(default_factory=list)  # kill → ready again


def run(backend: str, kills: int, between: float, workers: int, seed: int) -> int:
    started = time.monotonic()
    rng = random.Random(seed)  # noqa: S311 (kill times, not secrets)
    data_dir = Path(tempfile.mkdtemp(prefix="depot-api-crash-"))
    ledger = Ledger()
    figures = Figures()
    try:
        with postgres_database(backend == "postgresql") as database:
            server = ServerProcess(
                data_dir, "--log-level", "warning", *(("--database", database) if database else ())
            )
            try:
                campaign(server, ledger, figures, rng, kills, between, workers, sqlite=not database)
            except RuntimeError as error:
                # A server that does not come back, or an API that stopped answering: fail.
                ledger.violations.append(str(error))
                print("".join(server.output[-30:]), end="", file=sys.stderr)
            finally:
                server.stop()
            if backend == "sqlite":
                integrity(data_dir, ledger, "after the last clean stop")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    figures.seconds = time.monotonic() - started
    report(backend, ledger, figures)
    return 1 if ledger.violations else 0


def campaign(
    server: ServerProcess,
    ledger: Ledger,
    figures: Figures,
    rng: random.Random,
    kills: int,
    between: float,
    workers: int,
    *,
    sqlite: bool,
) -> None:
    server.start()
    org_token = server.org_token()
    if not wait_ready(server):
        raise RuntimeError("the first server never became ready")
    answer = call(
        server.port,
        CREATE_PROJECT,
        {"name": f"crash-{secrets.token_hex(4)}", "regionId": "us-east-1"},
        org_token,
    )
    if answer is None or answer[0] != 200:
        raise RuntimeError(f"CreateProject failed: {answer}")
    project_id = answer[1]["project"]["projectId"]

    endpoint = Endpoint()
    endpoint.port = server.port
    endpoint.up.set()
    threads = [
        threading.Thread(
            target=client, args=(endpoint, ledger, project_id, org_token, rng.randrange(2**32))
        )
        for _ in range(workers)
    ]
    for thread in threads:
        thread.start()
    try:
        for number in range(1, kills + 1):
            # Jitter, so the kills land at every point of a call's life.
            time.sleep(between * rng.uniform(0.5, 1.5))
            endpoint.up.clear()
            killed = time.monotonic()
            server.kill()
            figures.kills += 1
            if number == kills:
                # The last kill, too, comes under load; no call is made after it.
                endpoint.stop.set()
            if sqlite:
                integrity(server.data_dir, ledger, f"after kill {number}")
            server.start()
            if not wait_ready(server):
                raise RuntimeError(f"the server restarted after kill {number} never became ready")
            figures.restart_seconds.append(time.monotonic() - killed)
            endpoint.port = server.port
            if number < kills:
                endpoint.up.set()
            print(
                f"kill {number}/{kills}: {len(ledger.created)} builds acknowledged so far, "
                f"ready again in {figures.restart_seconds[-1]:.1f} s",
                flush=True,
            )
    finally:
        endpoint.stop.set()
        for thread in threads:
            thread.join()

    listed = list_builds(server.port, project_id, org_token)
    figures.builds_listed = len(listed)
    ledger.violations += check(ledger, listed)
    ledger.violations += check_real_view(server.port, ledger, org_token, rng)


def list_builds(port: int, project_id: str, token: str) -> dict[str, str]:
    """Every build of the project and its status, through the seed's ListBuilds."""
    builds: dict[str, str] = {}
    page_token = ""
    while True:
        request = {"projectId": project_id, "pageSize": 1000, "pageToken": page_token}
        answer = call(port, LIST_BUILDS, request, token)
        if answer is None or answer[0] != 200:
            raise RuntimeError(f"ListBuilds failed: {answer}")
        for build in answer[1].get("builds", []):
            builds[build["buildId"]] = build["status"]
        page_token = answer[1].get("nextPageToken", "")
        if not page_token:
            return builds


def check_real_view(port: int, ledger: Ledger, token: str, rng: random.Random) -> list[str]:
    """A sample of acknowledged finishes read one by one through Depot's own GetBuild."""
    problems: list[str] = []
    sample = rng.sample(sorted(ledger.finished), min(100, len(ledger.finished)))
    for build_id in sample:
        answer = call(port, GET_BUILD_REAL, {"buildId": build_id}, token)
        want = REAL_STATUS[ledger.finished[build_id]]
        got = answer[1].get("build", {}).get("status") if answer and answer[0] == 200 else answer
        if got != want:
            problems.append(f"GetBuild {build_id}: finish acknowledged as {want}, got {got}")
    return problems


def integrity(data_dir: Path, ledger: Ledger, when: str) -> None:
    """SQLite's own check of the file, read-only: the restart must be what recovers the WAL."""
    path = data_dir / "depot-api.sqlite3"
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = connection.execute("PRAGMA integrity_check").fetchall()
    finally:
        connection.close()
    if result != [("ok",)]:
        ledger.violations.append(f"integrity_check {when}: {result[:5]}")


@contextlib.contextmanager
def postgres_database(wanted: bool) -> Iterator[str | None]:
    """A fresh PostgreSQL database for this run, dropped afterwards (None for SQLite)."""
    if not wanted:
        yield None
        return
    name = f"depot_api_crash_{secrets.token_hex(4)}"
    asyncio.run(_on_postgres(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(_on_postgres(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _on_postgres(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def report(backend: str, ledger: Ledger, figures: Figures) -> None:
    outcomes = Counter(ledger.finished.values())
    restarts = figures.restart_seconds or [0.0]
    print(f"\ncrash loop on {backend}: {figures.kills} kills in {figures.seconds:.0f} s")
    print(
        f"  kill → ready again: {sum(restarts) / len(restarts):.1f} s on average, "
        f"{max(restarts):.1f} s at most"
    )
    print(f"  acknowledged CreateBuild: {len(ledger.created)}")
    print(
        f"  acknowledged FinishBuild: {len(ledger.finished)} "
        f"({outcomes['success']} success, {outcomes['error']} error)"
    )
    print(
        f"  unknown: {ledger.unknown_calls} calls without an answer; at the end "
        f"{ledger.unknown_creates} creates and {len(ledger.finish_unknown)} finishes "
        "not acknowledged"
    )
    print(f"  finishes acknowledged when sent again after a kill: {ledger.finish_retried}")
    print(f"  builds listed at the end: {figures.builds_listed}")
    if ledger.refused:
        print(f"  non-200 answers: {dict(sorted(ledger.refused.items()))}")
    print(f"  violations: {len(ledger.violations)}")
    for violation in ledger.violations[:20]:
        print(f"    {violation}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m campaigns.crash_loop", description=__doc__)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument(
        "--seconds-between-kills", type=float, default=5.0, help="on average (jittered ±50%%)"
    )
    parser.add_argument("--workers", type=int, default=4, help="concurrent client loops")
    parser.add_argument("--seed", type=int, default=None, help="for the kill times and outcomes")
    parser.add_argument(
        "--self-check", action="store_true", help="check the checker on wrong records, then exit"
    )
    args = parser.parse_args()
    if args.self_check:
        sys.exit(self_check())
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    print(f"crash loop: {args.backend}, {args.kills} kills, --seed {seed}", flush=True)
    sys.exit(run(args.backend, args.kills, args.seconds_between_kills, args.workers, seed))


if __name__ == "__main__":
    main()
