"""Weaviate wire details: error translation, the client's hidden gRPC retries, per-object error
classes, the log filter, the schema and filters. Pure helpers for :mod:`worker.sinks.weaviate`
(split from it along the transport seam).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import grpc

from worker.errors import ConfigError, FatalError, SinkMismatch, SinkUnavailable, WorkerError
from worker.fields import FieldSpec
from worker.filters import weaviate_filter as render_filter
from worker.records import QueryFilter

log = logging.getLogger(__name__)

VECTOR_NAME = "default"
#: Text properties compared whole (Equal filters, deletes): ``field`` tokenization.
ID_PROPERTIES = ("doc_id", "source", "collection", "content_hash", "text_hash", "meta_hash",
                 "version", "url")
TEXT_PROPERTIES = ("title", "text")
INT_PROPERTIES = ("chunk_index", "chunk_count")
ALL_PROPERTIES = (*ID_PROPERTIES, *TEXT_PROPERTIES, *INT_PROPERTIES, "published_at")
MAX_QUERY_RESULTS = 10_000  # the server's QUERY_MAXIMUM_RESULTS default
FETCH_BATCH_IDS = 500

_TRANSIENT_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED",
                              "INTERNAL", "UNKNOWN", "CANCELLED"})
_TRANSIENT_HINTS = ("deadline exceeded", "context canceled", "timeout", "timed out", "unavailable",
                    "connection refused", "connection reset", "broken pipe", "unexpected eof",
                    "not enough replicas", "read-only", "readonly", "read only", "shutting down",
                    "not ready", "too many requests", "rate limit", "resource exhausted",
                    "temporar", "try again", "memory pressure", "disk full", "no space left")
_PERMANENT_HINTS = ("invalid", "vector length", "vector with length", "dimension", "not a valid",
                    "no such prop", "does not have", "must be", "reserved", "could not infer",
                    "not allowed", "too long", "exceeds", "cannot parse", "could not parse",
                    "unsupported")
_MISSING_HINTS = ("could not find class", "class not found", "collection not found")


def object_error_kind(message: str) -> str:
    """``transient``, ``permanent``, ``missing`` (the collection is gone) or ``unknown``."""
    text = message.lower()
    if any(h in text for h in _MISSING_HINTS):
        return "missing"
    if any(h in text for h in _TRANSIENT_HINTS):
        return "transient"
    if any(h in text for h in _PERMANENT_HINTS):
        return "permanent"
    return "unknown"


class GrpcUnavailable(Exception):
    """gRPC UNAVAILABLE, raised by :class:`FailFastStub` past the client's retry loop.

    Deliberately not a ``grpc.RpcError``: the client catches only those (and its own errors).
    """


class FailFastStub:
    """The client's gRPC stub, with UNAVAILABLE surfacing at once instead of after 15-63 s."""

    def __init__(self, stub: Any, address: str) -> None:
        self._stub = stub
        self._address = address

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except grpc.RpcError as exc:
                code = exc.code() if callable(getattr(exc, "code", None)) else None
                if code == grpc.StatusCode.UNAVAILABLE:
                    details = exc.details() if callable(getattr(exc, "details", None)) else ""
                    raise GrpcUnavailable(f"gRPC {self._address} UNAVAILABLE: {details}") from exc
                raise

        setattr(self, name, call)  # cached: __getattr__ runs once per method
        return call


def fail_fast_grpc(client: Any, address: str) -> bool:
    """Put :class:`FailFastStub` in front of the connection's stub (private attribute; guarded)."""
    conn = getattr(client, "_connection", None)
    stub = getattr(conn, "_grpc_stub", None)
    if stub is None:
        log.warning("weaviate client's gRPC stub not found; its hidden UNAVAILABLE retries "
                    "(up to 63 s per call) stay active under ours")
        return False
    if not isinstance(stub, FailFastStub):
        conn._grpc_stub = FailFastStub(stub, address)
    return True


class DropBatchObjectDumps(logging.Filter):
    """Drop the client's "Failed to send N objects" ERROR records: they carry whole vectors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, dict) and "errors" in record.msg)


def install_log_filter() -> None:
    client_log = logging.getLogger("weaviate-client")
    if not any(isinstance(f, DropBatchObjectDumps) for f in client_log.filters):
        client_log.addFilter(DropBatchObjectDumps())


def _grpc_code(exc: BaseException) -> str | None:
    """The gRPC status name behind a client exception (it keeps the RpcError as context)."""
    seen = 0
    node: BaseException | None = exc
    while node is not None and seen < 6:
        if isinstance(node, grpc.RpcError) and callable(getattr(node, "code", None)):
            return node.code().name
        node = node.__cause__ or node.__context__
        seen += 1
    return None


def translate(exc: BaseException, what: str, *, retry_after_s: float | None = None) -> WorkerError:
    """The worker error for a vendor exception (``raise translate(exc, ...) from exc``)."""
    from weaviate.exceptions import (UnexpectedStatusCodeError, WeaviateClosedClientError,
                                     WeaviateInvalidInputError, WeaviateStartUpError)

    where = f"weaviate {what}"
    if isinstance(exc, GrpcUnavailable):
        return SinkUnavailable(f"{where}: {exc}")
    code = _grpc_code(exc)
    if code is not None:
        if code in _TRANSIENT_CODES:
            return SinkUnavailable(f"{where}: gRPC {code}: {exc}")
        if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            return ConfigError(f"{where}: gRPC {code}; check sinks.weaviate.api_key and its "
                               "permissions on the collection")
        return FatalError(f"{where} refused (gRPC {code}): {exc}")
    if isinstance(exc, UnexpectedStatusCodeError):  # REST; InsufficientPermissionsError included
        status = exc.status_code
        if status in (401, 403):
            return ConfigError(f"{where}: HTTP {status}; check sinks.weaviate.api_key and its "
                               "permissions on the collection")
        if status == 429:
            return SinkUnavailable(f"{where}: rate limited (429)", retry_after_s=retry_after_s)
        if status >= 500 or status == 408:
            return SinkUnavailable(f"{where}: HTTP {status}: {exc.error}",
                                   retry_after_s=retry_after_s)
        return FatalError(f"{where} refused (HTTP {status}): {exc.error}")
    if isinstance(exc, WeaviateStartUpError) and exc.__cause__ is None:
        return ConfigError(f"{where}: {exc}")  # e.g. a server older than 1.27
    if isinstance(exc, (WeaviateClosedClientError, WeaviateInvalidInputError)):
        return FatalError(f"{where}: {exc}")
    # Timeouts, connection errors, dropped connections, retry errors, undecodable answers.
    return SinkUnavailable(f"{where}: {type(exc).__name__}: {exc}")


class ObjectsFailing(SinkUnavailable):
    """Some objects of a slice failed with errors worth retrying (inside :meth:`upsert`)."""


def stored_properties(props: dict[str, Any], integers: tuple[str, ...] = ()) -> dict[str, Any]:
    """Properties as the worker wrote them: ints may come back as floats, numbers as ints."""
    out = {k: v for k, v in props.items() if v is not None}
    for name in (*INT_PROPERTIES, *integers):
        value = out.get(name)
        if isinstance(value, float) and value.is_integer():
            out[name] = int(value)
    if isinstance(out.get("published_at"), int):
        out["published_at"] = float(out["published_at"])
    return out


def wire_properties(meta: dict[str, Any], fields: Mapping[str, FieldSpec] = MappingProxyType({})) -> dict[str, Any]:
    out: dict[str, Any] = {n: str(meta.get(n, "")) for n in (*ID_PROPERTIES, *TEXT_PROPERTIES)}
    for name in INT_PROPERTIES:
        out[name] = int(meta[name])
    out["published_at"] = float(meta["published_at"])
    for name, spec in fields.items():
        value = meta.get(name)
        if value is None:
            continue
        out[name] = float(value) if spec.type in ("number", "time") else value
    return out


def weaviate_filter(where: QueryFilter) -> Any:
    return render_filter(where.conditions())


def field_property(spec: FieldSpec) -> Any:
    """A typed metadata field as a filterable property (strings compared whole: field
    tokenization, not searchable: the keyword leg searches the chunk text)."""
    from weaviate.classes.config import DataType, Property, Tokenization

    kind = {"string": DataType.TEXT, "string[]": DataType.TEXT_ARRAY, "number": DataType.NUMBER,
            "integer": DataType.INT, "boolean": DataType.BOOL, "time": DataType.NUMBER}[spec.type]
    if spec.type in ("string", "string[]"):
        return Property(name=spec.name, data_type=kind, tokenization=Tokenization.FIELD,
                        index_searchable=False)
    return Property(name=spec.name, data_type=kind, index_range_filters=spec.type != "boolean")


def schema_properties(fields: Mapping[str, FieldSpec] = MappingProxyType({})) -> list[Any]:
    from weaviate.classes.config import DataType, Property, Tokenization

    props = [Property(name=n, data_type=DataType.TEXT, tokenization=Tokenization.FIELD,
                      index_searchable=False) for n in ID_PROPERTIES]
    props += [Property(name="title", data_type=DataType.TEXT, index_filterable=False),
              Property(name="text", data_type=DataType.TEXT, index_filterable=False)]
    props += [Property(name=n, data_type=DataType.INT, index_range_filters=True)
              for n in INT_PROPERTIES]
    props.append(Property(name="published_at", data_type=DataType.NUMBER, index_range_filters=True))
    props += [field_property(spec) for _, spec in sorted(fields.items())]
    return props


def check_collection(config: Any, target: str,
                     fields: Mapping[str, FieldSpec] = MappingProxyType({})) -> tuple[str | None, list[Any]]:
    """``(vector name, our missing properties)``; SinkMismatch if the collection does not fit."""
    from weaviate.classes.config import Tokenization, VectorDistances

    if config.vector_config:
        names = sorted(config.vector_config)
        if VECTOR_NAME in config.vector_config or len(names) == 1:
            vector_name = VECTOR_NAME if VECTOR_NAME in names else names[0]
        else:
            raise SinkMismatch(f"weaviate collection {target} has named vectors {names} "
                               f"but none called {VECTOR_NAME!r}")
        index_config = config.vector_config[vector_name].vector_index_config
    else:
        vector_name = None  # a legacy collection with one unnamed vector
        index_config = config.vector_index_config
    distance = getattr(index_config, "distance_metric", None)
    if distance is not None and distance != VectorDistances.COSINE:
        raise SinkMismatch(f"weaviate collection {target} uses the {distance.value} distance, "
                           "the worker needs cosine; point sinks.weaviate.collection elsewhere")
    have = {p.name: p for p in config.properties}
    problems, missing = [], []
    for prop in schema_properties(fields):
        held = have.get(prop.name)
        if held is None:
            missing.append(prop)
        elif held.data_type != prop.dataType:
            problems.append(f"{prop.name} is {held.data_type.value}, not {prop.dataType.value}")
        elif prop.tokenization == Tokenization.FIELD and held.tokenization != Tokenization.FIELD:
            tokens = held.tokenization.value if held.tokenization else "no"
            problems.append(f"{prop.name} uses {tokens} tokenization, not field (an Equal "
                            "filter would match other documents' ids)")
    if problems:
        raise SinkMismatch(f"weaviate collection {target} does not fit the worker: "
                           + "; ".join(problems) + ". Point sinks.weaviate.collection at a new "
                           "collection (it is created on start) or run `memory-worker reindex`")
    return vector_name, missing
