"""Typed records passed between the stages of the pipeline.

``FlowDocument`` (intake/documents) → ``Chunk`` (chunk) → ``EmbeddedChunk`` (embed) →
``VectorRecord`` (sinks) → ``QueryHit`` (query).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

MetadataValue = str | int | float | bool | list[str]
Op = Literal["c", "u", "d"]


@dataclass(frozen=True, slots=True)
class Section:
    """A piece of a document's text with its own label (a speaker turn, a Slack message)."""

    text: str
    label: str = ""


@dataclass(frozen=True, slots=True)
class FlowDocument:
    """One validated Estuary document, reduced to what the worker needs."""

    collection: str
    source: str
    key: tuple[str, ...]
    doc_id: str  # "<source>:<escaped key>", see worker.ids
    op: Op
    uuid: str
    version: int  # sortable publish clock from _meta.uuid (see documents.version_of)
    published_at: float  # unix seconds
    title: str = ""
    url: str = ""
    context: str = ""  # e.g. "#deal-acme" or "sophia-ai/ai-memory#412": goes in every chunk header
    sections: tuple[Section, ...] = ()
    chunker: str = "plain"
    metadata: dict[str, MetadataValue] = field(default_factory=dict)

    @property
    def is_delete(self) -> bool:
        return self.op == "d"


@dataclass(frozen=True, slots=True)
class Chunk:
    """A window of a document's tokens plus its header, ready for the model.

    ``token_ids`` are exactly what the model gets (special tokens included): nothing downstream
    tokenizes again.
    """

    doc_id: str
    index: int
    text: str
    token_ids: tuple[int, ...]
    content_hash: str

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True, slots=True)
class ChunkedDocument:
    """A document and all of its chunks; ``text_hash`` and ``meta_hash`` drive skip-unchanged."""

    document: FlowDocument
    chunks: tuple[Chunk, ...]
    text_hash: str
    meta_hash: str


@dataclass(slots=True)
class VectorRecord:
    """One row in a sink: deterministic ids, the vector and flat, store-safe metadata."""

    id: str  # Pinecone-safe ASCII id "<source>:<key>#<index>"
    uuid: str  # UUIDv5 of ``id`` (Weaviate)
    doc_id: str
    vector: np.ndarray  # float32, normalized
    metadata: dict[str, MetadataValue]


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """What a sink (or the ledger) holds for one document."""

    doc_id: str
    version: int
    chunk_count: int
    text_hash: str
    meta_hash: str
    deleted: bool = False


FilterOp = Literal["eq", "in", "gte", "gt", "lte", "lt"]


@dataclass(frozen=True, slots=True)
class Condition:
    """One filter condition on a typed field (``kind`` is its type in worker/fields.py).

    On a ``string[]`` field ``eq`` means "contains" and ``in`` means "contains any"; ``value`` is
    a tuple for ``in``. Built and checked by :mod:`worker.filters`; each sink renders it natively.
    """

    field: str
    kind: str
    op: FilterOp
    value: object


@dataclass(frozen=True, slots=True)
class QueryFilter:
    """Conditions a query's results must meet (all of them): the common ones by name, plus
    ``where`` for any typed metadata field."""

    source: str | None = None
    collection: str | None = None
    published_after: float | None = None
    published_before: float | None = None
    doc_id: str | None = None
    where: tuple[Condition, ...] = ()

    def conditions(self) -> list[Condition]:
        out = [Condition(name, "string", "eq", getattr(self, name))
               for name in ("source", "collection", "doc_id") if getattr(self, name)]
        if self.published_after is not None:
            out.append(Condition("published_at", "time", "gte", float(self.published_after)))
        if self.published_before is not None:
            out.append(Condition("published_at", "time", "lt", float(self.published_before)))
        return out + list(self.where)


SearchMode = Literal["vector", "keyword", "hybrid"]


@dataclass(frozen=True, slots=True)
class SinkQuery:
    """What a sink is asked: ``k`` chunks for ``mode``. ``vector`` is the normalized query
    embedding (None in keyword mode); ``text`` the (masked) query text for the keyword leg;
    ``alpha`` the weight of the vector leg in hybrid (1 = vector only, 0 = keyword only)."""

    k: int
    where: QueryFilter = QueryFilter()
    vector: np.ndarray | None = None
    text: str = ""
    mode: SearchMode = "vector"
    alpha: float = 0.5


@dataclass(frozen=True, slots=True)
class QueryHit:
    id: str
    doc_id: str
    source: str
    score: float
    text: str
    metadata: dict[str, MetadataValue]


@dataclass(slots=True)
class SinkAnswer:
    """A sink's answer: hits best first, the mode it really ran, and why if that differs."""

    hits: list[QueryHit]
    mode: SearchMode
    warnings: list[str] = field(default_factory=list)


@dataclass(slots=True)
class PreparedRecord:
    """The prepare stage's output for one pass: every document version a sink must apply.

    ``documents`` holds, in order, writes (chunks), version bumps of unchanged documents (chunks,
    no vectors needed by any sink as far as the preparer knew) and deletes (no chunks).
    ``vectors`` maps a chunk's ``content_hash`` to its vector; each unique chunk is embedded once,
    whatever the number of sinks. ``spool_first``/``spool_last`` are the spool entries it covers
    (0 when it comes from outside the spool, e.g. a direct ``Pipeline.apply``). ``seq`` is given
    by the prepared store on commit.
    """

    documents: list[ChunkedDocument]
    vectors: dict[str, np.ndarray]
    spool_first: int = 0
    spool_last: int = 0
    received_at: float = 0.0
    seq: int = 0

    @property
    def chunks(self) -> int:
        return sum(len(cd.chunks) for cd in self.documents)


@dataclass(slots=True)
class ApplyStats:
    """Counts of one prepare → write pass (or of many, added up)."""

    documents: int = 0  # distinct keys considered
    written: int = 0  # documents (re)written in at least one sink
    deleted: int = 0
    skipped_stale: int = 0  # older or duplicate versions
    unchanged: int = 0
    empty: int = 0  # documents whose text gave zero chunks
    chunks: int = 0  # chunks sent to the embedding engine (cache hits included)
    tokens: int = 0
    dead_lettered: int = 0
    per_sink_written: dict[str, int] = field(default_factory=dict)

    def add(self, other: ApplyStats) -> None:
        for name in ("documents", "written", "deleted", "skipped_stale", "unchanged", "empty",
                     "chunks", "tokens", "dead_lettered"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.per_sink_written.items():
            self.per_sink_written[k] = self.per_sink_written.get(k, 0) + v
