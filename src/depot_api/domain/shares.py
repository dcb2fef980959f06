"""Shared build links: a URL that shows one build read-only to anyone who has it.

The link's secret is 32 random bytes (URL-safe base64): unguessable, so the link is the only
credential. The store keeps its SHA-256, which a page view looks up, and the secret sealed with
the server's secret key, so that ShareBuild again gives the same link back while a copy of the
database alone holds no usable link (docs/decisions.md, "Shared build links"). Every page view
reads the database: StopSharingBuild takes effect at once, in every process.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import datetime

from depot_api.domain.builds import Builds
from depot_api.domain.insights import BuildView, Insights, StepView
from depot_api.domain.principal import Principal
from depot_api.domain.secretbox import SecretBox
from depot_api.models import Build, BuildShare
from depot_api.store.interface import ShareStore
from depot_api.times import to_micros

SECRET_BYTES = 32
# What a shared page shows at most: steps, and lines of each step's log (the rest is noted).
VIEW_STEPS = 1000
VIEW_LINES_PER_STEP = 1000
# A secret as ShareBuild makes them: 43 URL-safe base64 characters (no padding).
_SECRET_LENGTH = 43
_SECRET_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


# What the shared page shows (the console's build page shows the same view).
SharedStep = StepView
SharedBuildView = BuildView


class Shares:
    def __init__(
        self,
        share_store: ShareStore,
        builds: Builds,
        insights: Insights,
        box: SecretBox,
        *,
        now: Callable[[], datetime],
    ) -> None:
        self._store = share_store
        self._builds = builds
        self._insights = insights
        self._box = box
        self._now = now

    async def share(self, principal: Principal, build_id: str) -> str:
        """The secret of the build's share link: the one it has, or a new one."""
        build = await self._shareable(principal, build_id)
        secret = secrets.token_urlsafe(SECRET_BYTES)
        share = await self._store.share(
            build.id,
            BuildShare(secret_hash(secret), self._box.seal(secret)),
            to_micros(self._now()),
        )
        return self._box.open(share.sealed_secret)

    async def stop(self, principal: Principal, build_id: str) -> None:
        """End the build's share link (a build not shared: nothing to do, and no error)."""
        build = await self._shareable(principal, build_id)
        await self._store.stop(build.id)

    async def is_shared(self, principal: Principal, build_id: str) -> bool:
        """Whether the build has a share link now. Only that: the link itself is ShareBuild's
        answer (a page that only shows the build must not carry the secret)."""
        build = await self._shareable(principal, build_id)
        return await self._store.is_shared(build.id)

    async def shared_build(self, secret: str) -> Build | None:
        """The build shared under this secret; None for anything else (a link never made,
        stopped, mistyped or of a deleted project: all alike, so none tells the others)."""
        if len(secret) != _SECRET_LENGTH or not _SECRET_ALPHABET.issuperset(secret):
            return None
        return await self._store.shared_build(secret_hash(secret))

    async def view(self, secret: str) -> SharedBuildView | None:
        """What the shared page shows: the build, its counters, its steps with their logs;
        None when the secret shares nothing (see shared_build)."""
        build = await self.shared_build(secret)
        if build is None:
            return None
        return await self._insights.view_of(build, VIEW_STEPS, VIEW_LINES_PER_STEP)

    async def _shareable(self, principal: Principal, build_id: str) -> Build:
        # The callers who may read the build (GetBuild) may share it.
        return await self._builds.get(principal, build_id)


def secret_hash(secret: str) -> str:
    """What the store keeps of a secret: SHA-256 is enough for 256 random bits (no password
    stretching needed: there is nothing to guess from)."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()
