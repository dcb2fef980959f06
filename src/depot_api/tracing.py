"""Traces (OpenTelemetry): a span per RPC, per database transaction, and per machine call of
the agent, whose spans join the server's trace through the W3C `traceparent` header.

Off by default. It is on in a process when an OTLP endpoint is configured through the standard
variables (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) and
OTEL_SDK_DISABLED is not true; the SDK's exporter then reads the other OTEL_* variables
(headers, protocol details, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES) itself. When off, every
span helper here is one test of a module global and a shared do-nothing context manager: no
span, no context, no header (bench/: the `tracing` case).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager

from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()

_tracer: Tracer | None = None


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the OTEL_* variables ask for traces to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(environ.get(name, "").strip() for name in _ENDPOINT_VARIABLES)


def configure_tracing(service_name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Export spans over OTLP if the environment asks for it; whether it does."""
    environ = os.environ if environ is None else environ
    if not wanted(environ):
        return False
    # Imported only here: a server without tracing does not load the SDK.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win; the SDK's own default name does not.
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service_name}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use_tracer_provider(provider)
    return True


def use_tracer_provider(provider: trace.TracerProvider | None) -> None:
    """Make spans with this provider (None: tracing off). Tests give an SDK provider with an
    in-memory exporter."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer("depot_api")


def enabled() -> bool:
    return _tracer is not None


def transaction_span(kind: str, dialect: str) -> AbstractContextManager[object]:
    """A span around one database transaction (kind: read or write)."""
    if _tracer is None:
        return _NOTHING
    return _tracer.start_as_current_span(
        f"db.{kind}",
        kind=SpanKind.CLIENT,
        attributes={"db.system": dialect, "db.operation": kind},
    )


@contextlib.contextmanager
def rpc_server_span(
    name: str, headers: Iterable[tuple[bytes, bytes]], attributes: Mapping[str, str]
) -> Iterator[trace.Span | None]:
    """The span of one request the server answers, a child of the caller's `traceparent`
    when it sent one. Yields None when tracing is off."""
    if _tracer is None:
        yield None
        return
    carrier = {
        bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1")
        for k, v in headers
        if k.lower() in (b"traceparent", b"tracestate")
    }
    with _tracer.start_as_current_span(
        name, context=extract(carrier), kind=SpanKind.SERVER, attributes=dict(attributes)
    ) as span:
        yield span


def end_rpc_span(span: trace.Span | None, code: str, attributes: Mapping[str, str]) -> None:
    """Set what is known at the end of a request: its code, its principal."""
    if span is None:
        return
    span.set_attributes(dict(attributes))
    span.set_attribute("rpc.connect_rpc.error_code" if code != "ok" else "rpc.code", code)
    if code not in ("ok", "200"):
        span.set_status(Status(StatusCode.ERROR, code))


@contextlib.contextmanager
def client_call_span(name: str, headers: MutableMapping[str, str]) -> Iterator[None]:
    """A span around a call the agent makes, with `traceparent` put in its headers so that
    the server's span of the call joins this trace. Nothing when tracing is off."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(name, kind=SpanKind.CLIENT):
        inject(headers)
        yield
