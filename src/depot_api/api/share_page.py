"""The shared build page: GET /share/<secret>, server-rendered HTML, read-only, no sign-in.

The link is a secret: Referrer-Policy no-referrer (pages.py) keeps it out of the Referer of
anything the page links to, and an unknown link and a stopped one get the very same 404.
"""

from __future__ import annotations

from depot_api.api.asgi import Send
from depot_api.api.pages import render, send_page
from depot_api.api.public_url import SHARE_PATH
from depot_api.api.timeline import timeline_of
from depot_api.domain.builds import duration_seconds
from depot_api.domain.shares import Shares


class SharePage:
    def __init__(self, shares: Shares) -> None:
        self._shares = shares

    async def page(self, path: str, send: Send) -> None:
        view = await self._shares.view(path.removeprefix(SHARE_PATH))
        if view is None:
            await self.not_found(send)
            return
        html = render(
            "shared_build.html",
            view=view,
            timeline=timeline_of(view),
            duration=duration_seconds(view.build),
        )
        await send_page(send, 200, html)

    async def not_found(self, send: Send) -> None:
        await send_page(send, 404, render("not_found.html"))
