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
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
import httpx
import numpy as np
from pydantic import Field, SecretStr

from worker.configbase import RetryConfig, Strict
from worker.errors import ConfigError, SinkMismatch, SinkUnavailable, WorkerError
from worker.ids import chunk_id, chunk_uuid
from worker.fields import FieldSpec
from worker.records import QueryFilter, QueryHit, SinkAnswer, SinkQuery, StoredDocument, VectorRecord
from worker.sinks.base import (OnRetry, SinkInfo, SinkKind, UpsertOutcome, hit_from_metadata,
                               stored_from_metadata)
from worker.sinks.vendor import VendorSink, parse_retry_after
from worker.sinks.weaviate_alias import WeaviateAliases
from worker.sinks.weaviate_wire import (ALL_PROPERTIES, FETCH_BATCH_IDS, MAX_QUERY_RESULTS, VECTOR_NAME,
                                        GrpcUnavailable, ObjectsFailing, check_collection, fail_fast_grpc,
                                        install_log_filter, object_error_kind, schema_properties,
                                        stored_properties, translate, weaviate_filter, wire_properties)

log = logging.getLogger(__name__)
T = TypeVar("T")


class WeaviateSinkConfig(Strict):
    url: str
    grpc_host: str | None = None
    grpc_port: int = 50051
    grpc_secure: bool | None = None
    api_key: SecretStr | None = None
    collection: str = "MemoryChunk"
    timeout_s: float = Field(default=10.0, gt=0)
    batch_objects: int = Field(default=200, ge=1)
    max_parallel_requests: int = Field(default=2, ge=1, le=16)
    #: A collection alias (server >= 1.32) ``migrate switch``/``rollback`` keep pointing at the
    #: serving generation's collection, for other readers; must differ from every collection.
    alias: str | None = None


class WeaviateSink(VendorSink):
    name = "weaviate"
    fields: Mapping[str, FieldSpec] = MappingProxyType({})
    _integers: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: WeaviateSinkConfig, retry: RetryConfig, *,
                    on_retry: OnRetry | None = None) -> WeaviateSink:
        return cls(cfg, retry, on_retry=on_retry)

    def __init__(self, cfg: WeaviateSinkConfig, retry: RetryConfig, *,
                 on_retry: OnRetry | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
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
        super().__init__(retry, max_parallel_requests=cfg.max_parallel_requests, on_retry=on_retry,
                         sleep=sleep)
        self._lock = threading.Lock()
        self._client: Any = None
        self._coll: Any = None
        self._http_retry_after = threading.local()
        self._vector_name: str | None = VECTOR_NAME
        self._dims: int | None = None
        self._aliases = WeaviateAliases(self._call_client, f"{url.scheme}://{url.netloc}")
        install_log_filter()

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
                self._watchparse_retry_after(client)
            except BaseException:
                client.close()
                raise
            self._client = client
            self._coll = client.collections.use(self._collection_name)
            return self._coll

    def _watchparse_retry_after(self, client: Any) -> None:
        """Keep a 429/503's Retry-After: the client's REST errors drop the response headers."""
        http = getattr(getattr(client, "_connection", None), "_client", None)
        hooks = getattr(http, "event_hooks", None)
        if hooks is None:
            return
        store = self._http_retry_after

        def on_response(response: Any) -> None:
            if response.status_code in (429, 503):
                store.value = parse_retry_after(response.headers.get("retry-after"))

        http.event_hooks = {**hooks, "response": [*hooks.get("response", []), on_response]}

    def _attempt(self, what: str, fn: Callable[[Any], T]) -> T:
        """``fn(collection)`` once; vendor exceptions leave translated."""
        from weaviate.exceptions import WeaviateBaseError

        try:
            return fn(self._connect())
        except WorkerError:
            raise
        except (WeaviateBaseError, GrpcUnavailable, grpc.RpcError, httpx.HTTPError, OSError) as exc:
            raise self._translate(exc, what) from exc

    def _call_client(self, what: str, fn: Callable[[Any], T]) -> T:
        """``fn(client)`` under our retry policy, for calls not bound to our collection."""
        return self._call(what, lambda _coll: fn(self._client))

    def _translate(self, exc: BaseException, what: str) -> WorkerError:
        retry_after = self._http_retry_after.__dict__.pop("value", None)
        return translate(exc, f"{what} ({self.target})", retry_after_s=retry_after)

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
                    properties=schema_properties(self.fields),
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
        self._vector_name, missing = check_collection(config, self.target, self.fields)
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
                raise ObjectsFailing(f"weaviate {self.target}: {len(pending)} objects failed "
                                      f"({', '.join(kinds)}): {failing[pending[0].id][1][:200]}")

        try:
            self._call(f"insert {len(records)} objects", attempt)
        except ObjectsFailing:
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
        objects = [DataObject(properties=wire_properties(r.metadata, self.fields), uuid=r.uuid,
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
                props = stored_properties(obj.properties, self._integers)
                try:
                    if doc_id is not None and props.get("doc_id") == doc_id:
                        found[doc_id] = stored_from_metadata(props)
                except (KeyError, TypeError, ValueError):
                    log.warning("weaviate object without worker metadata ignored",
                                extra={"uuid": str(obj.uuid), "target": self.target})
        return found

    def declare_fields(self, fields: Mapping[str, FieldSpec]) -> None:
        """The bindings' typed metadata fields: one filterable property each (added by ensure)."""
        self.fields = MappingProxyType(dict(fields))
        self._integers = tuple(n for n, f in fields.items() if f.type == "integer")

    def _returned(self) -> list[str]:
        return [*ALL_PROPERTIES, *sorted(self.fields)]

    def _hits(self, objects: Any, score: Any) -> list[QueryHit]:  # noqa: ANN401
        hits = []
        for obj in objects:
            props = stored_properties(obj.properties, self._integers)
            record_id = chunk_id(str(props.get("doc_id", "")), int(props.get("chunk_index", 0)))
            hits.append(hit_from_metadata(record_id, score(obj.metadata), props))
        return hits

    def fetch_chunks(self, ids: Sequence[str]) -> dict[str, QueryHit]:
        """By uuid (UUIDv5 of the chunk id): exact, no tokenization involved."""
        from weaviate.classes.query import Filter

        wanted = {chunk_uuid(i): i for i in ids}
        uuids = list(wanted)
        batches = [uuids[i:i + FETCH_BATCH_IDS] for i in range(0, len(uuids), FETCH_BATCH_IDS)]

        def fetch(batch: list[str]) -> list[Any]:
            result = self._call(f"fetch {len(batch)} chunks", lambda coll: coll.query.fetch_objects(
                filters=Filter.by_id().contains_any(batch), limit=len(batch),
                return_properties=self._returned()))
            return list(result.objects)

        found: dict[str, QueryHit] = {}
        for objects in self._parallel(fetch, batches):
            for hit in self._hits(objects, lambda _m: 0.0):
                if hit.id in ids:
                    found[hit.id] = hit
        return found

    def query(self, vector: np.ndarray, k: int, where: QueryFilter) -> list[QueryHit]:
        return self.search(SinkQuery(k=k, where=where, vector=vector)).hits

    def search(self, q: SinkQuery) -> SinkAnswer:
        """Weaviate's own mechanisms: ``near_vector`` (cosine), ``bm25`` on the ``text``
        property, and ``hybrid`` with an explicit ``alpha`` and relative-score fusion (the
        server default since 1.24, set explicitly; docs: concepts/search/hybrid-search)."""
        from weaviate.classes.query import HybridFusion, MetadataQuery

        if q.k <= 0:
            return SinkAnswer([], q.mode)
        limit = min(q.k, MAX_QUERY_RESULTS)
        flt = weaviate_filter(q.where)
        returned = self._returned()
        if q.mode == "vector":
            values = np.asarray(q.vector, dtype=np.float32).tolist()
            result = self._call("query", lambda coll: coll.query.near_vector(
                near_vector=values, limit=limit, filters=flt, target_vector=self._vector_name,
                return_metadata=MetadataQuery(distance=True), return_properties=returned))
            return SinkAnswer(self._hits(result.objects, lambda m: 1.0 - float(m.distance)), "vector")
        if q.mode == "keyword":
            result = self._call("keyword query", lambda coll: coll.query.bm25(
                query=q.text, query_properties=["text"], limit=limit, filters=flt,
                return_metadata=MetadataQuery(score=True), return_properties=returned))
            return SinkAnswer(self._hits(result.objects, lambda m: float(m.score or 0.0)), "keyword")
        values = np.asarray(q.vector, dtype=np.float32).tolist()
        result = self._call("hybrid query", lambda coll: coll.query.hybrid(
            query=q.text, vector=values, alpha=float(q.alpha), target_vector=self._vector_name,
            fusion_type=HybridFusion.RELATIVE_SCORE, query_properties=["text"], limit=limit,
            filters=flt, return_metadata=MetadataQuery(score=True), return_properties=returned))
        return SinkAnswer(self._hits(result.objects, lambda m: float(m.score or 0.0)), "hybrid")

    # -- aliases (index generations; contracts in worker.sinks.weaviate_alias) ------------------
    def point_alias(self, alias: str, collection: str) -> None:
        """Create ``alias`` or repoint it (atomically) at ``collection``; idempotent."""
        self._aliases.point(alias, collection)

    def alias_target(self, alias: str) -> str | None:
        """The collection ``alias`` points at; None if there is no such alias."""
        return self._aliases.target(alias)

    def drop_alias(self, alias: str) -> None:
        """Delete ``alias`` (missing is fine); its collection stays."""
        self._aliases.drop(alias)

    def drop_collection(self, name: str) -> None:
        """Delete collection ``name`` (missing is fine); ConfigError while an alias points to it."""
        self._aliases.drop_collection(name)

    def drop_target(self) -> None:
        """``migrate finish``: delete this generation's collection."""
        self.drop_collection(self._collection_name)

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
        self._close_pool()
        with self._lock:
            client, self._client, self._coll = self._client, None, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.debug("weaviate client close failed", exc_info=True)


KIND = SinkKind("weaviate", WeaviateSinkConfig, WeaviateSink.from_config)
