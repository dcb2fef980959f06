"""Shared build links through the in-process server: ShareBuild, the same link again,
StopSharingBuild (dead at once), the page itself (escaping, security headers, one 404 for every
link that shares nothing), and bad input. On SQLite and PostgreSQL (the api fixture)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from pyqwest import Client
from pyqwest.testing import ASGITransport

from depot_api.app import DepotAPI, create_app
from depot_api.config import Settings
from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.core.v1 import build_pb as core_pb
from depot_api.gen.depot.core.v1 import project_pb
from depot_api.gen.depot.core.v1.build_connect import BuildServiceClient as CoreBuildServiceClient
from depot_api.gen.depotapi.insights.v1 import insights_pb
from depot_api.gen.moby.buildkit.v1 import control_pb as c
from depot_api.startup import prepare

from ..conftest import InProcessAPI, bearer
from ..factories import new_build

STEP, OTHER = (f"sha256:{n * 64}" for n in "de")
HOSTILE_NAME = '[1/2] RUN echo <script>alert("step")</script>'
HOSTILE_LINE = "<img src=x onerror=alert(1)> and <script>alert('log')</script>"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
LINK = re.compile(r"^http://[^/]+/share/[A-Za-z0-9_-]{43}$")

STATUS = [
    c.StatusResponse(vertexes=[c.Vertex(digest=STEP, name=HOSTILE_NAME)]),
    c.StatusResponse(
        logs=[c.VertexLog(vertex=STEP, msg=f"first line\n{HOSTILE_LINE}\n".encode(), stream=1)]
    ),
    c.StatusResponse(vertexes=[c.Vertex(digest=OTHER, name="[2/2] COPY . /app", cached=True)]),
]


async def _build_with_insights(api: InProcessAPI) -> tuple[str, str]:
    """A build whose steps and logs were uploaded with its build token: (ID, build token)."""
    clients = api.clients()
    org = bearer(api.org_token)
    project = await clients.projects.create_project(
        project_pb.CreateProjectRequest(name="shared", region_id="us-east-1"), headers=org
    )
    created = await clients.builds.create_build(
        build_pb.CreateBuildRequest(project_id=project.project.project_id), headers=org
    )
    await clients.insights.upload_build_status(
        insights_pb.UploadBuildStatusRequest(
            build_id=created.build_id, status_responses=[m.to_binary() for m in STATUS]
        ),
        headers=bearer(created.build_token),
    )
    return created.build_id, created.build_token


async def _get(api: InProcessAPI, url: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    path = url.split("://", 1)[1].split("/", 1)[1]
    target = f"http://test/{path}"
    response = await (api.http.get(target) if method == "GET" else api.http.post(target))
    headers = {k.lower(): v for k, v in response.headers.items()}
    return response.status, headers, response.content.decode()


@pytest.mark.parametrize("protocol", ["connect-json", "grpc"])
async def test_share_the_same_link_again_and_stop(api: InProcessAPI, protocol: str) -> None:
    build_id, build_token = await _build_with_insights(api)
    clients = api.clients(protocol)
    org = bearer(api.org_token)
    shared = await clients.core_builds.share_build(
        core_pb.ShareBuildRequest(build_id=build_id), headers=org
    )
    assert LINK.match(shared.share_url), shared.share_url
    again = await clients.core_builds.share_build(
        core_pb.ShareBuildRequest(build_id=build_id), headers=bearer(build_token)
    )
    assert again.share_url == shared.share_url

    status, headers, html = await _get(api, shared.share_url)
    assert status == 200
    assert headers["content-security-policy"] == CSP
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"
    assert build_id in html
    # Attacker-controlled text is escaped, never markup.
    assert "&lt;script&gt;alert(&#34;step&#34;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<script" not in html and "<img" not in html
    assert "first line" in html and "cached" in html

    await clients.core_builds.stop_sharing_build(
        core_pb.StopSharingBuildRequest(build_id=build_id), headers=org
    )
    gone_status, gone_headers, gone_html = await _get(api, shared.share_url)
    never_status, never_headers, never_html = await _get(api, "http://x/share/" + "A" * 43)
    assert gone_status == never_status == 404
    assert gone_html == never_html  # no oracle: a stopped link looks like one never made
    assert gone_headers["content-security-policy"] == never_headers["content-security-policy"]
    # Stopping again is no error; sharing again makes a new link.
    await clients.core_builds.stop_sharing_build(
        core_pb.StopSharingBuildRequest(build_id=build_id), headers=org
    )
    renewed = await clients.core_builds.share_build(
        core_pb.ShareBuildRequest(build_id=build_id), headers=org
    )
    assert renewed.share_url != shared.share_url
    assert (await _get(api, renewed.share_url))[0] == 200


async def test_the_database_holds_no_usable_link(api: InProcessAPI) -> None:
    build_id, _ = await _build_with_insights(api)
    shared = await api.clients().core_builds.share_build(
        core_pb.ShareBuildRequest(build_id=build_id), headers=bearer(api.org_token)
    )
    secret = shared.share_url.rsplit("/", 1)[1]
    from sqlalchemy import select

    from depot_api.store.schema import build_shares

    async with api.app.domain.store.database.read() as session:
        rows = await session.all(select(build_shares))
    assert len(rows) == 1
    stored = " ".join(str(v) for v in rows[0])
    assert secret not in stored


@pytest.mark.parametrize(
    ("build_id", "code", "words"),
    [
        ("", Code.INVALID_ARGUMENT, "buildId is required"),
        ("not an id!", Code.INVALID_ARGUMENT, "buildId"),
        ("zzzzzzzzzz", Code.NOT_FOUND, "not found"),
    ],
)
async def test_bad_build_ids(api: InProcessAPI, build_id: str, code: Code, words: str) -> None:
    clients = api.clients()
    for call in (
        lambda: clients.core_builds.share_build(
            core_pb.ShareBuildRequest(build_id=build_id), headers=bearer(api.org_token)
        ),
        lambda: clients.core_builds.stop_sharing_build(
            core_pb.StopSharingBuildRequest(build_id=build_id), headers=bearer(api.org_token)
        ),
    ):
        with pytest.raises(ConnectError) as raised:
            await call()
        assert raised.value.code == code
        assert words in str(raised.value)


@pytest.mark.parametrize(
    "path",
    [
        "/share/",
        "/share/short",
        "/share/" + "A" * 43 + "/x",
        "/share/%3Cscript%3E",
        "/share/" + "é" * 43,
    ],
)
async def test_links_that_share_nothing_are_one_plain_404(api: InProcessAPI, path: str) -> None:
    status, headers, html = await _get(api, "http://test" + path)
    assert status == 404
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"] == CSP
    assert "Not found" in html and "script" not in html


async def test_pages_are_read_with_get(api: InProcessAPI) -> None:
    status, headers, _ = await _get(api, "http://test/share/" + "A" * 43, method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, css = await _get(api, "http://test/static/console.css")
    assert status == 200 and headers["content-type"] == "text/css; charset=utf-8"
    assert ".step" in css


async def test_the_link_is_on_the_public_url(settings: Settings) -> None:
    """--public-url is the base of the link (a proxy's address, say); and a link works in
    another process over the same database, and dies there at once when sharing stops."""
    public = replace(settings, public_url="https://depot.example.com/builds")
    org_token = await prepare(public)
    assert org_token is not None
    async with _app(public) as first, _app(public) as second:
        org = bearer(org_token)
        build_id, _ = await new_build(first.app.domain, org_token)
        shared = await first.core_builds.share_build(
            core_pb.ShareBuildRequest(build_id=build_id), headers=org
        )
        assert shared.share_url.startswith("https://depot.example.com/builds/share/")
        path = "/share/" + shared.share_url.rsplit("/", 1)[1]
        assert (await second.http.get(f"http://test{path}")).status == 200
        again = await second.core_builds.share_build(
            core_pb.ShareBuildRequest(build_id=build_id), headers=org
        )
        assert again.share_url == shared.share_url  # the same link, from any process
        await first.core_builds.stop_sharing_build(
            core_pb.StopSharingBuildRequest(build_id=build_id), headers=org
        )
        assert (await second.http.get(f"http://test{path}")).status == 404


async def test_a_deleted_projects_build_is_not_shown(api: InProcessAPI) -> None:
    clients = api.clients()
    org = bearer(api.org_token)
    build_id, _ = await _build_with_insights(api)
    shared = await clients.core_builds.share_build(
        core_pb.ShareBuildRequest(build_id=build_id), headers=org
    )
    assert (await _get(api, shared.share_url))[0] == 200
    build = await api.app.domain.store.builds.get_build(build_id)
    assert build is not None
    await clients.projects.delete_project(
        project_pb.DeleteProjectRequest(project_id=build.project_id), headers=org
    )
    status, _, html = await _get(api, shared.share_url)
    assert status == 404 and build_id not in html


@dataclass
class _Running:
    app: DepotAPI
    http: Client
    core_builds: CoreBuildServiceClient


@asynccontextmanager
async def _app(settings: Settings) -> AsyncIterator[_Running]:
    app = create_app(settings)
    async with ASGITransport(app) as transport:
        http = Client(transport)
        yield _Running(app, http, CoreBuildServiceClient("http://test", http_client=http))
