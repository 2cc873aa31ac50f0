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

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote

import numpy as np
import orjson

from worker.config import PineconeSinkConfig, RetryConfig
from worker.errors import ConfigError, FatalError, SinkMismatch, SinkUnavailable, WorkerError
from worker.ids import chunk_id, chunk_prefix
from worker.records import QueryFilter, QueryHit, StoredDocument, VectorRecord
from worker.retry import retrying
from worker.sinks.base import SinkInfo, UpsertOutcome, hit_from_metadata, stored_from_metadata

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_CONTROLLER_HOST = "https://api.pinecone.io"
MAX_IDS_PER_DELETE = 1_000
MAX_LIST_PAGE = 100
MAX_TOP_K = 10_000
FETCH_BATCH_IDS = 100  # fetch is a GET with repeated ids: keep the URL short
FETCH_BATCH_URL_CHARS = 8_000
READY_POLLS = 120  # a new serverless index is usually ready in seconds
READY_POLL_S = 2.0


class _Refused(FatalError):
    """Pinecone refused a request for good (a 4xx other than 401/402/403/404/408/429).

    Inside :meth:`PineconeSink.upsert` this splits the request to find the records at fault;
    anywhere else it is a bug in the request we built, so it surfaces as a FatalError.
    """

    def __init__(self, what: str, status: int | None, message: str) -> None:
        super().__init__(f"pinecone refused {what} ({status or 'client-side'}): {message}")
        self.status = status
        self.server_message = f"HTTP {status}: {message}" if status else message


class _Missing(ConfigError):
    """The index does not exist (404)."""


def translate(exc: BaseException, what: str) -> WorkerError:
    """The worker error for a vendor exception (``raise translate(exc, ...) from exc``)."""
    from pinecone.errors import (ApiError, IndexInitFailedError, IndexTerminatedError,
                                 PineconeTypeError, PineconeValueError, RateLimitError)

    if isinstance(exc, RateLimitError):
        return SinkUnavailable(f"pinecone {what}: rate limited (429): {exc.message}",
                               retry_after_s=exc.retry_after)
    if isinstance(exc, ApiError):
        status = exc.status_code
        if status >= 500 or status == 408:
            return SinkUnavailable(f"pinecone {what}: {exc}", retry_after_s=_retry_after(exc.headers))
        if status in (401, 403):
            return ConfigError(f"pinecone refused the API key ({status}) for {what}: set "
                               "sinks.pinecone.api_key to a key of the project that holds the index")
        if status == 402:
            return ConfigError(f"pinecone {what}: payment required (402); the project cannot write")
        if status == 404:
            return _Missing(f"pinecone {what}: not found (404): {exc.message}; check "
                            "sinks.pinecone.index and sinks.pinecone.index_host")
        return _Refused(what, status, exc.message)
    if isinstance(exc, (PineconeValueError, PineconeTypeError)):
        return _Refused(what, None, str(exc))
    if isinstance(exc, (IndexInitFailedError, IndexTerminatedError)):
        return ConfigError(f"pinecone {what}: {exc}")
    # Timeouts, connection errors, unparseable answers (a proxy's HTML page), socket errors.
    return SinkUnavailable(f"pinecone {what}: {type(exc).__name__}: {exc}")


def _retry_after(headers: dict[str, str] | None) -> float | None:
    raw = {k.lower(): v for k, v in (headers or {}).items()}.get("retry-after")
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


def disable_sdk_retries(index: Any) -> bool:
    """Switch off the SDK's data-plane REST retries (private attribute; guarded)."""
    try:
        transport = index._http._client._transport
        transport._config = dataclasses.replace(transport._config, max_retries=0)
        if transport._config.max_retries == 0:
            return True
    except (AttributeError, TypeError, ValueError):
        pass
    log.warning("pinecone SDK retries could not be disabled; its hidden retries and per-host "
                "retry budget stay active under ours", extra={"sdk": _sdk_version()})
    return False


def _sdk_version() -> str:
    try:
        import pinecone

        return str(pinecone.__version__)
    except Exception:  # noqa: BLE001 - only for a log line
        return "?"


def wire_record(record: VectorRecord) -> dict[str, Any]:
    """The record as the SDK puts it on the wire: float32 values as Python floats, no nulls."""
    metadata = {k: list(v) if isinstance(v, tuple) else v
                for k, v in record.metadata.items() if v is not None}
    return {"id": record.id, "values": np.asarray(record.vector, dtype=np.float32).tolist(),
            "metadata": metadata}


def plan_requests(sizes: Sequence[int], *, overhead: int, max_vectors: int,
                  max_bytes: int) -> list[tuple[int, int]]:
    """Cut items of JSON ``sizes`` into ``[start, end)`` runs, in order, under both limits.

    A body is ``overhead`` bytes plus the items and one comma between each two. An item too big
    for any request goes alone (the server refuses it and it comes back rejected).
    """
    runs: list[tuple[int, int]] = []
    start, used = 0, overhead
    for i, size in enumerate(sizes):
        if i > start and (i - start >= max_vectors or used + 1 + size > max_bytes):
            runs.append((start, i))
            start, used = i, overhead
        used += size + (1 if i > start else 0)
    if start < len(sizes):
        runs.append((start, len(sizes)))
    return runs


def pinecone_filter(where: QueryFilter) -> dict[str, Any]:
    flt: dict[str, Any] = {}
    for name in ("source", "collection", "doc_id"):
        value = getattr(where, name)
        if value:
            flt[name] = {"$eq": value}
    published: dict[str, float] = {}
    if where.published_after is not None:
        published["$gte"] = float(where.published_after)
    if where.published_before is not None:
        published["$lt"] = float(where.published_before)
    if published:
        flt["published_at"] = published
    return flt


def _from_wire(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Pinecone stores every number as float64: give the integer fields back as ints."""
    out = dict(metadata or {})
    for name in ("chunk_index", "chunk_count"):
        value = out.get(name)
        if isinstance(value, float) and value.is_integer():
            out[name] = int(value)
    return out


class PineconeSink:
    name = "pinecone"

    def __init__(self, cfg: PineconeSinkConfig, retry: RetryConfig, *,
                 on_retry: Callable[[BaseException, float], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        from pinecone import Pinecone
        from pinecone import RetryConfig as SdkRetryConfig
        from pinecone.errors import PineconeError

        api_key = cfg.api_key.get_secret_value().strip()
        if not api_key:  # the SDK would fall back to PINECONE_API_KEY on its own
            raise ConfigError("sinks.pinecone.api_key is empty")
        self.cfg = cfg
        self.target = f"{cfg.index}/{cfg.namespace}"
        self._retry = retry
        self._probe = RetryConfig(max_attempts=1, max_elapsed_s=retry.max_elapsed_s)
        self._on_retry = on_retry
        self._sleep = sleep
        self._timeout_s = cfg.timeout_s
        try:
            self._pc = Pinecone(api_key=api_key, host=cfg.controller_host or DEFAULT_CONTROLLER_HOST,
                                timeout=cfg.timeout_s, retry_config=SdkRetryConfig(max_retries=0),
                                connection_pool_maxsize=max(20, 2 * cfg.max_parallel_requests))
        except PineconeError as exc:  # never echo the key
            raise ConfigError(f"sinks.pinecone: cannot build the client: {type(exc).__name__}") from None
        self._index: Any = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(cfg.max_parallel_requests, thread_name_prefix="pinecone")
        self._dims: int | None = None
        self._metric: str | None = None

    # -- plumbing ----------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T], *, policy: RetryConfig | None = None) -> T:
        """One SDK call under our retry policy; vendor exceptions leave translated."""
        from pinecone.errors import PineconeError

        def attempt() -> T:
            try:
                return fn()
            except (PineconeError, OSError) as exc:
                raise translate(exc, what) from exc

        def on_retry(exc: BaseException, sleep_s: float) -> None:
            log.warning("pinecone call failed; retrying", extra={
                "op": what, "error": str(exc)[:200], "sleep_s": round(sleep_s, 3)})
            if self._on_retry is not None:
                self._on_retry(exc, sleep_s)

        return retrying(policy or self._retry, on_retry=on_retry, sleep=self._sleep)(attempt)

    def _data(self, *, policy: RetryConfig | None = None) -> Any:
        """The data-plane client; resolves the host by describe unless ``index_host`` is set."""
        with self._lock:
            if self._index is None:
                host = self.cfg.index_host
                if not host:
                    model = self._describe(policy=policy)
                    if model is None:
                        raise _Missing(f"pinecone index {self.cfg.index!r} does not exist; it is "
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
        except _Missing:
            return None

    def _parallel(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        """``fn`` over ``items`` on the bounded pool; the first error is raised after the rest."""
        if len(items) <= 1:
            return [fn(item) for item in items]
        futures = [self._pool.submit(fn, item) for item in items]
        results: list[T] = []
        error: BaseException | None = None
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                if error is None:
                    error = exc
                    for pending in futures:
                        pending.cancel()  # fail fast: requests not yet started never start
        if error is not None:
            raise error
        return results

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
        if (have_dims is not None and have_dims != dimensions) or (have_metric or metric) != metric:
            raise SinkMismatch(
                f"pinecone index {self.cfg.index!r} holds {have_dims}-d vectors with the "
                f"{have_metric or 'unknown'} metric, but the model makes {dimensions}-d vectors "
                f"compared by {metric}; point sinks.pinecone.index at a new index (it is created "
                "on start) or run `memory-worker reindex` into one")
        self._dims, self._metric = dimensions, metric

    def _create(self, dimensions: int) -> Any:
        from pinecone import ServerlessSpec

        name = self.cfg.index
        log.info("creating pinecone index", extra={"index": name, "dimension": dimensions,
                                                    "cloud": self.cfg.cloud, "region": self.cfg.region})
        try:
            self._call(f"create_index {name}", lambda: self._pc.create_index(
                name=name, spec=ServerlessSpec(cloud=self.cfg.cloud, region=self.cfg.region),
                dimension=dimensions, metric="cosine", timeout=-1))  # we poll, with our sleep
        except _Refused as exc:
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
        items = [wire_record(r) for r in records]
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
            except _Refused as exc:
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
        for part in self._parallel(fetch, _fetch_batches(owner)):
            for vid, metadata in part.items():
                try:
                    found[owner[vid]] = stored_from_metadata(metadata or {})
                except (KeyError, TypeError, ValueError):
                    log.warning("pinecone record without worker metadata ignored",
                                extra={"id": vid, "target": self.target})
        return found

    def query(self, vector: np.ndarray, k: int, where: QueryFilter) -> list[QueryHit]:
        if k <= 0:
            return []
        index = self._data()
        values = np.asarray(vector, dtype=np.float32).tolist()  # the SDK refuses ndarrays here
        flt = pinecone_filter(where) or None
        response = self._call(f"query {self.target}", lambda: index.query(
            top_k=min(k, MAX_TOP_K), vector=values, namespace=self.cfg.namespace, filter=flt,
            include_metadata=True, timeout=self._timeout_s))
        return [hit_from_metadata(m.id, m.score, _from_wire(m.metadata)) for m in response.matches]

    def info(self) -> SinkInfo:
        """One attempt, no retries: this is a probe for ``check`` and /readyz."""
        target = self.target
        try:
            index = self._data(policy=self._probe)
            stats = self._call(f"describe_index_stats {self.cfg.index}",
                               lambda: index.describe_index_stats(timeout=self._timeout_s),
                               policy=self._probe)
        except _Missing as exc:
            if not self.cfg.index_host:  # reachable; ensure() creates the index on start
                return SinkInfo(self.name, True, target, None, None, None)
            return SinkInfo(self.name, False, target, None, None, None, error=str(exc))
        except WorkerError as exc:
            return SinkInfo(self.name, False, target, None, None, None, error=str(exc))
        namespaces = stats.namespaces or {}
        keys = (self.cfg.namespace,) if self.cfg.namespace else ("", "__default__")
        summary = next((namespaces[k] for k in keys if k in namespaces), None)
        return SinkInfo(self.name, True, target, stats.dimension,
                        getattr(stats, "metric", None) or self._metric,
                        summary.vector_count if summary is not None else 0)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for client in (self._index, self._pc):
            try:
                if client is not None:
                    client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.debug("pinecone client close failed", exc_info=True)


def _fetch_batches(owner: dict[str, str]) -> list[list[str]]:
    """Chunk-0 ids in batches that keep the fetch URL short (ids are percent-encoded)."""
    batches: list[list[str]] = []
    current: list[str] = []
    chars = 0
    for vid in owner:
        cost = len(quote(vid, safe="")) + 5  # "&ids="
        if current and (len(current) >= FETCH_BATCH_IDS or chars + cost > FETCH_BATCH_URL_CHARS):
            batches.append(current)
            current, chars = [], 0
        current.append(vid)
        chars += cost
    if current:
        batches.append(current)
    return batches
