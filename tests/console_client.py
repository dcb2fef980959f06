"""A small browser for the console in tests: it keeps cookies, sends forms as a browser does
(urlencoded, with an Origin), and finds a page's form token. Redirects are not followed, so a
test sees each one."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlencode

from pyqwest import Client, FullResponse

BASE = "http://test"
_CSRF = re.compile(r'name="csrf" value="([^"]*)"')


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    set_cookies: list[str]
    text: str

    @property
    def location(self) -> str:
        return self.headers.get("location", "")

    def csrf(self) -> str:
        found = _CSRF.search(self.text)
        assert found, f"no form token on this page:\n{self.text[:2000]}"
        return found.group(1)


@dataclass
class ConsoleBrowser:
    http: Client
    cookies: dict[str, str] = field(default_factory=dict)
    origin: str | None = BASE

    async def get(self, path: str) -> Response:
        response = await self.http.get(f"{BASE}{path}", headers=self._headers())
        return self._kept(response)

    async def post(
        self,
        path: str,
        form: dict[str, str],
        *,
        content_type: str = "application/x-www-form-urlencoded",
        origin: str | None = "",
    ) -> Response:
        headers = self._headers()
        headers["content-type"] = content_type
        sent_origin = self.origin if origin == "" else origin
        if sent_origin is not None:
            headers["origin"] = sent_origin
        response = await self.http.post(
            f"{BASE}{path}", headers=headers, content=urlencode(form).encode()
        )
        return self._kept(response)

    async def sign_in(self, token: str) -> Response:
        form = await self.get("/console/sign-in")
        assert form.status == 200, form.text
        signed_in = await self.post(
            "/console/sign-in", {"csrf": form.csrf(), "token": token, "next": "/console/"}
        )
        assert signed_in.status == 303, signed_in.text
        return signed_in

    def _headers(self) -> dict[str, str]:
        headers = {"host": "test", "accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return headers

    def _kept(self, response: FullResponse) -> Response:
        status = response.status
        raw = response.headers
        set_cookies = list(raw.getall("set-cookie"))
        for cookie in set_cookies:
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in cookie:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        headers = {k.lower(): v for k, v in raw.items()}
        text = response.content.decode()
        return Response(status, headers, set_cookies, text)
