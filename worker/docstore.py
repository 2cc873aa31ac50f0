"""The local document store: the newest version of every live document, and its tombstone.

A rebuild (a new model, chunk size or privacy policy: ``memory-worker migrate``, or
``reindex --from-store``) reads it instead of asking Estuary to backfill the whole
materialization. It sits in ``state_dir/documents.sqlite`` (WAL, ``synchronous=FULL``), one row
per ``(collection, doc_id)``:

* ``version``: the document's ``_meta.uuid`` clock; a row is only replaced by an equal or newer
  version, so a late, older delivery never overwrites a newer one;
* ``deleted``: 1 for a tombstone (the delete document itself is kept, so a rebuild deletes too);
* ``body``: the Estuary document as received (``documents.store: raw``) or masked with its
  binding's privacy policy (``masked``), as JSON compressed with zstd;
* ``seq``: a change number, strictly increasing over the whole store. Every write, an equal
  version re-delivered included, takes a new one: a follower that applied everything up to
  ``seq`` N (:mod:`worker.follow`) has seen the newest state of every document whose ``seq`` is
  at most N, and re-reading a re-delivered document is harmless (the sinks are idempotent).

Who writes: the preparer, for every document that passed screening, **before** the prepared
record covering it is committed. A crash in between leaves the spool entry to be prepared again
(and the store row re-written), so nothing reaches a sink without being in the store first.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import zstandard

from worker.sqlite import connect, transaction

StoreMode = Literal["raw", "masked", "off"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
  collection TEXT NOT NULL, doc_id TEXT NOT NULL, version INTEGER NOT NULL,
  deleted INTEGER NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL, raw_bytes INTEGER NOT NULL,
  PRIMARY KEY (collection, doc_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS documents_seq ON documents(seq);
CREATE TABLE IF NOT EXISTS store_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_ZSTD_LEVEL = 3


@dataclass(frozen=True, slots=True)
class StoredRaw:
    """One document as the store holds it."""

    collection: str
    doc_id: str
    version: int
    deleted: bool
    seq: int
    document: Any  # the Estuary document (raw or masked)


@dataclass(frozen=True, slots=True)
class StoreWrite:
    """What :meth:`DocumentStore.put_many` is given for one document."""

    collection: str
    doc_id: str
    version: int
    deleted: bool
    document: Any


@dataclass(frozen=True, slots=True)
class StoreStats:
    mode: str
    documents: int
    deleted: int
    head: int
    compressed_bytes: int
    raw_bytes: int
    file_bytes: int

    def as_json(self) -> dict[str, Any]:
        ratio = self.raw_bytes / self.compressed_bytes if self.compressed_bytes else None
        return {"mode": self.mode, "documents": self.documents, "tombstones": self.deleted,
                "head_seq": self.head, "bytes": self.compressed_bytes, "raw_bytes": self.raw_bytes,
                "compression_ratio": round(ratio, 2) if ratio else None, "file_bytes": self.file_bytes}


class DocumentStore:
    """``documents.sqlite``; thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path, *, mode: StoreMode = "raw") -> None:
        if mode == "off":
            raise ValueError("an 'off' document store is None, not a DocumentStore")
        self.path = path
        self.mode = mode
        self._conn = connect(path)
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._compress = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
        self._decompress = zstandard.ZstdDecompressor()
        with self._lock:
            row = self._conn.execute("SELECT value FROM store_state WHERE key='mode'").fetchone()
            if row is None:
                self._conn.execute("INSERT INTO store_state VALUES ('mode', ?)", (mode,))
            self.stored_mode = row[0] if row else mode

    # -- writing -------------------------------------------------------------------------------
    def put_many(self, writes: Sequence[StoreWrite]) -> int:
        """Store each document unless a newer version is held; returns rows written."""
        if not writes:
            return 0
        written = 0
        with self._lock, transaction(self._conn, immediate=True) as conn:
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM documents").fetchone()[0]
            for w in writes:
                held = conn.execute("SELECT version FROM documents WHERE collection=? AND doc_id=?",
                                    (w.collection, w.doc_id)).fetchone()
                if held is not None and held[0] > w.version:
                    continue  # an older, late delivery: the newer version stays
                raw = orjson.dumps(w.document)
                seq += 1
                conn.execute("INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (w.collection, w.doc_id, w.version, int(w.deleted), seq,
                              self._compress.compress(raw), len(raw)))
                written += 1
        return written

    # -- reading -------------------------------------------------------------------------------
    def head(self) -> int:
        """The newest change number (0 for an empty store)."""
        with self._lock:
            return self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM documents").fetchone()[0]

    def changes(self, after: int, *, limit: int = 256, through: int | None = None) -> list[StoredRaw]:
        """Rows with ``after < seq <= through`` in change order, at most ``limit``."""
        hi = through if through is not None else 1 << 62
        with self._lock:
            rows = self._conn.execute(
                "SELECT collection, doc_id, version, deleted, seq, body FROM documents "
                "WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?", (after, hi, limit)).fetchall()
        return [self._row(r) for r in rows]

    def iter_all(self, *, through: int | None = None, page: int = 512) -> Iterator[StoredRaw]:
        after = 0
        while True:
            rows = self.changes(after, limit=page, through=through)
            if not rows:
                return
            yield from rows
            after = rows[-1].seq

    def get(self, collection: str, doc_id: str) -> StoredRaw | None:
        with self._lock:
            r = self._conn.execute("SELECT collection, doc_id, version, deleted, seq, body FROM documents "
                                   "WHERE collection=? AND doc_id=?", (collection, doc_id)).fetchone()
        return self._row(r) if r else None

    def min_seq(self, doc_ids: Sequence[str]) -> int | None:
        """The smallest change number among these documents (any collection), if any is held."""
        best: int | None = None
        with self._lock:
            for i in range(0, len(doc_ids), 500):
                part = list(doc_ids[i:i + 500])
                marks = ",".join("?" * len(part))
                (low,) = self._conn.execute(f"SELECT MIN(seq) FROM documents WHERE doc_id IN ({marks})",
                                            part).fetchone()
                if low is not None and (best is None or low < best):
                    best = low
        return best

    def _row(self, r: tuple) -> StoredRaw:
        return StoredRaw(r[0], r[1], r[2], bool(r[3]), r[4], orjson.loads(self._decompress.decompress(r[5])))

    def stats(self) -> StoreStats:
        with self._lock:
            n, dead, head, comp, raw = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(deleted), 0), COALESCE(MAX(seq), 0), "
                "COALESCE(SUM(LENGTH(body)), 0), COALESCE(SUM(raw_bytes), 0) FROM documents").fetchone()
        files = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
        return StoreStats(self.stored_mode, n - dead, dead, head, comp, raw, files)

    # -- export --------------------------------------------------------------------------------
    def export(self, out: Path, *, fmt: Literal["jsonl", "parquet"] = "jsonl",
               through: int | None = None) -> int:
        """Write every row (tombstones included) for a backfill elsewhere (``--engine ray``).

        JSON lines (gzipped when ``out`` ends in ``.gz``): ``{"collection": …, "document": {…}}``
        per line; Parquet: columns ``collection`` and ``document`` (the document as JSON text).
        """
        out.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        if fmt == "jsonl":
            opener = gzip.open if out.name.endswith(".gz") else open
            with opener(out, "wb") as f:  # type: ignore[operator]
                for row in self.iter_all(through=through):
                    f.write(orjson.dumps({"collection": row.collection, "document": row.document}) + b"\n")
                    n += 1
            return n
        import pyarrow as pa
        import pyarrow.parquet as pq

        collections: list[str] = []
        documents: list[str] = []
        for row in self.iter_all(through=through):
            collections.append(row.collection)
            documents.append(orjson.dumps(row.document).decode())
        pq.write_table(pa.table({"collection": collections, "document": documents}), out)
        return len(collections)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_store(state_dir: Path, mode: StoreMode) -> DocumentStore | None:
    """The store of ``documents.store`` (None when ``off``)."""
    return None if mode == "off" else DocumentStore(Path(state_dir) / "documents.sqlite", mode=mode)
