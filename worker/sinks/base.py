"""The one protocol every sink speaks, and the records it takes.

A sink stores :class:`VectorRecord` rows. Every row carries the same flat metadata in every sink
(so the stores stay comparable), built here by :func:`build_records`:

=================  =====================================================================
``doc_id``         ``<source>:<key>``; ``id`` is ``<doc_id>#<chunk_index>``
``source``         gong, slack, github, or a generic binding's source
``collection``     the Estuary collection
``chunk_index``    0-based; ``chunk_count`` chunks in the document
``content_hash``   hash of the chunk's token ids (the embedding cache key)
``text_hash``      hash of all chunk hashes of the document (skip-unchanged)
``meta_hash``      hash of title, url and metadata (metadata-only changes)
``version``        sortable publish clock from ``_meta.uuid``, as a 20-digit string
``published_at``   unix seconds of the publish time
``title`` ``url``  document title and link
``text``           the chunk text, trimmed so all metadata fits Pinecone's 40 KB
(fields)           the binding's typed metadata fields, flat (worker/fields.py): a column,
                   a property or a metadata key each, filterable in every sink
=================  =====================================================================

Rows written before typed fields held them in ``extra`` (a JSON string); a query still expands it.
A document whose metadata alone would not fit Pinecone's limit cannot be stored whole in every
sink: :func:`build_records` raises :class:`MetadataTooLarge` naming the largest fields, and the
writer dead-letters the document (stage ``write``) instead of emptying fields silently.

Contract for implementations: every method is idempotent; vendor exceptions are translated into
:mod:`worker.errors` at this boundary (``TransientError`` to retry later, ``RecordRejected`` for a
record the store refuses for good, ``SinkMismatch`` for a wrong index).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson

from worker.ids import chunk_id, chunk_uuid
from worker.errors import PermanentError
from worker.records import (ChunkedDocument, MetadataValue, QueryFilter, QueryHit, SinkAnswer, SinkQuery,
                            StoredDocument, VectorRecord)

MAX_METADATA_BYTES = 40 * 1024
_METADATA_HEADROOM = 512  # JSON punctuation and the store's own accounting
RESERVED = ("doc_id", "source", "collection", "chunk_index", "chunk_count", "content_hash",
            "text_hash", "meta_hash", "version", "published_at", "title", "url", "text", "extra")


@dataclass(slots=True)
class UpsertOutcome:
    """Which records were written; ``rejected`` maps a record id to the store's message."""

    written: int = 0
    rejected: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SinkInfo:
    name: str
    reachable: bool
    target: str  # index / collection / path
    dimension: int | None
    metric: str | None
    records: int | None
    error: str | None = None
    warnings: tuple[str, ...] = ()  # e.g. a mode the target cannot serve


class Sink(Protocol):
    name: str

    def ensure(self, dimensions: int, metric: str) -> None:
        """Create the index/collection if missing; raise SinkMismatch if it differs."""

    def upsert(self, records: Sequence[VectorRecord]) -> UpsertOutcome:
        """Insert or overwrite by id. Permanent per-record failures are returned, not raised."""

    def delete_document(self, doc_id: str) -> None:
        """Remove every chunk of the document."""

    def delete_tail(self, doc_id: str, keep: int, previous_count: int) -> None:
        """Remove chunks ``keep .. previous_count-1`` (and any beyond) of the document."""

    def fetch_documents(self, doc_ids: Sequence[str]) -> dict[str, StoredDocument]:
        """What the store holds for these documents (from their chunk 0); absent if none."""

    def query(self, vector: np.ndarray, k: int, where: QueryFilter) -> list[QueryHit]:
        """The ``k`` nearest chunks under the filter, best first; ``score`` is cosine similarity."""

    def search(self, q: SinkQuery) -> SinkAnswer:
        """``q.k`` chunks for ``q.mode`` (vector, keyword or hybrid, each the store's native way).
        A store that cannot run the mode runs the nearest one it can and says so in warnings."""

    def fetch_chunks(self, ids: Sequence[str]) -> dict[str, QueryHit]:
        """Stored chunks by id (score 0); absent ids are left out."""

    def info(self) -> SinkInfo:
        """Reachability, target, dimension and record count (for ``check`` and /readyz)."""

    def close(self) -> None: ...


#: ``on_retry(exc, sleep_s)``: called before each retry sleep (metrics count real retries).
OnRetry = Callable[[BaseException, float], None]


@dataclass(frozen=True)
class SinkKind:
    """One entry of the sink registry: the ``sinks.<name>`` config model and how to build the
    sink from it (``build(config, retry, on_retry=...)``)."""

    name: str
    config: type[Any]
    build: Callable[..., Sink]


def format_version(version: int) -> str:
    return f"{version:020d}"


def trim_text(text: str, budget_bytes: int) -> str:
    """Cut ``text`` to at most ``budget_bytes`` of JSON-encoded UTF-8, on a character boundary."""
    encoded = orjson.dumps(text)
    if len(encoded) <= budget_bytes:
        return text
    # Binary search on characters: escapes make the JSON length non-linear in the text.
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(orjson.dumps(text[:mid] + "…")) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "…"


class MetadataTooLarge(PermanentError):
    """A document's metadata fields alone pass the stores' metadata limit."""


#: The chunk text keeps at least this much room; metadata that leaves less is refused.
MIN_TEXT_BYTES = 4096


def build_records(chunked: ChunkedDocument, vectors: np.ndarray) -> list[VectorRecord]:
    """Rows for one document: deterministic ids and metadata that fits every store's limits."""
    doc = chunked.document
    base: dict[str, MetadataValue] = {
        "doc_id": doc.doc_id, "source": doc.source, "collection": doc.collection,
        "chunk_count": len(chunked.chunks), "text_hash": chunked.text_hash,
        "meta_hash": chunked.meta_hash, "version": format_version(doc.version),
        "published_at": doc.published_at, "title": doc.title[:1024], "url": doc.url[:2048],
    }
    for name, value in doc.metadata.items():
        if name not in base:
            base[name] = value
    fixed = len(orjson.dumps(base)) + 256  # chunk_index, content_hash, "text" key
    if fixed + MIN_TEXT_BYTES + _METADATA_HEADROOM > MAX_METADATA_BYTES:
        sizes = sorted(((len(orjson.dumps(v)), n) for n, v in doc.metadata.items()), reverse=True)
        largest = ", ".join(f"{n} ({size} B)" for size, n in sizes[:3])
        raise MetadataTooLarge(f"metadata of {doc.doc_id} is {fixed} bytes; with the chunk text it "
                               f"cannot fit the {MAX_METADATA_BYTES // 1024} KB per-record metadata "
                               f"limit (Pinecone's); largest fields: {largest}")
    records = []
    for chunk, vector in zip(chunked.chunks, vectors, strict=True):
        meta = dict(base)
        meta["chunk_index"] = chunk.index
        meta["content_hash"] = chunk.content_hash
        meta["text"] = trim_text(chunk.text, MAX_METADATA_BYTES - _METADATA_HEADROOM - fixed)
        cid = chunk_id(doc.doc_id, chunk.index)
        records.append(VectorRecord(cid, chunk_uuid(cid), doc.doc_id,
                                    np.asarray(vector, dtype=np.float32), meta))
    return records


def stored_from_metadata(meta: dict[str, object]) -> StoredDocument:
    return StoredDocument(doc_id=str(meta["doc_id"]), version=int(str(meta["version"])),
                          chunk_count=int(meta["chunk_count"]),  # type: ignore[arg-type]
                          text_hash=str(meta["text_hash"]), meta_hash=str(meta["meta_hash"]))


def hit_from_metadata(record_id: str, score: float, meta: dict[str, object]) -> QueryHit:
    """A query result; a legacy row's ``extra`` is expanded back into the metadata."""
    out = {k: v for k, v in meta.items() if k not in ("extra", "text") and v is not None}
    try:
        extra = orjson.loads(str(meta.get("extra") or "{}"))
    except orjson.JSONDecodeError:
        extra = {}
    for k, v in extra.items():
        out.setdefault(k, v)
    return QueryHit(id=record_id, doc_id=str(meta.get("doc_id", "")), source=str(meta.get("source", "")),
                    score=float(score), text=str(meta.get("text", "")), metadata=out)  # type: ignore[arg-type]
