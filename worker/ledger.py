"""What each sink holds, per document: the version guard and skip-unchanged state.

One row per (sink, doc_id): the applied version (publish clock), chunk count, text and metadata
hashes, and a ``deleted`` flag that keeps a delete's clock as a tombstone so a late, older
version cannot resurrect the key. A row is written only after the sink confirmed the write; a
crash in between makes the worker redo an idempotent write, never skip one.

When the ledger has no row (a fresh state dir against an existing index, or several workers
sharing a sink), the pipeline asks the sink itself (``fetch_documents``), whose chunk metadata
carries the same version and hashes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from worker.records import StoredDocument
from worker.sqlite import connect, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
  sink TEXT NOT NULL, doc_id TEXT NOT NULL, version INTEGER NOT NULL,
  chunk_count INTEGER NOT NULL, text_hash TEXT NOT NULL, meta_hash TEXT NOT NULL,
  deleted INTEGER NOT NULL, updated_at REAL NOT NULL,
  PRIMARY KEY (sink, doc_id)
) WITHOUT ROWID;
"""


class Ledger:
    def __init__(self, path: Path) -> None:
        self._conn = connect(path, synchronous="NORMAL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def get(self, sink: str, doc_ids: Sequence[str]) -> dict[str, StoredDocument]:
        out: dict[str, StoredDocument] = {}
        with self._lock:
            for start in range(0, len(doc_ids), 500):
                part = list(doc_ids[start:start + 500])
                marks = ",".join("?" * len(part))
                for row in self._conn.execute(
                        "SELECT doc_id, version, chunk_count, text_hash, meta_hash, deleted "
                        f"FROM documents WHERE sink = ? AND doc_id IN ({marks})", [sink, *part]):
                    out[row[0]] = StoredDocument(row[0], row[1], row[2], row[3], row[4], bool(row[5]))
        return out

    def record(self, sink: str, docs: Iterable[StoredDocument]) -> None:
        now = time.time()
        rows = [(sink, d.doc_id, d.version, d.chunk_count, d.text_hash, d.meta_hash, int(d.deleted), now)
                for d in docs]
        if not rows:
            return
        with self._lock, transaction(self._conn):
            # Never move a document backwards, whatever order two writers commit in.
            self._conn.executemany(
                "INSERT INTO documents VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(sink, doc_id) DO UPDATE "
                "SET version=excluded.version, chunk_count=excluded.chunk_count, "
                "text_hash=excluded.text_hash, meta_hash=excluded.meta_hash, "
                "deleted=excluded.deleted, updated_at=excluded.updated_at "
                "WHERE excluded.version >= documents.version", rows)

    def count(self, sink: str) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM documents WHERE sink = ? AND deleted = 0",
                                      (sink,)).fetchone()[0]

    def drop(self, sink: str) -> int:
        """Forget everything recorded for ``sink`` (a ledger key: its target was dropped)."""
        with self._lock, transaction(self._conn):
            return self._conn.execute("DELETE FROM documents WHERE sink = ?", (sink,)).rowcount

    def close(self) -> None:
        self._conn.close()
