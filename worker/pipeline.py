"""validate → reduce → guard → chunk → embed → write: one pass over a group of documents.

For each sink, independently:

* **Versions.** Of several versions of one key, the newest by ``_meta.uuid`` clock wins; a
  version not newer than what the sink already holds (ledger first, else the sink's own chunk
  metadata; with ``verify_with_sink`` the newer of both, for workers sharing a sink) is skipped. Deletes leave a tombstone in the ledger, so an older version arriving
  late cannot resurrect the document; a newer re-create works.
* **Skip unchanged.** Same text hash and metadata hash as stored: no model call, no write.
  Same text, other metadata: vectors come from the embedding cache, no model call.
* **Order of writes.** Upsert the new chunks first, then delete the stale tail, then record the
  ledger row. A crash anywhere in between is repaired by redoing the (idempotent) writes.

Chunking happens once per call; embedding goes through the shared engine (and its cache), so a
lagging sink catching up later costs no model time either.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.chunk import Chunker
from worker.deadletter import DeadLetterStore
from worker.documents import Binding
from worker.engine import EmbeddingEngine
from worker.errors import DocumentInvalid
from worker.ledger import Ledger
from worker.records import ChunkedDocument, FlowDocument, StoredDocument
from worker.sinks.base import Sink, build_records

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ApplyStats:
    documents: int = 0  # distinct keys considered
    written: int = 0  # documents (re)written in at least one sink
    deleted: int = 0
    skipped_stale: int = 0  # older or duplicate versions
    unchanged: int = 0
    empty: int = 0  # documents whose text gave zero chunks
    chunks: int = 0
    tokens: int = 0
    dead_lettered: int = 0
    per_sink_written: dict[str, int] = field(default_factory=dict)

    def add(self, other: ApplyStats) -> None:
        for name in ("documents", "written", "deleted", "skipped_stale", "unchanged", "empty",
                     "chunks", "tokens", "dead_lettered"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.per_sink_written.items():
            self.per_sink_written[k] = self.per_sink_written.get(k, 0) + v


def newest_versions(docs: Sequence[FlowDocument]) -> list[FlowDocument]:
    """One document per key: the highest version (a later arrival wins a tie)."""
    best: dict[str, FlowDocument] = {}
    for doc in docs:
        held = best.get(doc.doc_id)
        if held is None or doc.version >= held.version:
            best[doc.doc_id] = doc
    return list(best.values())


class Pipeline:
    def __init__(self, *, bindings: Mapping[str, Binding], chunker: Chunker, engine: EmbeddingEngine,
                 sinks: Mapping[str, Sink], ledger: Ledger, dead_letters: DeadLetterStore,
                 on_visible: Callable[[str, list[FlowDocument]], None] | None = None,
                 verify_with_sink: bool = False) -> None:
        self.bindings = bindings
        self.chunker = chunker
        self.engine = engine
        self.sinks = sinks
        self.ledger = ledger
        self.dead_letters = dead_letters
        self._on_visible = on_visible
        # Several workers share the sinks (Dekaf consumer group): another worker may have
        # written a newer version than this worker's ledger knows, so ask the sink every time.
        self.verify_with_sink = verify_with_sink
        # Ledger rows are per sink *target* (path, index/namespace, collection), so pointing a
        # sink somewhere new starts from an empty ledger for it.
        self._ledger_key = {n: f"{n}@{getattr(s, 'target', '')}" for n, s in sinks.items()}

    # -- validation --------------------------------------------------------------------------
    def validate(self, collection: str, raws: Sequence[Any]) -> tuple[list[FlowDocument], int]:
        """Parse documents; invalid ones go to the dead-letter store. Returns (valid, rejected)."""
        binding = self.bindings[collection]
        docs: list[FlowDocument] = []
        rejected: list[tuple[str, str | None, str, str, Any]] = []
        for raw in raws:
            try:
                docs.append(binding.parse(raw))
            except DocumentInvalid as exc:
                rejected.append((collection, exc.key, "validate", str(exc), raw))
        self.dead_letters.add_many(rejected)
        if rejected:
            log.warning("documents dead-lettered", extra={"collection": collection,
                                                          "count": len(rejected)})
        return docs, len(rejected)

    # -- apply -------------------------------------------------------------------------------
    def stored(self, sink_name: str, doc_ids: Sequence[str]) -> dict[str, StoredDocument]:
        held = self.ledger.get(self._ledger_key[sink_name], doc_ids)
        if self.verify_with_sink:
            # The newer of ledger and sink wins; only the ledger knows tombstones (a delete
            # leaves no row in the sink), only the sink knows other workers' writes.
            for doc_id, stored in self.sinks[sink_name].fetch_documents(list(doc_ids)).items():
                prior = held.get(doc_id)
                if prior is None or stored.version > prior.version:
                    held[doc_id] = stored
            return held
        missing = [d for d in doc_ids if d not in held]
        if missing:
            held.update(self.sinks[sink_name].fetch_documents(missing))
        return held

    def apply(self, docs: Sequence[FlowDocument], *, sinks: Sequence[str] | None = None) -> ApplyStats:
        stats = ApplyStats()
        latest = newest_versions(docs)
        stats.documents = len(latest)
        names = list(sinks) if sinks is not None else list(self.sinks)
        plans: dict[str, tuple[dict[str, StoredDocument], list[FlowDocument], list[FlowDocument]]] = {}
        to_chunk: dict[str, FlowDocument] = {}
        for name in names:
            held = self.stored(name, [d.doc_id for d in latest])
            writes, deletes = [], []
            for doc in latest:
                prior = held.get(doc.doc_id)
                if prior is not None and doc.version <= prior.version:
                    stats.skipped_stale += 1
                    continue
                (deletes if doc.is_delete else writes).append(doc)
                if not doc.is_delete:
                    to_chunk[doc.doc_id] = doc
            plans[name] = (held, writes, deletes)
        chunked = {cd.document.doc_id: cd for cd in self.chunker.chunk(list(to_chunk.values()))}

        # Which documents need vectors in at least one sink.
        need: dict[str, ChunkedDocument] = {}
        for name, (held, writes, _) in plans.items():
            for doc in writes:
                cd, prior = chunked[doc.doc_id], held.get(doc.doc_id)
                if cd.chunks and not _unchanged(prior, cd):
                    need[doc.doc_id] = cd
        all_chunks = [c for cd in need.values() for c in cd.chunks]
        vectors = self.engine.embed(all_chunks)
        offsets: dict[str, int] = {}
        pos = 0
        for doc_id, cd in need.items():
            offsets[doc_id] = pos
            pos += len(cd.chunks)
        stats.chunks = len(all_chunks)
        stats.tokens = sum(c.n_tokens for c in all_chunks)
        stats.empty = sum(1 for cd in chunked.values() if not cd.chunks)

        written_any: set[str] = set()
        for name, (held, writes, deletes) in plans.items():
            sink = self.sinks[name]
            records, done, visible = [], [], []
            tails: list[tuple[str, int, int]] = []
            for doc in writes:
                cd, prior = chunked[doc.doc_id], held.get(doc.doc_id)
                old_count = 0 if prior is None or prior.deleted else prior.chunk_count
                if _unchanged(prior, cd):
                    stats.unchanged += 1
                elif cd.chunks:
                    start = offsets[doc.doc_id]
                    records.extend(build_records(cd, vectors[start:start + len(cd.chunks)]))
                    visible.append(doc)
                if old_count > len(cd.chunks):
                    tails.append((doc.doc_id, len(cd.chunks), old_count))
                done.append(StoredDocument(doc.doc_id, doc.version, len(cd.chunks), cd.text_hash,
                                           cd.meta_hash))
            started = time.perf_counter()
            outcome = sink.upsert(records)
            if outcome.rejected:
                self._dead_letter_records(name, outcome.rejected, chunked)
                stats.dead_lettered += len(outcome.rejected)
            # With the old chunk count known, sinks delete computed ids (exact even where
            # listing is eventually consistent); otherwise they find the chunks themselves.
            for doc_id, keep, old in tails:
                sink.delete_tail(doc_id, keep, old)
            for doc in deletes:
                prior = held.get(doc.doc_id)
                if prior is not None and not prior.deleted and prior.chunk_count:
                    sink.delete_tail(doc.doc_id, 0, prior.chunk_count)
                else:
                    sink.delete_document(doc.doc_id)
                done.append(StoredDocument(doc.doc_id, doc.version, 0, "", "", deleted=True))
            self.ledger.record(self._ledger_key[name], done)
            stats.per_sink_written[name] = len(records)
            written_any.update(d.doc_id for d in visible)
            if self._on_visible and (visible or deletes):
                self._on_visible(name, visible)
            log.debug("sink written", extra={"sink": name, "records": len(records),
                                             "deletes": len(deletes),
                                             "ms": round((time.perf_counter() - started) * 1000, 1)})
        stats.written = len(written_any)
        stats.deleted = len({d.doc_id for _, (_, _, dels) in plans.items() for d in dels})
        return stats

    def _dead_letter_records(self, sink: str, rejected: Mapping[str, str],
                             chunked: Mapping[str, ChunkedDocument]) -> None:
        entries = []
        for record_id, reason in rejected.items():
            doc_id = record_id.rsplit("#", 1)[0]
            cd = chunked.get(doc_id)
            collection = cd.document.collection if cd else ""
            key = "[" + ", ".join(repr(k) for k in cd.document.key) + "]" if cd else None
            entries.append((collection, key, f"sink:{sink}", f"record {record_id}: {reason}",
                            {"record_id": record_id, "doc_id": doc_id}))
        self.dead_letters.add_many(entries)


def _unchanged(prior: StoredDocument | None, cd: ChunkedDocument) -> bool:
    return (prior is not None and not prior.deleted and prior.text_hash == cd.text_hash
            and prior.meta_hash == cd.meta_hash and prior.chunk_count == len(cd.chunks))
