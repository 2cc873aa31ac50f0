"""Pinecone, through the SDK's REST data plane (``pinecone`` 10.2.0).

Retries belong to the worker, not to the SDK. The SDK hides three retry mechanisms; each is
taken out of play here:

* **Data-plane REST retries** (4 attempts on 408/429/5xx/transport errors, and a silent re-send
  of a POST whose connection dropped) are not reachable through any public argument. We set
  ``max_retries=0`` on the index client's private ``_RetryTransport._config``
  (:func:`disable_sdk_retries`); if that attribute path is missing on another SDK version we log
  a warning and go on with both layers of retries.
* **The process-global per-host retry budget** only gates the SDK's own retries, which are off,
  so an outage can never silently switch off ours (tested: 63 failures across seven calls).
* **The bulk-upsert admission gate** (``upsert(batch_size=...)``, with its 30 s cool-down) is
  never used: we split requests ourselves and call plain ``upsert``.

The control plane takes the public ``Pinecone(retry_config=RetryConfig(max_retries=0))``.
Every SDK call runs under :func:`worker.retry.retrying` with ``timeout=cfg.timeout_s`` per attempt,
and vendor exceptions are translated at this boundary (:func:`translate`).

Upserts are split into requests of at most ``max_request_vectors`` vectors and
``max_request_bytes`` bytes, measured exactly: the SDK encodes the body with orjson from the same
Python floats (``float32.tolist()``), so we size each record with orjson the same way. Requests
run ``max_parallel_requests`` at a time. A request refused for good (a 4xx) is bisected to find
the records at fault; they come back in ``UpsertOutcome.rejected``, the rest are written.

Crash safety: every write is an idempotent upsert or delete by id. A request that timed out may
still have been applied by the service; redoing it changes nothing. When one request's retries
run out, :class:`SinkUnavailable` is raised after the requests in flight finish; the caller keeps
the work in its spool and the whole (idempotent) upsert is redone later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
import orjson
from pydantic import Field, SecretStr

from worker.configbase import RetryConfig, Strict
from worker.errors import ConfigError, SinkMismatch, SinkUnavailable, WorkerError
from worker.ids import chunk_id, chunk_prefix
from worker.records import QueryFilter, QueryHit, SinkAnswer, SinkQuery, StoredDocument, VectorRecord
from worker.sparse import encode_query
from worker.sinks.base import (OnRetry, SinkInfo, SinkKind, UpsertOutcome, hit_from_metadata,
                               stored_from_metadata)
from worker.sinks.pinecone_wire import (MAX_IDS_PER_DELETE, MAX_LIST_PAGE, MAX_TOP_K, READY_POLL_S,
                                        READY_POLLS, DEFAULT_CONTROLLER_HOST, Missing, Refused,
                                        disable_sdk_retries, fetch_batches, from_wire,
                                        pinecone_filter, plan_requests, translate, wire_record)
from worker.sinks.vendor import VendorSink

log = logging.getLogger(__name__)
T = TypeVar("T")


class PineconeSinkConfig(Strict):
    api_key: SecretStr
    index: str
    namespace: str = ""
    index_host: str | None = None
    controller_host: str | None = None
    cloud: str = "aws"
    region: str = "us-east-1"
    timeout_s: float = Field(default=10.0, gt=0)
    max_parallel_requests: int = Field(default=8, ge=1, le=64)
    max_request_bytes: int = Field(default=2 * 1000 * 1000, ge=64 * 1024)
    max_request_vectors: int = Field(default=1000, ge=1, le=1000)
    #: The metric of an index the worker creates: ``dotproduct`` (the default) carries sparse
    #: BM25-style vectors for hybrid search, and equals cosine for the model's normalized
    #: vectors; ``cosine`` makes a dense-only index (hybrid then answers as vector).
    metric: Literal["dotproduct", "cosine"] = "dotproduct"


class PineconeSink(VendorSink):
    name = "pinecone"

    @classmethod
    def from_config(cls, cfg: PineconeSinkConfig, retry: RetryConfig, *,
                    on_retry: OnRetry | None = None) -> PineconeSink:
        return cls(cfg, retry, on_retry=on_retry)

    def __init__(self, cfg: PineconeSinkConfig, retry: RetryConfig, *,
                 on_retry: OnRetry | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        from pinecone import Pinecone
        from pinecone import RetryConfig as SdkRetryConfig
        from pinecone.errors import PineconeError

        api_key = cfg.api_key.get_secret_value().strip()
        if not api_key:  # the SDK would fall back to PINECONE_API_KEY on its own
            raise ConfigError("sinks.pinecone.api_key is empty")
        super().__init__(retry, max_parallel_requests=cfg.max_parallel_requests, on_retry=on_retry,
                         sleep=sleep)
        self.cfg = cfg
        self.target = f"{cfg.index}/{cfg.namespace}"
        self._timeout_s = cfg.timeout_s
        try:
            self._pc = Pinecone(api_key=api_key, host=cfg.controller_host or DEFAULT_CONTROLLER_HOST,
                                timeout=cfg.timeout_s, retry_config=SdkRetryConfig(max_retries=0),
                                connection_pool_maxsize=max(20, 2 * cfg.max_parallel_requests))
        except PineconeError as exc:  # never echo the key
            raise ConfigError(f"sinks.pinecone: cannot build the client: {type(exc).__name__}") from None
        self._index: Any = None
        self._lock = threading.Lock()
        self._dims: int | None = None
        self._metric: str | None = None
        self._integers: tuple[str, ...] = ()

    # -- plumbing ----------------------------------------------------------------------------
    def _attempt(self, what: str, fn: Callable[[], T]) -> T:
        """One SDK call; vendor exceptions leave translated."""
        from pinecone.errors import PineconeError

        try:
            return fn()
        except (PineconeError, OSError) as exc:
            raise translate(exc, what) from exc

    def _data(self, *, policy: RetryConfig | None = None) -> Any:
        """The data-plane client; resolves the host by describe unless ``index_host`` is set."""
        with self._lock:
            if self._index is None:
                host = self.cfg.index_host
                if not host:
                    model = self._describe(policy=policy)
                    if model is None:
                        raise Missing(f"pinecone index {self.cfg.index!r} does not exist; it is "
                                      "created by ensure() at start-up")
                    host = model.host
                    self._metric = self._metric or getattr(model, "metric", None)
                self._index = self._open(host)
            return self._index

    def _open(self, host: str) -> Any:
        from pinecone.errors import PineconeError

        try:
            index = self._pc.Index(host=host)
        except PineconeError as exc:
            raise ConfigError(f"sinks.pinecone.index_host {host!r} is not usable: {exc}") from None
        disable_sdk_retries(index)
        return index

    def _describe(self, *, policy: RetryConfig | None = None) -> Any | None:
        """The index model from the control plane, or None if there is no such index."""
        try:
            return self._call(f"describe_index {self.cfg.index}",
                              lambda: self._pc.describe_index(self.cfg.index), policy=policy)
        except Missing:
            return None

    # -- protocol ----------------------------------------------------------------------------
    def ensure(self, dimensions: int, metric: str) -> None:
        """Create the serverless index if missing; refuse an index of another shape.

        With ``index_host`` set the control plane is not used at all (it may be unreachable, e.g.
        behind a private endpoint): the index must exist, and its dimension (and metric, when
        reported) come from ``describe_index_stats``.
        """
        if metric != "cosine":
            raise SinkMismatch(f"the pinecone sink stores cosine vectors only, the model uses {metric}")
        if self.cfg.index_host:
            index = self._data()
            stats = self._call(f"describe_index_stats {self.cfg.index}",
                               lambda: index.describe_index_stats(timeout=self._timeout_s))
            have_dims, have_metric = stats.dimension, getattr(stats, "metric", None)
        else:
            model = self._describe() or self._create(dimensions)
            have_dims, have_metric = getattr(model, "dimension", None), getattr(model, "metric", None)
        # Normalized vectors: dotproduct ranks and scores exactly as cosine does.
        if (have_dims is not None and have_dims != dimensions) or \
                (have_metric or metric) not in ("cosine", "dotproduct"):
            raise SinkMismatch(
                f"pinecone index {self.cfg.index!r} holds {have_dims}-d vectors with the "
                f"{have_metric or 'unknown'} metric, but the model makes {dimensions}-d vectors "
                f"compared by {metric}; point sinks.pinecone.index at a new index (it is created "
                "on start) or run `memory-worker reindex` into one")
        self._dims, self._metric = dimensions, have_metric or metric
        if self._metric == "cosine":
            log.warning("pinecone index is cosine: it cannot hold sparse vectors, so hybrid and "
                        "keyword queries answer as vector; create a dotproduct index (the "
                        "default for a new one) and reindex into it for hybrid search",
                        extra={"index": self.cfg.index})

    @property
    def hybrid(self) -> bool:
        """The index takes sparse vectors (dotproduct metric)."""
        return self._metric == "dotproduct"

    def declare_fields(self, fields: Any) -> None:  # noqa: ANN401
        """Pinecone metadata is schemaless; integer fields are read back as ints."""
        self._integers = tuple(n for n, f in fields.items() if f.type == "integer")

    def _create(self, dimensions: int) -> Any:
        from pinecone import ServerlessSpec

        name = self.cfg.index
        log.info("creating pinecone index", extra={"index": name, "dimension": dimensions,
                                                    "cloud": self.cfg.cloud, "region": self.cfg.region})
        try:
            self._call(f"create_index {name}", lambda: self._pc.create_index(
                name=name, spec=ServerlessSpec(cloud=self.cfg.cloud, region=self.cfg.region),
                dimension=dimensions, metric=self.cfg.metric, timeout=-1))  # we poll, with our sleep
        except Refused as exc:
            if exc.status != 409:  # 409: created meanwhile (by another worker, or a lost answer)
                raise
        for _ in range(READY_POLLS):
            model = self._describe()
            if model is not None and model.status.ready:
                return model
            self._sleep(READY_POLL_S)
        raise SinkUnavailable(f"pinecone index {name!r} is not ready after "
                              f"{READY_POLLS * READY_POLL_S:.0f} s", retry_after_s=30.0)

    def upsert(self, records: Sequence[VectorRecord]) -> UpsertOutcome:
        if not records:
            return UpsertOutcome()
        index = self._data()
        items = [wire_record(r, sparse=self.hybrid) for r in records]
        sizes = [len(orjson.dumps(item)) for item in items]
        envelope: dict[str, Any] = {"vectors": []}
        if self.cfg.namespace:
            envelope["namespace"] = self.cfg.namespace
        runs = plan_requests(sizes, overhead=len(orjson.dumps(envelope)),
                             max_vectors=self.cfg.max_request_vectors,
                             max_bytes=self.cfg.max_request_bytes)

        def send(batch: list[dict[str, Any]]) -> UpsertOutcome:
            try:
                self._call(f"upsert into {self.target}", lambda: index.upsert(
                    vectors=batch, namespace=self.cfg.namespace, timeout=self._timeout_s))
                return UpsertOutcome(written=len(batch))
            except Refused as exc:
                if len(batch) == 1:
                    return UpsertOutcome(rejected={batch[0]["id"]: exc.server_message})
                half = len(batch) // 2  # bisect to the records at fault; the rest are written
                first, second = send(batch[:half]), send(batch[half:])
                return UpsertOutcome(first.written + second.written,
                                     {**first.rejected, **second.rejected})

        outcome = UpsertOutcome()
        for part in self._parallel(send, [items[a:b] for a, b in runs]):
            outcome.written += part.written
            outcome.rejected.update(part.rejected)
        if outcome.rejected:
            log.warning("pinecone rejected records", extra={"count": len(outcome.rejected),
                                                             "target": self.target})
        return outcome

    def delete_document(self, doc_id: str) -> None:
        """Delete every chunk: list the ids by the prefix ``<doc_id>#``, delete them by id.

        Chosen over delete-by-filter on ``doc_id``: chunk ids are exact by construction (doc
        ids never contain ``#``), so this removes chunks whatever their metadata holds; it uses
        the same path as :meth:`delete_tail`; and list + delete-by-ids works on every index type
        and API version (delete-by-filter was refused on serverless until recently). Hazard:
        listing is eventually consistent, so chunks upserted moments ago may be missed; the
        pipeline's ledger tombstone keeps them from being served as current, and a later
        delete_document (or reindex) removes them.
        """
        self._delete_ids(self._list_ids(chunk_prefix(doc_id)))

    def delete_tail(self, doc_id: str, keep: int, previous_count: int) -> None:
        """Delete chunks ``keep..``: the computed ids (visible or not), plus any listed leftover."""
        prefix = chunk_prefix(doc_id)
        doomed = {chunk_id(doc_id, i) for i in range(max(0, keep), previous_count)}
        for vid in self._list_ids(prefix):
            suffix = vid[len(prefix):]
            if suffix.isdigit() and int(suffix) >= keep:
                doomed.add(vid)
        self._delete_ids(sorted(doomed))

    def _list_ids(self, prefix: str) -> list[str]:
        index, ids, token = self._data(), [], None
        while True:
            page = self._call(f"list {self.target} prefix", lambda token=token: index.list_paginated(
                prefix=prefix, limit=MAX_LIST_PAGE, pagination_token=token,
                namespace=self.cfg.namespace, timeout=self._timeout_s))
            ids.extend(v.id for v in page.vectors)
            following = page.pagination.next if page.pagination is not None else None
            if not following or following == token:
                return ids
            token = following

    def _delete_ids(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        index = self._data()
        for start in range(0, len(ids), MAX_IDS_PER_DELETE):
            batch = list(ids[start:start + MAX_IDS_PER_DELETE])
            self._call(f"delete from {self.target}", lambda batch=batch: index.delete(
                ids=batch, namespace=self.cfg.namespace, timeout=self._timeout_s))

    def drop_target(self) -> None:
        """``migrate finish``: delete every vector of this namespace (Pinecone removes an empty
        namespace); a generation of its own index deletes the index."""
        index = self._data()
        self._call(f"drop {self.target}", lambda: index.delete(delete_all=True, namespace=self.cfg.namespace,
                                                              timeout=self._timeout_s))

    def fetch_documents(self, doc_ids: Sequence[str]) -> dict[str, StoredDocument]:
        if not doc_ids:
            return {}
        index = self._data()
        owner = {chunk_id(d, 0): d for d in doc_ids}

        def fetch(ids: list[str]) -> dict[str, Any]:
            response = self._call(f"fetch from {self.target}", lambda: index.fetch(
                ids=ids, namespace=self.cfg.namespace, timeout=self._timeout_s))
            return {vid: vector.metadata for vid, vector in response.vectors.items()}

        found: dict[str, StoredDocument] = {}
        for part in self._parallel(fetch, fetch_batches(owner)):
            for vid, metadata in part.items():
                try:
                    found[owner[vid]] = stored_from_metadata(metadata or {})
                except (KeyError, TypeError, ValueError):
                    log.warning("pinecone record without worker metadata ignored",
                                extra={"id": vid, "target": self.target})
        return found

    def fetch_chunks(self, ids: Sequence[str]) -> dict[str, QueryHit]:
        if not ids:
            return {}
        index = self._data()

        def fetch(batch: list[str]) -> dict[str, Any]:
            response = self._call(f"fetch from {self.target}", lambda: index.fetch(
                ids=batch, namespace=self.cfg.namespace, timeout=self._timeout_s))
            return {vid: vector.metadata for vid, vector in response.vectors.items()}

        found: dict[str, QueryHit] = {}
        for part in self._parallel(fetch, fetch_batches({i: i for i in ids})):
            for vid, metadata in part.items():
                found[vid] = hit_from_metadata(vid, 0.0, from_wire(metadata, self._integers))
        return found

    def query(self, vector: np.ndarray, k: int, where: QueryFilter) -> list[QueryHit]:
        return self.search(SinkQuery(k=k, where=where, vector=vector)).hits

    def search(self, q: SinkQuery) -> SinkAnswer:
        """Pinecone's single-index hybrid: the dense query scaled by ``alpha`` and the sparse
        one by ``1 − alpha``, so the score is ``alpha·cos + (1 − alpha)·bm25``
        (https://docs.pinecone.io/guides/search/hybrid-search). Keyword mode is alpha 0. A cosine
        index cannot take a sparse query: it answers as vector, and says so."""
        if q.k <= 0:
            return SinkAnswer([], q.mode)
        index = self._data()
        if self._metric is None:
            model = self._describe() if not self.cfg.index_host else None
            self._metric = getattr(model, "metric", None) or "cosine"
        mode, warnings = q.mode, []
        alpha = {"vector": 1.0, "keyword": 0.0}.get(mode, q.alpha)
        sparse = None
        if mode != "vector":
            if not self.hybrid:
                warnings.append(f"pinecone index {self.cfg.index!r} uses the {self._metric} metric and "
                                f"holds no sparse vectors, so this {mode} query ran as vector; "
                                "reindex into a dotproduct index for hybrid search")
                mode, alpha = "vector", 1.0
            else:
                sparse = encode_query(q.text, 1.0 - alpha) if alpha < 1.0 else None
                if sparse is None and mode == "keyword":
                    return SinkAnswer([], mode, ["the query has no keyword terms"])
        dense = np.asarray(q.vector, dtype=np.float32) * np.float32(alpha) if q.vector is not None \
            else np.zeros(self._dims or 0, dtype=np.float32)
        values = dense.tolist()  # the SDK refuses ndarrays here
        flt = pinecone_filter(q.where)
        response = self._call(f"query {self.target}", lambda: index.query(
            top_k=min(q.k, MAX_TOP_K), vector=values, sparse_vector=sparse,
            namespace=self.cfg.namespace, filter=flt, include_metadata=True,
            timeout=self._timeout_s))
        hits = [hit_from_metadata(m.id, m.score, from_wire(m.metadata, self._integers))
                for m in response.matches]
        return SinkAnswer(hits, mode, warnings)

    def info(self) -> SinkInfo:
        """One attempt, no retries: this is a probe for ``check`` and /readyz."""
        target = self.target
        try:
            index = self._data(policy=self._probe)
            stats = self._call(f"describe_index_stats {self.cfg.index}",
                               lambda: index.describe_index_stats(timeout=self._timeout_s),
                               policy=self._probe)
        except Missing as exc:
            if not self.cfg.index_host:  # reachable; ensure() creates the index on start
                return SinkInfo(self.name, True, target, None, None, None)
            return SinkInfo(self.name, False, target, None, None, None, error=str(exc))
        except WorkerError as exc:
            return SinkInfo(self.name, False, target, None, None, None, error=str(exc))
        namespaces = stats.namespaces or {}
        keys = (self.cfg.namespace,) if self.cfg.namespace else ("", "__default__")
        summary = next((namespaces[k] for k in keys if k in namespaces), None)
        metric = getattr(stats, "metric", None) or self._metric
        warnings = () if metric in (None, "dotproduct") else (
            f"the index uses the {metric} metric and holds no sparse vectors: hybrid and keyword "
            "queries answer as vector; reindex into a dotproduct index for hybrid search",)
        return SinkInfo(self.name, True, target, stats.dimension, metric,
                        summary.vector_count if summary is not None else 0, warnings=warnings)

    def close(self) -> None:
        self._close_pool()
        for client in (self._index, self._pc):
            try:
                if client is not None:
                    client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.debug("pinecone client close failed", exc_info=True)


KIND = SinkKind("pinecone", PineconeSinkConfig, PineconeSink.from_config)
