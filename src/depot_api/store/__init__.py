"""Persistence: SQLite and PostgreSQL behind one interface per aggregate.

    interface.py   the Protocols the domain uses, with their contracts (start here)
    opening.py     Store (the aggregates together) and open_store, the one way to open it
    orgs.py        organizations, users, memberships, tokens
    projects.py    projects, cache generations, project CAs
    builds.py      builds, health and machine waits, status reports
    machines.py    machines, bindings, build endpoints (and the lock order)
    connections.py client connections to machines: admission's facts, the agents' reports
    trust_policies.py the CI identities (OIDC) that may create a project's builds
    insights.py    build steps, step logs and counters (the merge of BuildKit's status)
    usage.py       usage figures per project
    database.py    Database: read()/write() sessions for the aggregates, the engine that
                   migrates, and why a database cannot be used (explained_errors)
    driver.py      statements compiled once (Query), run on sqlite3 or asyncpg: the one
                   piece of plumbing between SQL and the databases
    urls.py        database URLs
    migrating.py   migrations and the start-up lock; migrations/ holds the revisions
    schema.py      the tables
    errors.py      what the store raises

The store imports neither the domain nor the transport: it persists models.py's records.
"""

from depot_api.store.opening import Store, open_store

__all__ = ["Store", "open_store"]
