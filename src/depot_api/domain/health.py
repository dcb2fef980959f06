"""Readiness: whether this process can serve calls now (what a load balancer asks)."""

from __future__ import annotations

from depot_api.domain.errors import as_domain_error
from depot_api.store.errors import StoreUnavailable
from depot_api.store.interface import Reachable


class Health:
    def __init__(self, store: Reachable) -> None:
        self._store = store

    async def check(self) -> None:
        """Raise Unavailable unless the database is reachable and migrated."""
        try:
            await self._store.ping()
        except StoreUnavailable as e:
            raise as_domain_error(e) from None
