"""Pinecone wire details: error translation, the SDK's hidden retries, request sizing, filters.

Pure helpers for :mod:`worker.sinks.pinecone` (split from it along the transport seam).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import numpy as np

from worker.errors import ConfigError, FatalError, SinkUnavailable, WorkerError
from worker.filters import pinecone_filter as render_filter
from worker.records import QueryFilter, VectorRecord
from worker.sparse import encode_document
from worker.sinks.vendor import parse_retry_after

log = logging.getLogger(__name__)

DEFAULT_CONTROLLER_HOST = "https://api.pinecone.io"
MAX_IDS_PER_DELETE = 1_000
MAX_LIST_PAGE = 100
MAX_TOP_K = 10_000
FETCH_BATCH_IDS = 100  # fetch is a GET with repeated ids: keep the URL short
FETCH_BATCH_URL_CHARS = 8_000
READY_POLLS = 120  # a new serverless index is usually ready in seconds
READY_POLL_S = 2.0


class Refused(FatalError):
    """Pinecone refused a request for good (a 4xx other than 401/402/403/404/408/429).

    Inside :meth:`PineconeSink.upsert` this splits the request to find the records at fault;
    anywhere else it is a bug in the request we built, so it surfaces as a FatalError.
    """

    def __init__(self, what: str, status: int | None, message: str) -> None:
        super().__init__(f"pinecone refused {what} ({status or 'client-side'}): {message}")
        self.status = status
        self.server_message = f"HTTP {status}: {message}" if status else message


class Missing(ConfigError):
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
            return Missing(f"pinecone {what}: not found (404): {exc.message}; check "
                            "sinks.pinecone.index and sinks.pinecone.index_host")
        return Refused(what, status, exc.message)
    if isinstance(exc, (PineconeValueError, PineconeTypeError)):
        return Refused(what, None, str(exc))
    if isinstance(exc, (IndexInitFailedError, IndexTerminatedError)):
        return ConfigError(f"pinecone {what}: {exc}")
    # Timeouts, connection errors, unparseable answers (a proxy's HTML page), socket errors.
    return SinkUnavailable(f"pinecone {what}: {type(exc).__name__}: {exc}")


def _retry_after(headers: dict[str, str] | None) -> float | None:
    return parse_retry_after({k.lower(): v for k, v in (headers or {}).items()}.get("retry-after"))


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


def wire_record(record: VectorRecord, *, sparse: bool = False) -> dict[str, Any]:
    """The record as the SDK puts it on the wire: float32 values as Python floats, no nulls;
    with ``sparse`` (a dotproduct index) the chunk text's BM25-style sparse vector too."""
    metadata = {k: list(v) if isinstance(v, tuple) else v
                for k, v in record.metadata.items() if v is not None}
    item: dict[str, Any] = {"id": record.id, "values": np.asarray(record.vector, dtype=np.float32).tolist(),
                            "metadata": metadata}
    if sparse:
        values = encode_document(str(record.metadata.get("text", "")))
        if values is not None:
            item["sparse_values"] = values
    return item


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


def pinecone_filter(where: QueryFilter) -> dict[str, Any] | None:
    return render_filter(where.conditions())


def from_wire(metadata: dict[str, Any] | None, integers: Sequence[str] = ()) -> dict[str, Any]:
    """Pinecone stores every number as float64: give the integer fields back as ints."""
    out = dict(metadata or {})
    for name in ("chunk_index", "chunk_count", *integers):
        value = out.get(name)
        if isinstance(value, float) and value.is_integer():
            out[name] = int(value)
    return out


def fetch_batches(owner: dict[str, str]) -> list[list[str]]:
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
