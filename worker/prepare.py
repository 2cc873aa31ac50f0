"""The prepare stage: raw documents → one :class:`PreparedRecord` for every sink.

::

    spool entries --parse (revalidate; dead letters)--> FlowDocuments --reduce--> newest per key
      --guard (what every sink holds or will hold)--> chunk --> embed once per unique chunk
      --> PreparedRecord (writes with vectors, version bumps, deletes)

This is the only stage that runs the model for documents. What a sink holds is read from the
ledger (what it confirmed) overlaid with the prepared store's pending documents (what it will
hold once it has written the records it has not confirmed yet), so a lagging or failing sink
costs no second embedding. No sink is called here: a sink that is down never stalls the others.

* **Stale.** A version not newer than what every sink holds or will hold is dropped here.
* **Unchanged.** Same text and metadata hashes in every sink: the document is passed on without
  vectors, so each sink records the newer version (a later, older version then stays stale).
* **Otherwise** its chunks are embedded (through the engine: in-flight dedupe, optional cache)
  and the record carries one vector per unique chunk.

A sink that turns out to need vectors the preparer did not know it needed (a fresh ledger, a
store changed behind our back) gets them from the engine at write time; that is counted.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from worker.chunk import Chunker
from worker.deadletter import DeadLetterStore
from worker.docstore import DocumentStore, StoreWrite
from worker.documents import Binding
from worker.engine import EmbeddingEngine
from worker.ledger import Ledger
from worker.prepared import Pending
from worker.records import ApplyStats, ChunkedDocument, FlowDocument, PreparedRecord, StoredDocument
from worker.screen import Screen
from worker.spool import SpoolEntry

log = logging.getLogger(__name__)

#: ``pending(doc_ids)`` and ``cursors()`` of the prepared store (absent for a direct apply).
PendingLookup = Callable[[Sequence[str]], Mapping[str, Pending]]
CursorsLookup = Callable[[], Mapping[str, int]]


def newest_versions(docs: Sequence[FlowDocument]) -> list[FlowDocument]:
    """One document per key: the highest version (a later arrival wins a tie)."""
    best: dict[str, FlowDocument] = {}
    for doc in docs:
        held = best.get(doc.doc_id)
        if held is None or doc.version >= held.version:
            best[doc.doc_id] = doc
    return list(best.values())


def unchanged(prior: StoredDocument | None, cd: ChunkedDocument) -> bool:
    return (prior is not None and not prior.deleted and prior.text_hash == cd.text_hash
            and prior.meta_hash == cd.meta_hash and prior.chunk_count == len(cd.chunks))


def _newer(a: StoredDocument | None, b: StoredDocument | None) -> StoredDocument | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a.version >= b.version else b


class Preparer:
    def __init__(self, *, bindings: Mapping[str, Binding], chunker: Chunker, engine: EmbeddingEngine,
                 ledger: Ledger, ledger_keys: Mapping[str, str], dead_letters: DeadLetterStore,
                 screen: Screen | None = None, pending: PendingLookup | None = None,
                 cursors: CursorsLookup | None = None,
                 on_dead_letter: Callable[[str, int], None] | None = None,
                 docstore: DocumentStore | None = None) -> None:
        self.bindings = bindings
        self.screen = screen if screen is not None else Screen(bindings, secret=None)
        self.chunker = chunker
        self.engine = engine
        self.ledger = ledger
        self.ledger_keys = dict(ledger_keys)  # sink name -> ledger key (sink@target)
        self.dead_letters = dead_letters
        self._pending = pending
        self._cursors = cursors
        self._on_dead_letter = on_dead_letter
        #: Every screened document is stored here (worker/docstore.py) before it is prepared.
        self.docstore = docstore

    # -- parsing -----------------------------------------------------------------------------
    def parse(self, collection: str, raws: Sequence[Any], *, stage: str = "validate",
              store: bool = True) -> tuple[list[FlowDocument], int]:
        """Screen documents (quality rules, parse, privacy masking); rejected ones go to the
        dead-letter store (``stage``, or ``quality`` for a rule), valid ones to the document
        store. Returns (valid, rejected)."""
        writes: list[StoreWrite] = []
        docs, rejected = self._parse(collection, raws, stage, writes)
        if store:  # not for documents read back from the store
            self._store(writes)
        return docs, rejected

    def _store(self, writes: list[StoreWrite]) -> None:
        if self.docstore is not None and writes:
            self.docstore.put_many(writes)

    def _parse(self, collection: str, raws: Sequence[Any], stage: str, writes: list[StoreWrite]
               ) -> tuple[list[FlowDocument], int]:
        binding = self.bindings.get(collection)
        rejected: list[tuple[str, str | None, str, str, Any]] = []
        docs: list[FlowDocument] = []
        if binding is None:  # the binding was removed from the config since intake
            reason = (f"collection {collection!r} is no longer bound (bindings changed since the "
                      "documents were accepted); add the binding back and replay")
            rejected = [(collection, None, stage, reason, raw) for raw in raws]
        else:
            for raw in raws:
                screened = self.screen.screen(collection, raw)
                if screened.document is not None:
                    doc = screened.document
                    docs.append(doc)
                    if self.docstore is not None:
                        body = raw if self.docstore.mode == "raw" or doc.is_delete \
                            else self.screen.masked_raw(collection, raw)
                        writes.append(StoreWrite(collection, doc.doc_id, doc.version, doc.is_delete, body))
                    continue
                rejected.append((collection, screened.key, stage if screened.stage == "validate"
                                 else screened.stage, screened.reason,
                                 self.screen.dead_letter_raw(collection, raw)))
        self.dead_letters.add_many(rejected)
        if rejected:
            log.warning("documents dead-lettered", extra={"collection": collection, "count": len(rejected)})
            if self._on_dead_letter is not None:
                for kind, n in Counter(r[2] for r in rejected).items():
                    self._on_dead_letter(kind, n)
        return docs, len(rejected)

    def parse_entries(self, entries: Sequence[SpoolEntry]) -> tuple[list[FlowDocument], int]:
        """Spool entries → documents, validated again against today's bindings (``revalidate``)."""
        docs: list[FlowDocument] = []
        rejected = 0
        writes: list[StoreWrite] = []
        for entry in entries:
            parsed, bad = self._parse(entry.collection, orjson.loads(entry.body), "revalidate", writes)
            docs.extend(parsed)
            rejected += bad
        self._store(writes)  # one transaction for the whole pass, before its record is committed
        return docs, rejected

    # -- prepare -----------------------------------------------------------------------------
    def _held(self, ids: list[str]) -> dict[str, dict[str, StoredDocument]]:
        """Per sink: what it holds, or will hold once it wrote what it has not confirmed."""
        pending = self._pending(ids) if self._pending is not None and ids else {}
        cursors = self._cursors() if self._cursors is not None and pending else {}
        out: dict[str, dict[str, StoredDocument]] = {}
        for sink, key in self.ledger_keys.items():
            held = self.ledger.get(key, ids)
            for doc_id, p in pending.items():
                if p.seq > cursors.get(sink, 0):
                    held[doc_id] = _newer(held.get(doc_id), p.stored)  # type: ignore[assignment]
            out[sink] = held
        return out

    def prepare(self, docs: Sequence[FlowDocument], stats: ApplyStats | None = None) -> PreparedRecord:
        """Reduce, guard, chunk and embed ``docs`` into one record for every sink."""
        stats = stats if stats is not None else ApplyStats()
        latest = newest_versions(docs)
        stats.documents += len(latest)
        held = self._held([d.doc_id for d in latest])
        sinks = list(held.values())
        keep: list[FlowDocument] = []
        for doc in latest:
            priors = [h.get(doc.doc_id) for h in sinks]
            if sinks and all(p is not None and doc.version <= p.version for p in priors):
                stats.skipped_stale += 1
                continue
            keep.append(doc)
        to_chunk = [d for d in keep if not d.is_delete]
        chunked = {cd.document.doc_id: cd for cd in self.chunker.chunk(to_chunk)}
        documents: list[ChunkedDocument] = []
        need: list[ChunkedDocument] = []
        for doc in keep:
            if doc.is_delete:
                documents.append(ChunkedDocument(doc, (), "", ""))
                continue
            cd = chunked[doc.doc_id]
            documents.append(cd)
            if not cd.chunks:
                stats.empty += 1
            elif not sinks or not all(unchanged(h.get(doc.doc_id), cd) for h in sinks):
                need.append(cd)
        all_chunks = [c for cd in need for c in cd.chunks]
        vectors = self.engine.embed(all_chunks) if all_chunks else []
        stats.chunks += len(all_chunks)
        stats.tokens += sum(c.n_tokens for c in all_chunks)
        by_hash = {c.content_hash: vectors[i] for i, c in enumerate(all_chunks)}
        return PreparedRecord(documents, by_hash)
