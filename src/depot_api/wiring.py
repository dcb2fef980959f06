"""One place that builds the domain on top of a store, for the server and the admin CLI."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from depot_api.config import Settings
from depot_api.domain.auth import Authenticator
from depot_api.domain.build_reports import BuildReports
from depot_api.domain.builds import Builds
from depot_api.domain.connections import Connections
from depot_api.domain.console_sessions import ConsoleSessions
from depot_api.domain.endpoints import Endpoints, EndpointTimings
from depot_api.domain.health import Health
from depot_api.domain.insights import Insights
from depot_api.domain.machines import Machines
from depot_api.domain.oidc_issuers import Issuers
from depot_api.domain.oidc_keys import IssuerKeys
from depot_api.domain.oidc_tokens import CiTokens
from depot_api.domain.organizations import Organizations
from depot_api.domain.projects import Projects
from depot_api.domain.secretbox import SecretBox, load_or_create_key
from depot_api.domain.shares import Shares
from depot_api.domain.tokens import Tokens
from depot_api.domain.trust_policies import TrustPolicies
from depot_api.domain.usage import Usage
from depot_api.http_json import HttpJsonSource
from depot_api.models import CiProvider
from depot_api.store import Store, open_store
from depot_api.times import utc_now


@dataclass(frozen=True)
class Domain:
    store: Store
    authenticator: Authenticator
    projects: Projects
    tokens: Tokens
    trust_policies: TrustPolicies
    builds: Builds
    organizations: Organizations
    machines: Machines
    connections: Connections
    endpoints: Endpoints
    build_reports: BuildReports
    insights: Insights
    usage: Usage
    shares: Shares
    console_sessions: ConsoleSessions
    health: Health
    # Where the OIDC issuers' keys are fetched from: closed at shutdown.
    issuer_documents: HttpJsonSource


def build_domain(
    store: Store, settings: Settings, *, now: Callable[[], datetime] = utc_now
) -> Domain:
    projects = Projects(
        project_store=store.projects,
        machine_store=store.machines,
        regions=settings.regions,
        now=now,
    )
    tokens = Tokens(store.orgs, projects, now=now)
    trust_policies = TrustPolicies(
        policy_store=store.trust_policies,
        project_store=store.projects,
        projects=projects,
        now=now,
    )
    builds = Builds(store.builds, projects, tokens, trust_policies, now=now)
    box = SecretBox(
        settings.secret_key.encode()
        if settings.secret_key
        else load_or_create_key(settings.secret_key_path)
    )
    issuer_documents = HttpJsonSource()
    insights = Insights(
        insight_store=store.insights,
        machine_store=store.machines,
        builds=builds,
        max_log_bytes=settings.max_build_log_bytes,
        log_retention=settings.build_log_retention,
        now=now,
    )
    timings = EndpointTimings(
        acquire_timeout=settings.acquire_timeout,
        pending_interval=settings.pending_interval,
        machine_lost_after=settings.machine_lost_after,
        liveness_window=settings.liveness_window,
        max_build_duration=settings.max_build_duration,
        machine_heartbeat=settings.machine_heartbeat,
    )
    authenticator = Authenticator(
        org_store=store.orgs,
        build_store=store.builds,
        build_token_grace=settings.build_token_grace,
        now=now,
        ci_tokens=ci_tokens_for(settings, issuer_documents),
    )
    return Domain(
        store=store,
        authenticator=authenticator,
        console_sessions=ConsoleSessions(
            store.sessions, authenticator, lifetime=settings.console_session_lifetime, now=now
        ),
        projects=projects,
        tokens=tokens,
        trust_policies=trust_policies,
        builds=builds,
        organizations=Organizations(store.orgs, tokens, now=now),
        machines=Machines(
            machine_store=store.machines,
            project_store=store.projects,
            box=box,
            idle_release=settings.machine_idle_release,
            now=now,
        ),
        connections=Connections(
            connection_store=store.connections,
            machine_store=store.machines,
            max_build_duration=settings.max_build_duration,
            now=now,
        ),
        endpoints=Endpoints(
            build_store=store.builds,
            machine_store=store.machines,
            project_store=store.projects,
            builds=builds,
            box=box,
            timings=timings,
            now=now,
            wait_for_machines=settings.wait_for_machines,
        ),
        build_reports=BuildReports(store.builds, builds, now=now),
        insights=insights,
        shares=Shares(store.shares, builds, insights, box, now=now),
        usage=Usage(store.usage, projects, now=now),
        health=Health(store),
        issuer_documents=issuer_documents,
    )


def ci_tokens_for(settings: Settings, documents: HttpJsonSource) -> CiTokens:
    """The verifier of CI jobs' OIDC tokens, as the settings configure it."""
    issuers = Issuers({CiProvider(provider): url for provider, url in settings.oidc_issuers})
    keys = IssuerKeys(documents, refetch_interval=settings.oidc_keys_refetch, clock=time.monotonic)
    return CiTokens(issuers, keys, audiences=settings.oidc_audiences, leeway=settings.oidc_leeway)


def domain_for(settings: Settings) -> Domain:
    """The domain over the settings' database, for a server process (opened lazily, on first
    use)."""
    return build_domain(open_store(settings.database_url), settings)
