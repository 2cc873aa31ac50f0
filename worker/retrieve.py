"""Retrieval as AI Memory V2 asks for it: document-level results by default.

::

    QueryRequest --parse_filter (typed fields)--> QueryFilter
        --mask + embed (query prompt, priority; not in keyword mode)--> SinkQuery
        --sink.search (hybrid / vector / keyword, the sink's native mechanism)--> chunk hits
        --group by document, over-fetching until k documents--> best chunks per document
        --fetch_chunks (deterministic ids)--> neighbouring chunks (context)--> QueryResponse

One long document cannot crowd out the others: results are grouped per document, and the sink is
asked for more chunks (×4 each round, up to ``MAX_CANDIDATES``) until ``k`` documents are found or
the sink has nothing more to give. ``group: chunk`` returns the raw chunks instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from worker.contract import (ChunkOut, ChunkResult, DocumentResult, DocumentView, FieldInfo,
                             QueryRequest, QueryResponse, SourceInfo)
from worker.fields import FieldCatalog, format_time
from worker.filters import FilterInvalid, parse_filter
from worker.ids import chunk_id
from worker.records import Chunk, QueryHit, SinkAnswer, SinkQuery


def engine_query_embedder(embedder: Any, engine: Any) -> Callable[[str], Any]:  # noqa: ANN401
    """The query vector through the embedding engine: query prompt, no cache, ahead of ingest."""
    def embed(text: str) -> Any:  # noqa: ANN401
        ids = embedder.query_ids(text)
        chunk = Chunk(doc_id="", index=0, text=text, token_ids=ids, content_hash="")
        return engine.embed([chunk], use_cache=False, priority=True)[0]
    return embed

#: The most chunks one search asks a sink for (Pinecone's top_k with metadata, Weaviate's default
#: QUERY_MAXIMUM_RESULTS are both larger; this bounds the work of one query).
MAX_CANDIDATES = 1000
FETCH_BATCH = 100
_ROW_FIELDS = ("doc_id", "source", "collection", "chunk_index", "chunk_count", "content_hash",
               "text_hash", "meta_hash", "version", "published_at", "title", "url", "text", "extra")


class Retriever:
    """``embed_query(text)`` gives the normalized query vector (the service's engine path, with
    priority over ingest; or the model directly in the CLI)."""

    def __init__(self, *, embed_query: Callable[[str], Any], sinks: Mapping[str, Any],  # noqa: ANN401
                 catalog: FieldCatalog, sources: Mapping[str, str], screen: Any = None,  # noqa: ANN401
                 generation: str | None = None) -> None:
        self.embed_query = embed_query
        self.generation = generation  # the index generation these sinks' targets hold
        self.sinks = sinks
        self.catalog = catalog
        self.collections = dict(sources)  # collection -> source
        self.screen = screen

    # -- search ------------------------------------------------------------------------------
    def _sink(self, name: str | None) -> tuple[str, Any]:
        name = name or next(iter(self.sinks))
        if name not in self.sinks:
            raise FilterInvalid(f"sink: {name!r} is not configured; one of {', '.join(self.sinks)}",
                                field="sink")
        return name, self.sinks[name]

    def search(self, req: QueryRequest) -> QueryResponse:
        sink_name, sink = self._sink(req.sink)
        where = parse_filter(req.filter_dict(), self.catalog)
        text = req.text
        if self.screen is not None:  # the query is masked as the documents were
            collection = next((c.value for c in where.conditions()
                               if c.field == "collection" and c.op == "eq"), None)
            text = self.screen.mask_query(text, collection)
        vector = None if req.mode == "keyword" else self.embed_query(text)

        def ask(n: int) -> SinkAnswer:
            return sink.search(SinkQuery(k=n, where=where, vector=vector, text=text,
                                         mode=req.mode, alpha=req.alpha))

        if req.group == "chunk":
            answer = ask(req.k)
            results: Any = [self._chunk_result(h) for h in answer.hits]
            return QueryResponse(sink=sink_name, mode=answer.mode, group="chunk", results=results,
                                 warnings=answer.warnings, generation=self.generation)
        n = min(MAX_CANDIDATES, max(32, req.k * req.chunks_per_doc * 4))
        while True:
            answer = ask(n)
            groups = group_hits(answer.hits)
            if len(groups) >= req.k or len(answer.hits) < n or n >= MAX_CANDIDATES:
                break
            n = min(MAX_CANDIDATES, n * 4)
        chosen = groups[:req.k]
        context = self._context(sink, chosen, req.context) if req.context else {}
        docs = [self._document_result(hits[:req.chunks_per_doc], context.get(hits[0].doc_id))
                for hits in chosen]
        return QueryResponse(sink=sink_name, mode=answer.mode, group="document", results=docs,
                             warnings=answer.warnings, generation=self.generation)

    def _context(self, sink: Any, groups: list[list[QueryHit]], n: int) -> dict[str, list[QueryHit]]:  # noqa: ANN401
        wanted: dict[str, list[str]] = {}
        for hits in groups:
            best = hits[0]
            index = int(best.metadata.get("chunk_index", 0))  # type: ignore[arg-type]
            count = int(best.metadata.get("chunk_count", index + 1))  # type: ignore[arg-type]
            wanted[best.doc_id] = [chunk_id(best.doc_id, i)
                                   for i in range(max(0, index - n), min(count, index + n + 1))]
        found = self._fetch(sink, [i for ids in wanted.values() for i in ids])
        return {doc: [found[i] for i in ids if i in found] for doc, ids in wanted.items()}

    @staticmethod
    def _fetch(sink: Any, ids: list[str]) -> dict[str, QueryHit]:  # noqa: ANN401
        found: dict[str, QueryHit] = {}
        for start in range(0, len(ids), FETCH_BATCH):
            found.update(sink.fetch_chunks(ids[start:start + FETCH_BATCH]))
        return found

    # -- shaping -----------------------------------------------------------------------------
    def _fields(self, meta: Mapping[str, Any]) -> dict[str, Any]:  # noqa: ANN401
        return self.catalog.output({k: v for k, v in meta.items() if k not in _ROW_FIELDS})

    def _chunk_result(self, h: QueryHit) -> ChunkResult:
        meta = {k: v for k, v in h.metadata.items() if k != "text"}
        return ChunkResult(id=h.id, doc_id=h.doc_id, source=h.source, score=round(float(h.score), 6),
                           text=h.text, title=str(h.metadata.get("title", "")),
                           url=str(h.metadata.get("url", "")), metadata=self.catalog.output(meta))

    def _document_result(self, hits: list[QueryHit], context: list[QueryHit] | None) -> DocumentResult:
        best = hits[0]
        meta = best.metadata
        return DocumentResult(
            doc_id=best.doc_id, source=best.source, collection=str(meta.get("collection", "")),
            title=str(meta.get("title", "")), url=str(meta.get("url", "")),
            score=round(float(best.score), 6), published_at=_published(meta),
            chunk_count=_int(meta.get("chunk_count")), metadata=self._fields(meta),
            chunks=[ChunkOut(id=h.id, chunk_index=_int(h.metadata.get("chunk_index")) or 0,
                             text=h.text, score=round(float(h.score), 6)) for h in hits],
            context=None if context is None else [
                ChunkOut(id=h.id, chunk_index=_int(h.metadata.get("chunk_index")) or 0, text=h.text)
                for h in context])

    # -- documents and sources ---------------------------------------------------------------
    def get_document(self, doc_id: str, sink: str | None = None) -> DocumentView | None:
        """Every stored chunk of a document, in order (by its deterministic chunk ids)."""
        _, store = self._sink(sink)
        first = store.fetch_chunks([chunk_id(doc_id, 0)]).get(chunk_id(doc_id, 0))
        if first is None:
            return None
        count = _int(first.metadata.get("chunk_count")) or 1
        found = self._fetch(store, [chunk_id(doc_id, i) for i in range(count)])
        chunks = [found[chunk_id(doc_id, i)] for i in range(count) if chunk_id(doc_id, i) in found]
        meta = first.metadata
        return DocumentView(
            doc_id=doc_id, source=first.source, collection=str(meta.get("collection", "")),
            title=str(meta.get("title", "")), url=str(meta.get("url", "")),
            published_at=_published(meta),
            metadata=self._fields(meta),
            chunks=[ChunkOut(id=h.id, chunk_index=_int(h.metadata.get("chunk_index")) or 0, text=h.text)
                    for h in chunks])

    def sources(self) -> list[SourceInfo]:
        return [SourceInfo(collection=c, source=s, fields=[
            FieldInfo(name=f.name, type=f.type, collections=list(f.collections))
            for f in self.catalog.for_collection(c).values()]) for c, s in self.collections.items()]


def group_hits(hits: list[QueryHit]) -> list[list[QueryHit]]:
    """Hits (best first) → one list per document, documents ordered by their best hit."""
    groups: dict[str, list[QueryHit]] = {}
    for h in hits:
        groups.setdefault(h.doc_id, []).append(h)
    return list(groups.values())


def _published(meta: Mapping[str, Any]) -> str | None:  # noqa: ANN401
    value = meta.get("published_at")
    return format_time(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: object) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
