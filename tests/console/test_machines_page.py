"""The machines page through the in-process server, on SQLite and PostgreSQL: machines that
registered, heartbeat and reported connections through the real MachineService, as seen by
the organization whose project holds one, and by another organization."""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass

import pytest
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from depot_api.domain.endpoints import Active
from depot_api.domain.principal import Principal
from depot_api.gen.depotapi.machine.v1 import machine_pb as pb
from depot_api.models import Platform
from tests.conftest import Clients, InProcessAPI, bearer
from tests.console_client import ConsoleBrowser
from tests.factories import new_project

_NOW = int(time.time())
TROUBLE = "buildkitd exited: <script>alert('trouble')</script> & <img src=x onerror=alert(1)>"
PEER_A = "198.51.100.4:40312"
PEER_B = "203.0.113.9:50122"


@dataclass
class Scene:
    org_a_token: str
    org_b_token: str
    project_a: str
    build_a: str
    build_b: str
    bound_machine: str
    binding_id: str
    troubled_machine: str


async def _register(c: Clients, token: str, platform: pb.Platform, port: int) -> str:
    registered = await c.machines.register(
        pb.RegisterRequest(platform=platform, endpoint=f"127.0.0.1:{port}", capacity=1),
        headers=bearer(token),
    )
    return registered.machine_id


async def _heartbeat(
    c: Clients, token: str, machine_id: str, running: str, error: str = ""
) -> pb.HeartbeatResponse:
    return await c.machines.heartbeat(
        pb.HeartbeatRequest(
            machine_id=machine_id,
            running_binding_id=running,
            buildkit_ready=bool(running),
            disk_used_bytes=3 * 2**30 + 5 * 2**20,
            buildkit_error=error,
        ),
        headers=bearer(token),
    )


async def _bind(api: InProcessAPI, c: Clients, token: str, machine_id: str, admin: Principal,
                build_id: str) -> str:  # fmt: skip
    """Heartbeat until the build holds the machine; the binding's ID."""
    running = ""
    for _ in range(4):
        if isinstance(await api.app.domain.endpoints.poll(admin, build_id, Platform.AMD64), Active):
            return running
        for _ in range(2):
            answer = await _heartbeat(c, token, machine_id, running)
            if answer.desired and answer.desired.field == "assignment":
                running = answer.desired.value.binding_id
    raise AssertionError("the build got no machine")


def _report(connection_id: str, opened_ago: int, **fields: object) -> pb.ConnectionReport:
    values: dict[str, object] = {
        "connection_id": connection_id,
        "opened_at": Timestamp(seconds=_NOW - opened_ago),
        "closed_at": Timestamp(seconds=_NOW - opened_ago + 12, nanos=500_000_000),
    }
    values.update(fields)
    return pb.ConnectionReport(**values)  # type: ignore[arg-type]


async def _scene(api: InProcessAPI) -> Scene:
    domain = api.app.domain
    c = api.clients()
    admin_a = await domain.authenticator.authenticate(f"Bearer {api.org_token}")
    org_b = await domain.organizations.create("org-b")
    _, org_b_token = await domain.tokens.create_org_token(org_b.id)
    admin_b = await domain.authenticator.authenticate(f"Bearer {org_b_token}")
    project_a = await new_project(domain, admin_a, "web <app>")
    build_a, _ = await domain.builds.create(admin_a, project_a)
    build_b, _ = await domain.builds.create(admin_b, await new_project(domain, admin_b, "theirs"))

    _, token = await domain.tokens.create_machine_token("agents")
    bound = await _register(c, token, pb.Platform.AMD64, 2345)
    binding = await _bind(api, c, token, bound, admin_a, build_a.id)
    await c.machines.report_connections(
        pb.ReportConnectionsRequest(
            machine_id=bound,
            connections=[
                _report(
                    "c1", 60, build_id=build_a.id, binding_id=binding, peer=PEER_A,
                    admitted=True, bytes_from_client=81234, bytes_to_client=5_120_934,
                ),
                _report(
                    "c2", 50, build_id=build_b.id, binding_id=binding, peer=PEER_B,
                    admitted=False, refusal=f"build {build_b.id} is of another project than "
                    "this machine's",
                ),
                _report(
                    "c3", 40, peer="192.0.2.1:1", admitted=False,
                    refusal="the client does not speak TLS <script>alert('peer')</script>",
                ),
                _report(
                    "c4", 30, build_id="zzzzzzzzzz", binding_id=binding, peer="192.0.2.2:2",
                    admitted=False, refusal="no such build zzzzzzzzzz",
                ),
            ],
        ),
        headers=bearer(token),
    )  # fmt: skip
    troubled = await _register(c, token, pb.Platform.ARM64, 2346)
    await _heartbeat(c, token, troubled, "", TROUBLE)
    return Scene(
        org_a_token=api.org_token,
        org_b_token=org_b_token,
        project_a=project_a,
        build_a=build_a.id,
        build_b=build_b.id,
        bound_machine=bound,
        binding_id=binding,
        troubled_machine=troubled,
    )


async def _machines_page(api: InProcessAPI, token: str) -> str:
    browser = ConsoleBrowser(api.http)
    await browser.sign_in(token)
    page = await browser.get("/console/machines")
    assert page.status == 200, page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    return page.text


def _machine_card(page: str, machine_id: str) -> str:
    found = re.search(rf'<li class="card machine[^"]*" id="machine-{machine_id}">(.*?)</li>', page,
                      re.S)  # fmt: skip
    assert found, f"no card for machine {machine_id}:\n{page}"
    return found.group(1)


async def test_the_bound_organization_sees_its_project_and_builds(api: InProcessAPI) -> None:
    scene = await _scene(api)
    page = await _machines_page(api, scene.org_a_token)
    card = _machine_card(page, scene.bound_machine)
    assert f'<a href="/console/projects/{scene.project_a}">web &lt;app&gt;</a>' in card
    assert "amd64" in card and "active" in card and "ready" in card
    assert "3.0 GiB" in card  # 3 GiB and 5 MiB of cache
    assert "127.0.0.1:2345" in card
    # Its own build's connection, linked, with the client and the bytes each way.
    assert f'<a href="/console/builds/{scene.build_a}"><code>{scene.build_a}</code></a>' in card
    assert PEER_A in card and "79.3 KiB" in card and "4.9 MiB" in card and "12.5s" in card
    # Not its own: the other organization's build, a connection naming none, an unknown build.
    assert scene.build_b not in page and PEER_B not in page
    text = html.unescape(card)
    assert "another organization's build" in text
    assert "build … is of another project than this machine's" in text
    assert "none named" in card and "an unknown build" in card
    assert "zzzzzzzzzz" not in page and "no such build …" in card
    assert card.index(scene.build_a) > card.index("none named")  # newest first


async def test_another_organization_sees_the_machine_but_not_the_project(
    api: InProcessAPI,
) -> None:
    scene = await _scene(api)
    page = await _machines_page(api, scene.org_b_token)
    card = _machine_card(page, scene.bound_machine)
    assert "another organization's project" in card
    assert "web &lt;app&gt;" not in page and scene.project_a not in page
    assert "3.0 GiB" in card and "amd64" in card and "Last heartbeat" in card
    # Its own build's refused connection: linked, with its client and the whole refusal.
    assert f'<a href="/console/builds/{scene.build_b}">' in card and PEER_B in card
    assert f"build {scene.build_b} is of another project than this machine's" in html.unescape(card)
    # Org A's connection: when, how much and that it was admitted, but not whose or from where.
    assert scene.build_a not in page and PEER_A not in page and scene.binding_id not in page
    assert "79.3 KiB" in card and "admitted" in card


async def test_reported_text_is_escaped(api: InProcessAPI) -> None:
    scene = await _scene(api)
    for token in (scene.org_a_token, scene.org_b_token):
        page = await _machines_page(api, token)
        card = _machine_card(page, scene.troubled_machine)
        assert "BuildKit trouble" in card and "arm64" in card
        assert "&lt;script&gt;alert(&#39;trouble&#39;)&lt;/script&gt; &amp; &lt;img" in card
        assert "&lt;script&gt;alert(&#39;peer&#39;)&lt;/script&gt;" in page
        assert "<script>alert" not in page and "<img" not in page
        assert "idle: none bound" in card


async def test_no_machines_says_how_to_start_an_agent(api: InProcessAPI) -> None:
    page = await _machines_page(api, api.org_token)
    assert "No machines yet" in page
    assert "depot-api admin create-machine-token" in page and "depot-api agent --server" in page
    assert 'aria-current="page">Machines' in page


async def test_a_machine_without_connections_says_so(api: InProcessAPI) -> None:
    _, token = await api.app.domain.tokens.create_machine_token("agents")
    machine = await _register(api.clients(), token, pb.Platform.AMD64, 2400)
    card = _machine_card(await _machines_page(api, api.org_token), machine)
    assert "No connections in the last 7 days." in card and "idle: none bound" in card
    assert "0 B" in card


@pytest.mark.parametrize("path", ["/console/machines/", "/console/machines/x", "/console/machine"])
async def test_addresses_near_the_page_are_not_found(api: InProcessAPI, path: str) -> None:
    browser = ConsoleBrowser(api.http)
    await browser.sign_in(api.org_token)
    response = await browser.get(path)
    assert response.status == 404 and "Traceback" not in response.text


async def test_the_page_asks_to_sign_in_and_refuses_a_post(api: InProcessAPI) -> None:
    browser = ConsoleBrowser(api.http)
    response = await browser.get("/console/machines")
    assert response.status == 303
    assert response.location == "/console/sign-in?next=%2Fconsole%2Fmachines"
    await browser.sign_in(api.org_token)
    csrf = (await browser.get("/console/machines")).csrf()
    posted = await browser.post("/console/machines", {"csrf": csrf})
    assert posted.status == 405 and "read with GET" in posted.text


async def test_draining_machines_come_after_active_ones(api: InProcessAPI) -> None:
    c = api.clients()
    _, token = await api.app.domain.tokens.create_machine_token("agents")
    first = await _register(c, token, pb.Platform.AMD64, 2401)
    second = await _register(c, token, pb.Platform.AMD64, 2402)
    await api.app.domain.machines.drain(first)
    page = await _machines_page(api, api.org_token)
    assert 'class="state state-draining">draining' in _machine_card(page, first)
    assert page.index(f"machine-{second}") < page.index(f"machine-{first}")


async def test_a_member_of_both_organizations_sees_both(api: InProcessAPI) -> None:
    scene = await _scene(api)
    domain = api.app.domain
    both = await domain.organizations.create_user("both")
    admin_b = await domain.authenticator.authenticate(f"Bearer {scene.org_b_token}")
    admin_a = await domain.authenticator.authenticate(f"Bearer {scene.org_a_token}")
    for org_id in admin_a.org_ids | admin_b.org_ids:
        await domain.organizations.add_member(both.id, org_id)
    _, token = await domain.tokens.create_user_token(both.id)
    card = _machine_card(await _machines_page(api, token), scene.bound_machine)
    assert "web &lt;app&gt;" in card
    assert f'href="/console/builds/{scene.build_a}"' in card
    assert f'href="/console/builds/{scene.build_b}"' in card
    assert PEER_A in card and PEER_B in card


async def test_the_live_list_is_the_pages_list_alone(api: InProcessAPI) -> None:
    scene = await _scene(api)
    browser = ConsoleBrowser(api.http)
    await browser.sign_in(scene.org_b_token)
    live = await browser.get("/console/machines/live")
    assert live.status == 200
    assert live.text.lstrip().startswith('<div class="machines-live"')
    assert 'data-live-url="/console/machines/live"' in live.text
    assert "Sign out" not in live.text  # no layout around it
    card = _machine_card(live.text, scene.bound_machine)
    assert "another organization's project" in card and scene.build_a not in live.text
    assert "<script>alert" not in live.text
    signed_out = ConsoleBrowser(api.http)
    refused = await signed_out.get("/console/machines/live")
    assert refused.status == 401  # the page's script reloads, and so goes to sign-in
