"""Contract fuzzing: Schemathesis against a real server, checked against its own /openapi.yaml.

    python -m campaigns.contract_fuzz [--requests N] [--seed S]

Starts `depot-api serve` on 127.0.0.1 (a free port, a fresh SQLite data directory, one
worker), makes two projects with builds and tokens so that generated requests can name real
IDs (campaigns/contract_fuzz_hooks.py), and runs `st run` with the organization token over
every operation of the served document: examples, coverage (boundary values, missing fields,
other HTTP methods), fuzzing (valid and invalid bodies) and stateful (the document's links:
create a project, then use it) phases. It fails when Schemathesis reports any failure, when
the server logged an unexpected error, or when fewer than N requests were made or some
operation got none. Prints the requests per operation and in total.

Checks, and why the others are left out:
- not_a_server_error, status_code_conformance, content_type_conformance,
  response_schema_conformance, response_headers_conformance: the contract itself;
- ignored_auth (a request without the token must be refused), use_after_free and
  ensure_resource_availability (through the links: a deleted project is gone, a created one
  is there), allow_header_conformance (a 405 names POST).
- Not positive_data_acceptance / negative_data_rejection: the schema cannot say what the
  server rightly refuses or accepts (a well-formed ID that does not exist is not_found;
  protobuf JSON accepts numbers as strings and ignores unknown keys), so these would flag
  correct answers.
- Not unsupported_method: the HTTP layer in front of the application (Envoy, in pyvoy)
  refuses methods it does not know, such as QUERY, with a plain 400 before the application
  sees them; every method it knows gets the application's 405.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from campaigns.contract_fuzz_hooks import IDS_ENV
from campaigns.server import BIN, ServerProcess

REPO = Path(__file__).resolve().parent.parent

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "ignored_auth",
    "use_after_free",
    "ensure_resource_availability",
    "allow_header_conformance",
]
# No agent runs here: GetEndpoint answers failed_precondition (400) at once, except in the
# server's first seconds, when it waits this long and answers resource_exhausted (429); the
# default, 300 s, would stall the run at every real build ID.
ACQUIRE_TIMEOUT_SECONDS = 0.25
# Lines in the server's log that mean a bug, whatever Schemathesis saw.
SERVER_BUG = re.compile(r"Traceback|unexpected error|ERROR")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests", type=int, default=1000, help="the fewest requests in total (%(default)s)"
    )
    parser.add_argument("--seed", type=int, default=None, help="Schemathesis's random seed")
    parser.add_argument(
        "--har", type=Path, default=None, help="keep every request and answer in this HAR file"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="contract-fuzz-") as tmp:
        work = Path(tmp)
        # A GetEndpoint with no machine must give up quickly (see ACQUIRE_TIMEOUT_SECONDS).
        env = {"DEPOT_API_ACQUIRE_TIMEOUT": str(ACQUIRE_TIMEOUT_SECONDS)}
        server = ServerProcess(work / "data", env=env)
        try:
            server.start()
            url, token = server.url, server.org_token()
            ids = make_fixtures(url, token)
            operations = document_operations(url)
            har = (args.har or work / "requests.har").resolve()
            code = run_schemathesis(url, token, ids, len(operations), args, work, har)
        finally:
            server.stop()
        return report(code, har, operations, args.requests, server.output)


def call(url: str, token: str, rpc: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 (our own server, http on 127.0.0.1)
        f"{url}/{rpc}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def make_fixtures(url: str, token: str) -> dict[str, list[str]]:
    """Two projects, each with running and finished builds and a project token."""
    ids: dict[str, list[str]] = {
        "organizationId": [],
        "projectId": [],
        "buildId": [],
        "finishBuildId": [],
        "tokenId": [],
        "doomedToken": [],
    }
    for name in ("contract-a", "contract-b"):
        project = call(
            url,
            token,
            "depot.core.v1.ProjectService/CreateProject",
            {"name": name, "regionId": "us-east-1"},
        )
        project_id = project["project"]["projectId"]
        ids["organizationId"] = [project["project"]["organizationId"]]
        ids["projectId"].append(project_id)

        def build(project_id: str = project_id) -> str:
            answer = call(
                url, token, "depot.build.v1.BuildService/CreateBuild", {"projectId": project_id}
            )
            build_id: str = answer["buildId"]
            return build_id

        ids["buildId"] += [build(), build()]
        finished = build()
        call(
            url,
            token,
            "depot.build.v1.BuildService/FinishBuild",
            {"buildId": finished, "success": {}},
        )
        ids["buildId"].append(finished)
        ids["finishBuildId"] += [build() for _ in range(3)]
        created = call(
            url,
            token,
            "depot.core.v1.ProjectService/CreateToken",
            {"projectId": project_id, "description": "contract fuzzing"},
        )
        ids["tokenId"].append(created["tokenId"])
        for _ in range(3):
            doomed = call(
                url,
                token,
                "depot.core.v1.ProjectService/CreateToken",
                {"projectId": project_id, "description": "to be deleted"},
            )
            ids["doomedToken"].append(f"{project_id}/{doomed['tokenId']}")
    return ids


def document_operations(url: str) -> list[str]:
    """The paths the served document lists (every one is a POST)."""
    with urllib.request.urlopen(f"{url}/openapi.yaml", timeout=30) as response:  # noqa: S310
        document = yaml.safe_load(response.read())
    return sorted(document["paths"])


def run_schemathesis(
    url: str,
    token: str,
    ids: dict[str, list[str]],
    operations: int,
    args: argparse.Namespace,
    work: Path,
    har: Path,
) -> int:
    # The fuzzing phase alone makes about max-examples requests per operation; the other
    # phases add to it.
    max_examples = max(10, math.ceil(args.requests / operations))
    command = [
        str(BIN / "st"),
        "run",
        f"{url}/openapi.yaml",
        "--url",
        url,
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(max_examples),
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--report",
        "har",
        "--report-har-path",
        str(har),
        "--output-sanitize",
        "false",
    ]
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "campaigns.contract_fuzz_hooks",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        IDS_ENV: json.dumps(ids),
        "NO_COLOR": "1",
    }
    print(
        f"contract fuzzing: {operations} operations, max {max_examples} examples each", flush=True
    )
    # Run in the scratch directory: Schemathesis and Hypothesis keep their files in the cwd.
    run = subprocess.run(command, cwd=work, env=env, timeout=900, check=False)  # noqa: S603
    return run.returncode


def report(
    code: int, har: Path, operations: list[str], wanted: int, server_output: list[str]
) -> int:
    entries = json.loads(har.read_text())["log"]["entries"] if har.exists() else []
    per_operation: Counter[str] = Counter()
    statuses: dict[str, Counter[int]] = {path: Counter() for path in operations}
    other_methods = 0
    for entry in entries:
        path = "/" + entry["request"]["url"].split("/", 3)[3].split("?", 1)[0]
        if entry["request"]["method"] == "POST":
            per_operation[path] += 1
            statuses.setdefault(path, Counter())[entry["response"]["status"]] += 1
        else:
            other_methods += 1
    print("\nrequests per operation (POST), and their answers by HTTP status:")
    for path in operations:
        answers = " ".join(f"{status}:{n}" for status, n in sorted(statuses[path].items()))
        print(f"  {per_operation[path]:6d}  {path}  [{answers}]")
    total = sum(per_operation.values()) + other_methods
    print(f"  {other_methods:6d}  (other HTTP methods, all paths)")
    print(f"  {total:6d}  total")

    failed = []
    if code != 0:
        failed.append(f"schemathesis exited with {code}")
    if total < wanted:
        failed.append(f"only {total} requests, fewer than {wanted}")
    untested = [path for path in operations if per_operation[path] == 0]
    if untested:
        failed.append(f"operations without requests: {', '.join(untested)}")
    bugs = [line.rstrip() for line in server_output if SERVER_BUG.search(line)]
    if bugs:
        failed.append("the server logged errors:\n    " + "\n    ".join(bugs[:20]))
    for problem in failed:
        print(f"FAILED: {problem}")
    if not failed:
        print("contract fuzzing passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
