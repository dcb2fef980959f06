"""Schemathesis hooks for the contract fuzzing run (campaigns/contract_fuzz.py).

Loaded by `st run` through SCHEMATHESIS_HOOKS. Generated IDs are almost never real, so without
help nearly every request would end in not_found and the handlers past the lookup would go
untested. These hooks make about half of the generated bodies name real projects, builds and
tokens, which the campaign created and passes in CONTRACT_FUZZ_IDS (a JSON object: field name
-> list of IDs).
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis
from hypothesis import strategies as st

IDS_ENV = "CONTRACT_FUZZ_IDS"

# Deleting the shared projects and tokens would turn every later request naming them into
# not_found. The delete operations get real IDs only through the document's links (the
# stateful phase), which delete what that same scenario created. Schemathesis also reuses IDs
# it saw in answers (ListProjects lists the shared projects), so map_case takes the shared
# IDs out of their final bodies.
# Each delete operation, and the field naming what it deletes.
_DELETES = {"DeleteProject": "projectId", "DeleteProjectToken": "tokenId", "DeleteToken": "tokenId"}
_ID_FIELDS = ("projectId", "buildId", "tokenId")
# Well-formed, and never issued (IDs are random).
_UNISSUED_ID = "0000000000"
# FinishBuild gets builds of its own, so that other operations keep finding running builds.
_FIELD_POOLS = {"FinishBuild": {"buildId": "finishBuildId"}}


def _ids() -> dict[str, list[str]]:
    value: dict[str, list[str]] = json.loads(os.environ.get(IDS_ENV, "{}"))
    return value


@schemathesis.hook
def before_generate_body(
    context: schemathesis.HookContext, strategy: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    operation = context.operation
    if operation is None:
        return strategy
    method = operation.path.rsplit("/", 1)[-1]
    ids = _ids()
    if method in ("DeleteToken", "DeleteProjectToken") and ids.get("doomedToken"):
        # Tokens made to be deleted ("projectId/tokenId"): each goes once, then is not_found.
        doomed = st.tuples(strategy, st.sampled_from(ids["doomedToken"]))
        return st.one_of(strategy, doomed.map(_with_doomed_token))
    if method in _DELETES:
        return strategy
    pools = _FIELD_POOLS.get(method, {})
    fields = {
        field: st.sampled_from(ids[pools.get(field, field)])
        for field in _ID_FIELDS
        if ids.get(pools.get(field, field))
    }
    if method in ("CreateProject", "UpdateProject"):
        # A region the server serves, a short printable name, the caller's organization: a
        # project that can be made (or changed), unless the name is taken.
        fields["regionId"] = st.just("us-east-1")
        fields["name"] = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1)
        if ids.get("organizationId"):
            fields["organizationId"] = st.sampled_from(ids["organizationId"])
    if method == "AddTrustPolicy" and ids.get("projectId"):
        # A well-formed policy for a real project: generated names are almost never valid.
        policy = st.tuples(strategy, st.sampled_from(ids["projectId"]), _TRUST_POLICIES)
        return st.one_of(strategy, policy.map(_with_policy))
    if method == "FinishBuild" and ids.get("finishBuildId"):
        # One valid outcome, in either shape: most generated bodies have none or several.
        finish = st.tuples(
            strategy, st.sampled_from(ids["finishBuildId"]), st.sampled_from(_OUTCOMES)
        )
        return st.one_of(strategy, finish.map(_finished))
    if not fields:
        return strategy
    real = st.tuples(strategy, st.fixed_dictionaries(fields)).map(_with_real)
    return st.one_of(strategy, real)


def _with_real(drawn: tuple[Any, dict[str, str]]) -> Any:
    """The generated body with the fields it has replaced by real values."""
    body, real = drawn
    if not isinstance(body, dict):
        return body  # negative cases: a list, a number, …
    return {**body, **{k: v for k, v in real.items() if k in body}}


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    operation = context.operation
    field = _DELETES.get(operation.path.rsplit("/", 1)[-1]) if operation else None
    if field is None or not isinstance(case.body, dict):
        return case
    ids = _ids()
    shared = {*ids.get("projectId", []), *ids.get("tokenId", [])}
    value = case.body.get(field)
    if isinstance(value, str) and value in shared:
        case.body = {**case.body, field: _UNISSUED_ID}
    return case


_OUTCOMES: list[dict[str, Any]] = [
    {"result": {"success": {}}},
    {"result": {"error": {"error": "generated failure"}}},
    {"success": {}},
    {"error": {"error": "generated failure"}},
]


_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
_TRUST_POLICIES = st.one_of(
    st.fixed_dictionaries(
        {"github": st.fixed_dictionaries({"repositoryOwner": _NAME, "repository": _NAME})}
    ),
    st.fixed_dictionaries(
        {
            "circleci": st.fixed_dictionaries(
                {"organizationUuid": st.uuids().map(str), "projectUuid": st.uuids().map(str)}
            )
        }
    ),
    st.fixed_dictionaries(
        {"buildkite": st.fixed_dictionaries({"organizationSlug": _NAME, "pipelineSlug": _NAME})}
    ),
)


def _with_policy(drawn: tuple[Any, str, dict[str, Any]]) -> Any:
    body, project_id, policy = drawn
    if not isinstance(body, dict):
        return body
    rest = {k: v for k, v in body.items() if k not in ("github", "circleci", "buildkite")}
    return {**rest, "projectId": project_id, **policy}


def _finished(drawn: tuple[Any, str, dict[str, Any]]) -> Any:
    body, build_id, outcome = drawn
    if not isinstance(body, dict):
        return body
    rest = {k: v for k, v in body.items() if k not in ("result", "success", "error")}
    return {**rest, "buildId": build_id, **outcome}


def _with_doomed_token(drawn: tuple[Any, str]) -> Any:
    body, doomed = drawn
    if not isinstance(body, dict):
        return body
    project_id, token_id = doomed.split("/")
    return {
        **body,
        "tokenId": token_id,
        **({"projectId": project_id} if "projectId" in body else {}),
    }
