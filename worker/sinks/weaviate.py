"""Weaviate, through ``weaviate-client`` 4.24 (REST for the schema, gRPC for the data).

Layout: one collection (``sinks.weaviate.collection``) with a typed property per metadata field
of :mod:`worker.sinks.base`. Id-like text properties use ``field`` tokenization, so an Equal
filter on ``doc_id`` compares whole values (with the default ``word`` tokenization
``gong:call-1`` would also match, and delete, ``gong:call-1-2``). One self-provided vector named
``default`` (no server-side vectorizer), HNSW, cosine distance. Object ids are the records'
UUIDv5 (:attr:`VectorRecord.uuid`), so re-inserting overwrites.

Retries belong to the worker. Every client call runs under :func:`worker.retry.retrying`, and
the client's own hidden retries are taken out of play:

* **gRPC UNAVAILABLE** is retried by the client with hard-coded sleeps (Search/Aggregate 6
  attempts, 1+2+…+32 s = 63 s; ``insert_many`` 4 attempts, 15 s); there is no public knob. We
  wrap the connection's gRPC stub (private ``_connection._grpc_stub``; guarded, see
  :class:`FailFastStub`) so UNAVAILABLE leaves at once as an exception the client does not
  catch. If that attribute is missing on another client version we log a warning, and the worst
  case of one attempt grows by those 63 s.
* **REST connect retries** (httpx transport) are set to 0 through the public
  ``ConnectionConfig(session_pool_max_retries=0)``. The client retries nothing else on REST.
* The batch context managers (which retry for up to ~10 min) are never used: ``insert_many`` only.
  ``delete_many`` is never retried by the client; DEADLINE_EXCEEDED is never retried either.

Timeouts (``timeout_s`` = t): every gRPC call has a deadline of t (``Timeout.query`` for
Search/Aggregate, ``Timeout.insert`` for BatchObjects/BatchDelete); REST reads t, plus the
client's fixed 5 s connect and 5 s pool wait. So one attempt lasts at most t (gRPC) or t + 10 s
(REST; the first use also connects: ``GET /v1/meta`` and ``/v1/.well-known/ready``). One sink
call then ends within ``retry.max_elapsed_s`` + one backoff (≤ ``max_backoff_s``, or a
Retry-After capped at 3 × that) + one attempt: ≤ ~150 s with the defaults (60 s, 20 s, t = 10 s)
in the worst case, and ~16 s (sleeps 0.5+1+2+4+8 s at most) when a down server fails fast.
An upsert's slices share that bound: once one slice runs out of retries, slices not yet started
are cancelled and only those in flight finish.

Error classification (:func:`translate`): gRPC UNAVAILABLE/DEADLINE_EXCEEDED/RESOURCE_EXHAUSTED/
ABORTED/INTERNAL/UNKNOWN, REST 408/429/5xx, timeouts and connection errors → SinkUnavailable
(429 carries the server's Retry-After); UNAUTHENTICATED/PERMISSION_DENIED, REST 401/403, a server
older than 1.27 → ConfigError; any other refusal of a whole request → FatalError (a request we
built wrong). Per-object batch errors are sorted by their message (:func:`object_error_kind`):
clearly permanent (validation) → rejected at once with the server's message; clearly transient →
retried, and if still failing when the budget is spent, SinkUnavailable (the work stays in the
spool); unrecognised → retried within the budget, then rejected (a poison record must not block
the stream forever); "class not found" (the collection was deleted under us) → SinkMismatch.
None is ever dropped silently.

Logs: the client logs a partially failed ``insert_many`` at ERROR with every failed object,
vectors included; :class:`DropBatchObjectDumps` removes exactly those records from the
``weaviate-client`` logger and we log our own line (count, first message, record ids).

Crash safety: every write is an idempotent insert-by-uuid or delete-by-filter. A write that
timed out may still land; redoing it changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
import httpx
import numpy as np

from worker.config import RetryConfig, WeaviateSinkConfig
from worker.errors import ConfigError, FatalError, SinkMismatch, SinkUnavailable, WorkerError
from worker.ids import chunk_id, chunk_uuid
from worker.records import QueryFilter, QueryHit, StoredDocument, VectorRecord
from worker.retry import retrying
from worker.sinks.base import SinkInfo, UpsertOutcome, hit_from_metadata, stored_from_metadata

log = logging.getLogger(__name__)
T = TypeVar("T")

VECTOR_NAME = "default"
#: Text properties compared whole (Equal filters, deletes): ``field`` tokenization.
ID_PROPERTIES = ("doc_id", "source", "collection", "content_hash", "text_hash", "meta_hash",
                 "version", "url")
TEXT_PROPERTIES = ("title", "text", "extra")
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


def _install_log_filter() -> None:
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


def _retry_after(raw: str | None) -> float | None:
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None  # an HTTP date: rare enough to fall back on our own backoff
    return value if value is not None and value >= 0 else None


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


class _ObjectsFailing(SinkUnavailable):
    """Some objects of a slice failed with errors worth retrying (inside :meth:`upsert`)."""


def _stored_properties(props: dict[str, Any]) -> dict[str, Any]:
    """Properties as the worker wrote them: ints may come back as floats, numbers as ints."""
    out = dict(props)
    for name in INT_PROPERTIES:
        value = out.get(name)
        if isinstance(value, float) and value.is_integer():
            out[name] = int(value)
    if isinstance(out.get("published_at"), int):
        out["published_at"] = float(out["published_at"])
    return out


def _wire_properties(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {n: str(meta.get(n, "")) for n in (*ID_PROPERTIES, *TEXT_PROPERTIES)}
    for name in INT_PROPERTIES:
        out[name] = int(meta[name])
    out["published_at"] = float(meta["published_at"])
    return out


def weaviate_filter(where: QueryFilter) -> Any:
    from weaviate.classes.query import Filter

    parts = [Filter.by_property(n).equal(getattr(where, n))
             for n in ("source", "collection", "doc_id") if getattr(where, n)]
    if where.published_after is not None:
        parts.append(Filter.by_property("published_at").greater_or_equal(float(where.published_after)))
    if where.published_before is not None:
        parts.append(Filter.by_property("published_at").less_than(float(where.published_before)))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Filter.all_of(parts)


def _schema_properties() -> list[Any]:
    from weaviate.classes.config import DataType, Property, Tokenization

    props = [Property(name=n, data_type=DataType.TEXT, tokenization=Tokenization.FIELD,
                      index_searchable=False) for n in ID_PROPERTIES]
    props += [Property(name="title", data_type=DataType.TEXT, index_filterable=False),
              Property(name="text", data_type=DataType.TEXT, index_filterable=False),
              Property(name="extra", data_type=DataType.TEXT, index_filterable=False,
                       index_searchable=False)]
    props += [Property(name=n, data_type=DataType.INT, index_range_filters=True)
              for n in INT_PROPERTIES]
    props.append(Property(name="published_at", data_type=DataType.NUMBER, index_range_filters=True))
    return props


class WeaviateSink:
    name = "weaviate"

    def __init__(self, cfg: WeaviateSinkConfig, retry: RetryConfig, *,
                 on_retry: Callable[[BaseException, float], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        url = urlsplit(cfg.url)
        if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/"):
            raise ConfigError(f"sinks.weaviate.url {cfg.url!r} must look like "
                              "http(s)://host[:port] (no path)")
        self.cfg = cfg
        self._http_secure = url.scheme == "https"
        self._http_host = url.hostname
        self._http_port = url.port or (443 if self._http_secure else 80)
        self._grpc_host = cfg.grpc_host or url.hostname
        self._grpc_secure = self._http_secure if cfg.grpc_secure is None else cfg.grpc_secure
        self._collection_name = cfg.collection[:1].upper() + cfg.collection[1:]
        self.target = f"{url.scheme}://{url.netloc}/{self._collection_name}"
        self._retry = retry
        self._probe = RetryConfig(max_attempts=1, max_elapsed_s=retry.max_elapsed_s)
        self._on_retry = on_retry
        self._sleep = sleep
        self._lock = threading.Lock()
        self._client: Any = None
        self._coll: Any = None
        self._http_retry_after = threading.local()
        self._vector_name: str | None = VECTOR_NAME
        self._dims: int | None = None
        self._pool = ThreadPoolExecutor(cfg.max_parallel_requests, thread_name_prefix="weaviate")
        _install_log_filter()

    # -- plumbing ----------------------------------------------------------------------------
    def _connect(self) -> Any:
        """The collection handle; connects on first use (constructing the sink never blocks)."""
        with self._lock:
            if self._coll is not None:
                return self._coll
            import weaviate
            from weaviate.classes.init import AdditionalConfig, Auth, Timeout
            from weaviate.config import ConnectionConfig

            key = self.cfg.api_key.get_secret_value().strip() if self.cfg.api_key else ""
            t = self.cfg.timeout_s
            client = weaviate.connect_to_custom(
                http_host=self._http_host, http_port=self._http_port, http_secure=self._http_secure,
                grpc_host=self._grpc_host, grpc_port=self.cfg.grpc_port,
                grpc_secure=self._grpc_secure, skip_init_checks=True,
                auth_credentials=Auth.api_key(key) if key else None,
                additional_config=AdditionalConfig(
                    timeout=Timeout(init=min(t, 5.0), query=t, insert=t),
                    connection=ConnectionConfig(session_pool_max_retries=0)))
            try:
                if not client.is_ready():
                    raise SinkUnavailable(f"weaviate at {self.cfg.url} is not ready "
                                          "(/v1/.well-known/ready)")
                fail_fast_grpc(client, f"{self._grpc_host}:{self.cfg.grpc_port}")
                self._watch_retry_after(client)
            except BaseException:
                client.close()
                raise
            self._client = client
            self._coll = client.collections.use(self._collection_name)
            return self._coll

    def _watch_retry_after(self, client: Any) -> None:
        """Keep a 429/503's Retry-After: the client's REST errors drop the response headers."""
        http = getattr(getattr(client, "_connection", None), "_client", None)
        hooks = getattr(http, "event_hooks", None)
        if hooks is None:
            return
        store = self._http_retry_after

        def on_response(response: Any) -> None:
            if response.status_code in (429, 503):
                store.value = _retry_after(response.headers.get("retry-after"))

        http.event_hooks = {**hooks, "response": [*hooks.get("response", []), on_response]}

    def _call(self, what: str, fn: Callable[[Any], T], *, policy: RetryConfig | None = None) -> T:
        """``fn(collection)`` under our retry policy; vendor exceptions leave translated."""
        from weaviate.exceptions import WeaviateBaseError

        def attempt() -> T:
            try:
                return fn(self._connect())
            except WorkerError:
                raise
            except (WeaviateBaseError, GrpcUnavailable, grpc.RpcError, httpx.HTTPError,
                    OSError) as exc:
                raise self._translate(exc, what) from exc

        def on_retry(exc: BaseException, sleep_s: float) -> None:
            log.warning("weaviate call failed; retrying", extra={
                "op": what, "error": str(exc)[:200], "sleep_s": round(sleep_s, 3)})
            if self._on_retry is not None:
                self._on_retry(exc, sleep_s)

        return retrying(policy or self._retry, on_retry=on_retry, sleep=self._sleep)(attempt)

    def _translate(self, exc: BaseException, what: str) -> WorkerError:
        retry_after = self._http_retry_after.__dict__.pop("value", None)
        return translate(exc, f"{what} ({self.target})", retry_after_s=retry_after)

    def _parallel(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        """``fn`` over ``items`` on the bounded pool; the first error is raised after the rest."""
        if len(items) <= 1 or self.cfg.max_parallel_requests == 1:
            return [fn(item) for item in items]
        futures = [self._pool.submit(fn, item) for item in items]
        results: list[T] = []
        error: BaseException | None = None
        for future in futures:
            if future.cancelled():
                continue
            try:
                results.append(future.result())
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                if error is None:
                    error = exc
                    for pending in futures:
                        pending.cancel()  # slices not yet started never start
        if error is not None:
            raise error
        return results

    # -- protocol ----------------------------------------------------------------------------
    def ensure(self, dimensions: int, metric: str) -> None:
        """Create the collection if missing; refuse one of another shape.

        Checked: the vector's distance metric, the stored vectors' dimension (from one object:
        Weaviate's schema does not record it; an empty collection is accepted), and each of our
        properties' data type and, for id-like ones, ``field`` tokenization. Missing properties
        are added (otherwise auto-schema would add them with ``word`` tokenization).
        """
        if metric != "cosine":
            raise SinkMismatch(f"the weaviate sink stores cosine vectors only, the model uses "
                               f"{metric}")
        config = self._call(f"read or create collection {self._collection_name}",
                            self._read_or_create)
        for prop in self._check_config(config):
            self._call(f"add property {prop.name}",
                       lambda coll, prop=prop: coll.config.add_property(prop))
        stored = self._stored_dimension()
        if stored is not None and stored != dimensions:
            raise SinkMismatch(
                f"weaviate collection {self.target} holds {stored}-d vectors but the model makes "
                f"{dimensions}-d ones; point sinks.weaviate.collection at a new collection (it is "
                "created on start) or run `memory-worker reindex` into one")
        self._dims = dimensions

    def _read_or_create(self, coll: Any) -> Any:
        from weaviate.classes.config import Configure, VectorDistances
        from weaviate.exceptions import UnexpectedStatusCodeError

        client = self._client
        if not client.collections.exists(self._collection_name):
            log.info("creating weaviate collection", extra={"target": self.target})
            try:
                client.collections.create(
                    self._collection_name, description="ai-memory-worker chunks",
                    properties=_schema_properties(),
                    vector_config=Configure.Vectors.self_provided(
                        name=VECTOR_NAME, vector_index_config=Configure.VectorIndex.hnsw(
                            distance_metric=VectorDistances.COSINE)))
            except UnexpectedStatusCodeError as exc:
                # Created meanwhile (another worker, or a create whose answer was lost).
                if exc.status_code != 422 or "already exists" not in str(exc.error):
                    raise
        return coll.config.get()

    def _check_config(self, config: Any) -> list[Any]:
        """Raise SinkMismatch if the collection does not fit; return our missing properties."""
        from weaviate.classes.config import Tokenization, VectorDistances

        if config.vector_config:
            names = sorted(config.vector_config)
            if VECTOR_NAME in config.vector_config or len(names) == 1:
                self._vector_name = VECTOR_NAME if VECTOR_NAME in names else names[0]
            else:
                raise SinkMismatch(f"weaviate collection {self.target} has named vectors {names} "
                                   f"but none called {VECTOR_NAME!r}")
            index_config = config.vector_config[self._vector_name].vector_index_config
        else:
            self._vector_name = None  # a legacy collection with one unnamed vector
            index_config = config.vector_index_config
        distance = getattr(index_config, "distance_metric", None)
        if distance is not None and distance != VectorDistances.COSINE:
            raise SinkMismatch(f"weaviate collection {self.target} uses the {distance.value} distance, "
                               "the worker needs cosine; point sinks.weaviate.collection elsewhere")
        have = {p.name: p for p in config.properties}
        problems, missing = [], []
        for prop in _schema_properties():
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
            raise SinkMismatch(f"weaviate collection {self.target} does not fit the worker: "
                               + "; ".join(problems) + ". Point sinks.weaviate.collection at a new "
                               "collection (it is created on start) or run `memory-worker reindex`")
        return missing

    def _stored_dimension(self, *, policy: RetryConfig | None = None) -> int | None:
        result = self._call("read one vector", lambda coll: coll.query.fetch_objects(
            limit=1, include_vector=True, return_properties=[]), policy=policy)
        for obj in result.objects:
            vector = obj.vector or {}
            values = vector.get(self._vector_name or VECTOR_NAME) or next(iter(vector.values()), None)
            if values is not None:
                return len(values)
        return None

    def upsert(self, records: Sequence[VectorRecord]) -> UpsertOutcome:
        if not records:
            return UpsertOutcome()
        n = self.cfg.batch_objects
        slices = [list(records[i:i + n]) for i in range(0, len(records), n)]
        outcome = UpsertOutcome()
        for rejected in self._parallel(self._write_slice, slices):
            outcome.rejected.update(rejected)
        outcome.written = len(records) - len(outcome.rejected)
        if outcome.rejected:
            first = next(iter(outcome.rejected.items()))
            log.warning("weaviate rejected records", extra={
                "target": self.target, "count": len(outcome.rejected),
                "records": sorted(outcome.rejected)[:5], "first_error": first[1][:300]})
        return outcome

    def _write_slice(self, records: list[VectorRecord]) -> dict[str, str]:
        """Insert one slice; retry failed objects; return the ones refused for good."""
        pending = records
        rejected: dict[str, str] = {}
        failing: dict[str, tuple[str, str]] = {}  # record id -> (kind, last message)

        def attempt(coll: Any) -> None:
            nonlocal pending
            errors = self._insert(coll, pending)
            retry = []
            for i, record in enumerate(pending):
                message = errors.get(i)
                if message is None:
                    failing.pop(record.id, None)
                    continue
                kind = object_error_kind(message)
                if kind == "missing":
                    raise SinkMismatch(f"weaviate collection {self.target} is gone ({message}); "
                                       "restart the worker to recreate it")
                if kind == "permanent":
                    rejected[record.id] = message
                    failing.pop(record.id, None)
                else:
                    retry.append(record)
                    failing[record.id] = (kind, message)
            pending = retry
            if pending:
                kinds = sorted({failing[r.id][0] for r in pending})
                raise _ObjectsFailing(f"weaviate {self.target}: {len(pending)} objects failed "
                                      f"({', '.join(kinds)}): {failing[pending[0].id][1][:200]}")

        try:
            self._call(f"insert {len(records)} objects", attempt)
        except _ObjectsFailing:
            transient = [rid for rid, (kind, _) in failing.items() if kind == "transient"]
            if transient:
                raise
            rejected.update({rid: message for rid, (_, message) in failing.items()})
        return rejected

    def _insert(self, coll: Any, records: Sequence[VectorRecord]) -> dict[int, str]:
        """``insert_many``; the per-object errors by position (all of them, never raised)."""
        from weaviate.classes.data import DataObject
        from weaviate.exceptions import WeaviateInsertManyAllFailedError

        name = self._vector_name
        objects = [DataObject(properties=_wire_properties(r.metadata), uuid=r.uuid,
                              vector={name: r.vector.tolist()} if name else r.vector.tolist())
                   for r in records]
        try:
            result = coll.data.insert_many(objects)
        except WeaviateInsertManyAllFailedError as exc:
            # Every object failed; the client keeps only the set of messages, not who got which.
            text = str(exc).split("Here is the set of all errors: ", 1)[-1]
            if len(records) == 1 or len(set(text.split("\n"))) <= 1:
                return {i: text for i in range(len(records))}
            half = len(records) // 2  # bisect until each object's own message is known
            first, second = self._insert(coll, records[:half]), self._insert(coll, records[half:])
            return {**first, **{half + i: m for i, m in second.items()}}
        return {i: error.message for i, error in result.errors.items()}

    def delete_document(self, doc_id: str) -> None:
        from weaviate.classes.query import Filter

        self._delete_where(Filter.by_property("doc_id").equal(doc_id), f"delete {doc_id!r}")

    def delete_tail(self, doc_id: str, keep: int, previous_count: int) -> None:
        """Delete chunks ``keep..`` by filter (so chunks beyond ``previous_count`` go too)."""
        from weaviate.classes.query import Filter

        if keep <= 0:
            self.delete_document(doc_id)
            return
        flt = Filter.all_of([Filter.by_property("doc_id").equal(doc_id),
                             Filter.by_property("chunk_index").greater_or_equal(int(keep))])
        self._delete_where(flt, f"delete tail of {doc_id!r} from {keep}")

    def _delete_where(self, flt: Any, what: str) -> None:
        """``delete_many`` until nothing matches: one call deletes at most QUERY_MAXIMUM_RESULTS."""
        while True:
            result = self._call(what, lambda coll: coll.data.delete_many(where=flt))
            if result.matches == 0:
                return
            if result.successful == 0:
                raise SinkUnavailable(f"weaviate {what} ({self.target}): {result.matches} objects "
                                      f"matched but none were deleted ({result.failed} failed)")

    def fetch_documents(self, doc_ids: Sequence[str]) -> dict[str, StoredDocument]:
        """Chunk 0 of each document, by its uuid (exact; no tokenization involved)."""
        from weaviate.classes.query import Filter

        owner = {chunk_uuid(chunk_id(d, 0)): d for d in dict.fromkeys(doc_ids)}
        uuids = list(owner)
        batches = [uuids[i:i + FETCH_BATCH_IDS] for i in range(0, len(uuids), FETCH_BATCH_IDS)]

        def fetch(batch: list[str]) -> list[Any]:
            result = self._call(f"fetch {len(batch)} documents", lambda coll: coll.query.fetch_objects(
                filters=Filter.by_id().contains_any(batch), limit=len(batch),
                return_properties=["doc_id", "version", "chunk_count", "text_hash", "meta_hash"]))
            return list(result.objects)

        found: dict[str, StoredDocument] = {}
        for objects in self._parallel(fetch, batches):
            for obj in objects:
                doc_id = owner.get(str(obj.uuid))
                props = _stored_properties(obj.properties)
                try:
                    if doc_id is not None and props.get("doc_id") == doc_id:
                        found[doc_id] = stored_from_metadata(props)
                except (KeyError, TypeError, ValueError):
                    log.warning("weaviate object without worker metadata ignored",
                                extra={"uuid": str(obj.uuid), "target": self.target})
        return found

    def query(self, vector: np.ndarray, k: int, where: QueryFilter) -> list[QueryHit]:
        from weaviate.classes.query import MetadataQuery

        if k <= 0:
            return []
        values = np.asarray(vector, dtype=np.float32).tolist()
        flt = weaviate_filter(where)
        result = self._call("query", lambda coll: coll.query.near_vector(
            near_vector=values, limit=min(k, MAX_QUERY_RESULTS), filters=flt,
            target_vector=self._vector_name, return_metadata=MetadataQuery(distance=True),
            return_properties=list(ALL_PROPERTIES)))
        hits = []
        for obj in result.objects:
            props = _stored_properties(obj.properties)
            record_id = chunk_id(str(props.get("doc_id", "")), int(props.get("chunk_index", 0)))
            hits.append(hit_from_metadata(record_id, 1.0 - float(obj.metadata.distance), props))
        return hits

    def info(self) -> SinkInfo:
        """One attempt per call, no retries: this is a probe for ``check`` and /readyz."""
        try:
            exists = self._call("exists", lambda coll: coll.exists(), policy=self._probe)
            if not exists:
                return SinkInfo(self.name, True, self.target, None, None, 0)
            config = self._call("read config", lambda coll: coll.config.get(), policy=self._probe)
            self._check_config(config)
            count = self._call("count", lambda coll: coll.aggregate.over_all(total_count=True),
                               policy=self._probe).total_count
            dims = self._dims or self._stored_dimension(policy=self._probe)
        except SinkMismatch as exc:
            return SinkInfo(self.name, True, self.target, None, None, None, error=str(exc))
        except WorkerError as exc:
            return SinkInfo(self.name, False, self.target, self._dims, None, None, error=str(exc))
        return SinkInfo(self.name, True, self.target, dims, "cosine", count)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            client, self._client, self._coll = self._client, None, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.debug("weaviate client close failed", exc_info=True)
