"""The write stage: one sink applies a :class:`PreparedRecord`. Sink writers only write.

For each document of the record, against what *this* sink holds (its ledger rows; the sink's
own chunk metadata when the ledger has none, or always with ``verify_with_sink`` for workers
that share the sinks):

* **Versions.** A version not newer than the held one is skipped. Deletes leave a tombstone in
  the ledger, so an older version arriving late cannot resurrect the document; a newer
  re-create works.
* **Skip unchanged.** Same text hash, metadata hash and chunk count as held: only the ledger's
  version moves; no vector is written.
* **Order of writes.** Upsert the new chunks first, then delete the stale tail, then record the
  ledger row. A crash anywhere in between is repaired by redoing the (idempotent) writes.

Vectors come from the record. If this sink needs vectors the record does not carry (the
preparer saw this sink as holding the document unchanged, but the sink does not have it), they
are computed through the engine and counted in ``vectors_missing``: correct, but a sign that a
ledger and its sink disagree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from worker.deadletter import DeadLetterStore
from worker.engine import EmbeddingEngine
from worker.ledger import Ledger
from worker.prepare import unchanged
from worker.records import Chunk, ChunkedDocument, FlowDocument, PreparedRecord, StoredDocument
from worker.ids import chunk_id
from worker.sinks.base import MetadataTooLarge, Sink, build_records

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WriteOutcome:
    """What one sink did with one record (document ids per outcome)."""

    written: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    stale: set[str] = field(default_factory=set)
    unchanged: set[str] = field(default_factory=set)
    records: int = 0  # vectors written
    dead_lettered: int = 0
    vectors_missing: int = 0  # chunks embedded at write time (see the module docstring)
    seconds: float = 0.0


class SinkWriter:
    def __init__(self, name: str, sink: Sink, *, ledger: Ledger, dead_letters: DeadLetterStore,
                 engine: EmbeddingEngine, verify_with_sink: bool = False,
                 on_visible: Callable[[str, list[FlowDocument]], None] | None = None) -> None:
        self.name = name
        self.sink = sink
        self.ledger = ledger
        # Ledger rows are per sink *target* (path, index/namespace, collection), so pointing a
        # sink somewhere new starts from an empty ledger for it.
        self.ledger_key = ledger_key(name, sink)
        self.dead_letters = dead_letters
        self.engine = engine
        # Several workers share the sinks: another worker may have written a newer version
        # than this worker's ledger knows, so ask the sink every time.
        self.verify_with_sink = verify_with_sink
        self._on_visible = on_visible

    def stored(self, doc_ids: Sequence[str]) -> dict[str, StoredDocument]:
        held = self.ledger.get(self.ledger_key, doc_ids)
        if self.verify_with_sink:
            # The newer of ledger and sink wins; only the ledger knows tombstones (a delete
            # leaves no row in the sink), only the sink knows other workers' writes.
            for doc_id, stored in self.sink.fetch_documents(list(doc_ids)).items():
                prior = held.get(doc_id)
                if prior is None or stored.version > prior.version:
                    held[doc_id] = stored
            return held
        missing = [d for d in doc_ids if d not in held]
        if missing:
            held.update(self.sink.fetch_documents(missing))
        return held

    def write(self, record: PreparedRecord) -> WriteOutcome:
        started = time.perf_counter()
        out = WriteOutcome()
        held = self.stored([cd.document.doc_id for cd in record.documents])
        writes: list[tuple[ChunkedDocument, StoredDocument | None]] = []
        deletes: list[tuple[FlowDocument, StoredDocument | None]] = []
        for cd in record.documents:
            doc, prior = cd.document, held.get(cd.document.doc_id)
            if prior is not None and doc.version <= prior.version:
                out.stale.add(doc.doc_id)
            elif doc.is_delete:
                deletes.append((doc, prior))
            else:
                writes.append((cd, prior))

        vectors = dict(record.vectors)
        missing: list[Chunk] = [c for cd, prior in writes if not unchanged(prior, cd)
                                for c in cd.chunks if c.content_hash not in vectors]
        if missing:
            out.vectors_missing = len(missing)
            log.warning("record lacks vectors this sink needs; embedding them now",
                        extra={"sink": self.name, "chunks": len(missing)})
            for c, v in zip(missing, self.engine.embed(missing)):
                vectors[c.content_hash] = v

        rows, done, visible = [], [], []
        tails: list[tuple[str, int, int]] = []
        too_large: dict[str, str] = {}
        for cd, prior in writes:
            doc = cd.document
            old_count = 0 if prior is None or prior.deleted else prior.chunk_count
            if unchanged(prior, cd):
                out.unchanged.add(doc.doc_id)
            elif cd.chunks:
                try:
                    rows.extend(build_records(cd, [vectors[c.content_hash] for c in cd.chunks]))
                except MetadataTooLarge as exc:  # reported and dead-lettered, never emptied
                    too_large[chunk_id(doc.doc_id, 0)] = str(exc)
                    continue
                visible.append(doc)
                out.written.add(doc.doc_id)
            if old_count > len(cd.chunks):
                tails.append((doc.doc_id, len(cd.chunks), old_count))
            done.append(StoredDocument(doc.doc_id, doc.version, len(cd.chunks), cd.text_hash,
                                       cd.meta_hash))
        outcome = self.sink.upsert(rows)
        outcome.rejected.update(too_large)
        if outcome.rejected:
            self._dead_letter_records(outcome.rejected, record)
            out.dead_lettered = len(outcome.rejected)
        # With the old chunk count known, sinks delete computed ids (exact even where listing
        # is eventually consistent); otherwise they find the chunks themselves.
        for doc_id, keep, old in tails:
            self.sink.delete_tail(doc_id, keep, old)
        for doc, prior in deletes:
            if prior is not None and not prior.deleted and prior.chunk_count:
                self.sink.delete_tail(doc.doc_id, 0, prior.chunk_count)
            else:
                self.sink.delete_document(doc.doc_id)
            done.append(StoredDocument(doc.doc_id, doc.version, 0, "", "", deleted=True))
            out.deleted.add(doc.doc_id)
        self.ledger.record(self.ledger_key, done)
        out.records = len(rows)
        if self._on_visible and (visible or deletes):
            self._on_visible(self.name, visible)
        out.seconds = time.perf_counter() - started
        log.debug("sink written", extra={"sink": self.name, "records": len(rows),
                                         "deletes": len(deletes), "ms": round(out.seconds * 1000, 1)})
        return out

    def _dead_letter_records(self, rejected: Mapping[str, str], record: PreparedRecord) -> None:
        by_id = {cd.document.doc_id: cd.document for cd in record.documents}
        entries = []
        for record_id, reason in rejected.items():
            doc_id = record_id.rsplit("#", 1)[0]
            doc = by_id.get(doc_id)
            collection = doc.collection if doc else ""
            key = "[" + ", ".join(repr(k) for k in doc.key) + "]" if doc else None
            entries.append((collection, key, f"sink:{self.name}", f"record {record_id}: {reason}",
                            {"record_id": record_id, "doc_id": doc_id}))
        self.dead_letters.add_many(entries)


def ledger_key(name: str, sink: Sink) -> str:
    return f"{name}@{getattr(sink, 'target', '')}"
