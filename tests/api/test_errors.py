from __future__ import annotations

import logging

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from depot_api.api.errors import to_connect_error
from depot_api.domain import errors as domain
from depot_api.store.errors import StoreUnavailable


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (domain.InvalidArgument("x"), Code.INVALID_ARGUMENT),
        (domain.Unauthenticated("x"), Code.UNAUTHENTICATED),
        (domain.PermissionDenied("x"), Code.PERMISSION_DENIED),
        (domain.NotFound("x"), Code.NOT_FOUND),
        (domain.AlreadyExists("x"), Code.ALREADY_EXISTS),
        (domain.FailedPrecondition("x"), Code.FAILED_PRECONDITION),
        (domain.Unavailable("x"), Code.UNAVAILABLE),
    ],
)
def test_domain_errors_keep_their_message(error: domain.DomainError, code: Code) -> None:
    mapped = to_connect_error(error, "svc/Method")
    assert (mapped.code, mapped.message) == (code, "x")


def test_connect_errors_pass_through() -> None:
    error = ConnectError(Code.RESOURCE_EXHAUSTED, "too big")
    assert to_connect_error(error, "svc/Method") is error


def test_store_outage_is_retryable_and_says_nothing_internal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mapped = to_connect_error(StoreUnavailable("OperationalError"), "svc/Method")
    assert mapped.code == Code.UNAVAILABLE
    assert "OperationalError" not in mapped.message


def test_bugs_become_a_generic_internal_error_and_a_logged_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        raise KeyError("row 42 of table secrets")
    except KeyError as e:
        with caplog.at_level(logging.ERROR, logger="depot_api.api"):
            mapped = to_connect_error(e, "depot.core.v1.ProjectService/GetProject")
    assert (mapped.code, mapped.message) == (Code.INTERNAL, "internal error")
    assert "row 42" not in mapped.message
    (record,) = caplog.records
    assert "GetProject" in record.getMessage()
    assert record.exc_info is not None
