"""The prepared store: durable prepare-stage output, held until every sink confirmed it.

Its index lives in the spool's SQLite database (``spool.sqlite``, WAL, ``synchronous=FULL``), on
its own connection, so that **one transaction** commits a prepared record *and* removes the spool
entries it covers. A crash before that commit leaves the entries in the spool (they are
prepared again; with the embedding cache that costs no model time); after it, the record is on
disk and no sink ever needs the model for it again.

A record's payload (documents, token ids, vectors: megabytes for a 1 MiB request) goes first,
fsynced, into its own database file (``prepared-payloads.sqlite``), and the shared transaction
only stores a pointer to it. The webhook's appends share ``spool.sqlite``'s single write lock
with that transaction, so they wait for a small commit, never for megabytes to reach the disk.
A crash between the two commits leaves a payload nothing points to; it is dropped at the next
start. Every writer of ``spool.sqlite`` in the process takes :attr:`Spool.write_lock` first, so
none of them waits in SQLite's busy handler (which sleeps in steps of up to 100 ms).

Tables (beside the spool's ``entries``):

* ``prepared``: one row per record: the spool range it covers, documents and chunks as JSON,
  token ids (int32) and vectors (float32, one row per unique chunk) as blobs.
* ``prepared_cursors``: per sink, the last record it confirmed, and its last error.
* ``prepared_docs``: per document, the newest version prepared and its hashes, with the record
  that carries it. The preparer reads it to know what a sink *will* hold once it has caught up
  (:meth:`PreparedStore.pending`), so nothing is embedded twice for a lagging sink.
* ``prepared_state``: ``prepared_through``, the last spool entry prepared (entries whose
  documents were all skipped produce no record but still count as delivered).

A record is deleted once every configured sink's cursor passed it. The store has a byte budget
(``prepared.max_bytes``): while the slowest sink is that far behind, :meth:`full` is true and
the prepare loop pauses (the spool keeps accepting until its own budget).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from worker.records import Chunk, ChunkedDocument, FlowDocument, PreparedRecord, StoredDocument
from worker.spool import Spool
from worker.sqlite import connect, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prepared (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, spool_first INTEGER NOT NULL, spool_last INTEGER NOT NULL,
  received_at REAL NOT NULL, created_at REAL NOT NULL, bytes INTEGER NOT NULL,
  documents INTEGER NOT NULL, chunks INTEGER NOT NULL,
  meta BLOB NOT NULL, tokens BLOB NOT NULL, vectors BLOB NOT NULL,
  origin TEXT NOT NULL DEFAULT 'webhook'
);
CREATE TABLE IF NOT EXISTS prepared_cursors (
  sink TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_at REAL NOT NULL,
  last_error TEXT, error_at REAL
);
CREATE TABLE IF NOT EXISTS prepared_docs (
  doc_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, version INTEGER NOT NULL,
  chunk_count INTEGER NOT NULL, text_hash TEXT NOT NULL, meta_hash TEXT NOT NULL,
  deleted INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS prepared_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_PAYLOAD_SCHEMA = """
CREATE TABLE IF NOT EXISTS payloads (
  id INTEGER PRIMARY KEY AUTOINCREMENT, meta BLOB NOT NULL, tokens BLOB NOT NULL, vectors BLOB NOT NULL
);
"""

_DOC_FIELDS = ("collection", "source", "key", "doc_id", "op", "uuid", "version", "published_at",
               "title", "url", "context", "chunker", "metadata")


@dataclass(frozen=True, slots=True)
class Backlog:
    """What one sink has not confirmed yet."""

    sink: str
    confirmed_seq: int  # last prepared record confirmed
    records: int
    bytes: int
    oldest_received_at: float | None  # spool arrival of the oldest unconfirmed document
    delivered_spool_seq: int  # every spool entry at or below it is in this sink
    last_error: str | None
    error_at: float | None


@dataclass(frozen=True, slots=True)
class Pending:
    """The newest prepared state of a document and the record that carries it."""

    seq: int
    stored: StoredDocument


def encode_record(record: PreparedRecord) -> tuple[bytes, bytes, bytes]:
    """``(meta JSON, int32 token ids, float32 vectors)``: the stored form of a record."""
    docs, tokens = [], []
    for cd in record.documents:
        d = cd.document
        docs.append({**{f: getattr(d, f) for f in _DOC_FIELDS},
                     "text_hash": cd.text_hash, "meta_hash": cd.meta_hash,
                     "chunks": [[c.index, c.text, c.content_hash, c.n_tokens] for c in cd.chunks]})
        tokens.extend(c.token_ids for c in cd.chunks)
    hashes = list(record.vectors)
    flat = np.fromiter((t for ids in tokens for t in ids), dtype=np.int32)
    vectors = (np.stack([record.vectors[h] for h in hashes]).astype(np.float32, copy=False).tobytes()
               if hashes else b"")
    meta = orjson.dumps({"docs": docs, "hashes": hashes})
    return meta, flat.tobytes(), vectors


def decode_record(meta: bytes, tokens: bytes, vectors: bytes, *, dimensions: int) -> PreparedRecord:
    data = orjson.loads(meta)
    ids = np.frombuffer(tokens, dtype=np.int32)
    pos = 0
    documents = []
    for d in data["docs"]:
        doc = FlowDocument(**{f: d[f] for f in _DOC_FIELDS if f != "key"}, key=tuple(d["key"]))
        chunks = []
        for index, text, content_hash, n in d["chunks"]:
            chunks.append(Chunk(doc.doc_id, index, text, tuple(ids[pos:pos + n].tolist()), content_hash))
            pos += n
        documents.append(ChunkedDocument(doc, tuple(chunks), d["text_hash"], d["meta_hash"]))
    matrix = np.frombuffer(vectors, dtype=np.float32).reshape(-1, dimensions) if vectors else None
    return PreparedRecord(documents, {h: matrix[i] for i, h in enumerate(data["hashes"])}
                          if matrix is not None else {})


class PreparedStore:
    def __init__(self, spool: Spool, *, sinks: Sequence[str], max_bytes: int, dimensions: int,
                 clock=time.time) -> None:  # noqa: ANN001
        self.spool = spool
        self.sinks = tuple(sinks)
        self.max_bytes = max_bytes
        self.dimensions = dimensions
        self._clock = clock
        self._conn = connect(spool.path, synchronous="FULL")
        if spool.background_checkpoint:  # the spool's checkpointer does it, off the commit path
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
        self._conn.executescript(_SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(prepared)")}
        if "origin" not in columns:
            self._conn.execute("ALTER TABLE prepared ADD COLUMN origin TEXT NOT NULL DEFAULT 'webhook'")
        if "payload" not in columns:  # records from before the split keep their data inline
            self._conn.execute("ALTER TABLE prepared ADD COLUMN payload INTEGER")
        self._payloads = connect(spool.path.with_name("prepared-payloads.sqlite"), synchronous="FULL")
        self._payloads.executescript(_PAYLOAD_SCHEMA)
        self._write = spool.write_lock
        self._lock = threading.Lock()  # self._conn
        self._payload_lock = threading.Lock()  # self._payloads
        self._marks = ",".join("?" * len(self.sinks))
        with self._lock, self._write, transaction(self._conn):
            low = self._conn.execute("SELECT coalesce(min(seq), 0) - 1 FROM prepared").fetchone()[0]
            top = self._conn.execute("SELECT coalesce(max(seq), 0) FROM prepared").fetchone()[0]
            for sink in self.sinks:
                # A sink added later starts at the oldest record still held (it gets what is left).
                self._conn.execute("INSERT OR IGNORE INTO prepared_cursors (sink, seq, updated_at) "
                                   "VALUES (?,?,?)", (sink, max(low, 0) if top else 0, self._clock()))
            self._bytes = self._conn.execute("SELECT coalesce(sum(bytes), 0) FROM prepared").fetchone()[0]
        self._drop_orphan_payloads()
        self._drop_confirmed()

    # -- the prepare side --------------------------------------------------------------------
    def commit(self, record: PreparedRecord, *, spool_first: int, spool_last: int,
               received_at: float, origin: str = "webhook", entries: int | None = None) -> int:
        """Store ``record`` and remove spool entries ``spool_first..spool_last``, atomically.

        A record without documents (everything was skipped) stores nothing; the entries are
        still removed. With ``entries`` (how many spool entries the record was made from), a
        record whose entries were purged meanwhile (a Kafka partition handed over) is not stored.
        Returns the record's sequence number (0 when nothing was stored).
        """
        now = self._clock()
        seq = 0
        size = 0
        payload = None
        if record.documents:  # encoded and fsynced with no lock that an append needs
            meta, tokens, vectors = encode_record(record)
            size = len(meta) + len(tokens) + len(vectors)
            payload = self._store_payload(meta, tokens, vectors)
        try:
            with self._lock, self._write, transaction(self._conn, immediate=True):
                if entries is not None and record.documents:
                    held = self._conn.execute("SELECT count(*) FROM entries WHERE seq BETWEEN ? AND ?",
                                              (spool_first, spool_last)).fetchone()[0]
                    if held < entries:
                        record, size = PreparedRecord([], {}), 0
                if record.documents:
                    seq = self._conn.execute(
                        "INSERT INTO prepared (spool_first, spool_last, received_at, created_at, bytes, "
                        "documents, chunks, meta, tokens, vectors, origin, payload) "
                        "VALUES (?,?,?,?,?,?,?,'','','',?,?)",
                        (spool_first, spool_last, received_at, now, size, len(record.documents),
                         record.chunks, origin, payload)).lastrowid
                    self._conn.executemany(
                        "INSERT INTO prepared_docs VALUES (?,?,?,?,?,?,?) ON CONFLICT(doc_id) DO UPDATE "
                        "SET seq=excluded.seq, version=excluded.version, chunk_count=excluded.chunk_count, "
                        "text_hash=excluded.text_hash, meta_hash=excluded.meta_hash, "
                        "deleted=excluded.deleted WHERE excluded.version >= prepared_docs.version",
                        [(cd.document.doc_id, seq, cd.document.version, len(cd.chunks), cd.text_hash,
                          cd.meta_hash, int(cd.document.is_delete)) for cd in record.documents])
                freed = self._conn.execute("SELECT coalesce(sum(bytes), 0) FROM entries WHERE seq "
                                           "BETWEEN ? AND ?", (spool_first, spool_last)).fetchone()[0]
                self._conn.execute("DELETE FROM entries WHERE seq BETWEEN ? AND ?",
                                   (spool_first, spool_last))
                self._conn.execute("INSERT INTO prepared_state VALUES ('prepared_through', ?) "
                                   "ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                                   (spool_last,))
                self._bytes += size
        except BaseException:
            if payload is not None:
                self._drop_payloads([payload])
            raise
        if payload is not None and not seq:  # its entries were purged meanwhile
            self._drop_payloads([payload])
        self.spool.released(freed)
        record.seq = int(seq or 0)
        return record.seq

    def _store_payload(self, meta: bytes, tokens: bytes, vectors: bytes) -> int:
        with self._payload_lock:
            return int(self._payloads.execute("INSERT INTO payloads (meta, tokens, vectors) VALUES (?,?,?)",
                                              (meta, tokens, vectors)).lastrowid)

    def _drop_payloads(self, ids: Sequence[int]) -> None:
        with self._payload_lock:
            for start in range(0, len(ids), 500):
                part = list(ids[start:start + 500])
                self._payloads.execute(f"DELETE FROM payloads WHERE id IN ({','.join('?' * len(part))})", part)

    def _drop_orphan_payloads(self) -> int:
        """Payloads no record points to (a crash between the two commits of :meth:`commit`)."""
        with self._lock:
            referenced = {r[0] for r in self._conn.execute("SELECT payload FROM prepared WHERE payload IS NOT NULL")}
        with self._payload_lock:
            orphans = [r[0] for r in self._payloads.execute("SELECT id FROM payloads") if r[0] not in referenced]
        self._drop_payloads(orphans)
        return len(orphans)

    def purge(self, origin_prefix: str) -> int:
        """Drop records whose origin starts with ``origin_prefix``, for every sink (Kafka data
        the broker still holds; see :meth:`worker.spool.Spool.purge`). Returns how many.

        Hazard: a sink loop writing one of them at this instant finishes that write."""
        with self._lock:
            with self._write, transaction(self._conn):
                rows = self._conn.execute("SELECT seq, payload FROM prepared WHERE substr(origin, 1, ?) = ?",
                                          (len(origin_prefix), origin_prefix)).fetchall()
                seqs = [r[0] for r in rows]
                if not seqs:
                    return 0
                marks = ",".join("?" * len(seqs))
                freed = self._conn.execute(f"SELECT coalesce(sum(bytes), 0) FROM prepared WHERE seq IN ({marks})",
                                           seqs).fetchone()[0]
                self._conn.execute(f"DELETE FROM prepared WHERE seq IN ({marks})", seqs)
                self._conn.execute(f"DELETE FROM prepared_docs WHERE seq IN ({marks})", seqs)
            self._bytes -= freed
        self._drop_payloads([r[1] for r in rows if r[1] is not None])
        return len(seqs)

    def undelivered_doc_ids(self) -> list[str]:
        """Every document some record not yet confirmed by every sink carries."""
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT doc_id FROM prepared_docs")]

    def drop_all(self) -> int:
        """Drop every record (see :func:`worker.runtime.adopt_prepared`)."""
        return self.purge("")

    def pending(self, doc_ids: Sequence[str]) -> dict[str, Pending]:
        """The newest prepared state of each document still held for some sink."""
        out: dict[str, Pending] = {}
        with self._lock:
            for start in range(0, len(doc_ids), 500):
                part = list(doc_ids[start:start + 500])
                for row in self._conn.execute(
                        "SELECT doc_id, seq, version, chunk_count, text_hash, meta_hash, deleted FROM "
                        f"prepared_docs WHERE doc_id IN ({','.join('?' * len(part))})", part):
                    out[row[0]] = Pending(row[1], StoredDocument(row[0], row[2], row[3], row[4], row[5],
                                                                 bool(row[6])))
        return out

    def full(self) -> bool:
        """The slowest sink is ``max_bytes`` behind: preparation waits."""
        return self._bytes >= self.max_bytes

    # -- the sink side -----------------------------------------------------------------------
    def cursors(self) -> dict[str, int]:
        with self._lock:
            return {s: q for s, q in self._conn.execute(
                f"SELECT sink, seq FROM prepared_cursors WHERE sink IN ({self._marks})", self.sinks)}

    def read(self, sink: str, *, limit: int = 1) -> list[PreparedRecord]:
        """The next records ``sink`` has not confirmed, oldest first."""
        with self._lock:
            cursor = self._conn.execute("SELECT seq FROM prepared_cursors WHERE sink = ?",
                                        (sink,)).fetchone()[0]
            rows = self._conn.execute(
                "SELECT seq, spool_first, spool_last, received_at, meta, tokens, vectors, payload FROM prepared "
                "WHERE seq > ? ORDER BY seq LIMIT ?", (cursor, limit)).fetchall()
        with self._payload_lock:
            payloads = {r[0]: r[1:] for r in self._payloads.execute(
                f"SELECT id, meta, tokens, vectors FROM payloads WHERE id IN ({','.join('?' * len(rows))})",
                [r[7] for r in rows])} if any(r[7] is not None for r in rows) else {}
        records = []
        for seq, first, last, received_at, meta, tokens, vectors, payload in rows:
            if payload is not None:  # (inline data: a record stored before the payload split)
                meta, tokens, vectors = payloads[payload]
            record = decode_record(meta, tokens, vectors, dimensions=self.dimensions)
            record.seq, record.spool_first, record.spool_last, record.received_at = seq, first, last, received_at
            records.append(record)
        return records

    def confirm(self, sink: str, seq: int) -> None:
        """``sink`` holds every record up to ``seq``; drop what every sink now holds."""
        with self._lock, self._write, transaction(self._conn):
            self._conn.execute("UPDATE prepared_cursors SET seq = max(seq, ?), updated_at = ?, "
                               "last_error = NULL, error_at = NULL WHERE sink = ?", (seq, self._clock(), sink))
        self._drop_confirmed()

    def record_error(self, sink: str, error: str) -> None:
        with self._lock, self._write:
            self._conn.execute("UPDATE prepared_cursors SET last_error = ?, error_at = ? WHERE sink = ?",
                               (error[:2000], self._clock(), sink))

    def _drop_confirmed(self) -> None:
        with self._lock:
            with self._write, transaction(self._conn):
                low = self._conn.execute(f"SELECT min(seq) FROM prepared_cursors WHERE sink IN "
                                         f"({self._marks})", self.sinks).fetchone()[0]
                if low is None:
                    return
                freed = self._conn.execute("SELECT coalesce(sum(bytes), 0) FROM prepared WHERE seq <= ?",
                                           (low,)).fetchone()[0]
                dropped = [r[0] for r in self._conn.execute(
                    "SELECT payload FROM prepared WHERE seq <= ? AND payload IS NOT NULL", (low,))]
                self._conn.execute("DELETE FROM prepared WHERE seq <= ?", (low,))
                self._conn.execute("DELETE FROM prepared_docs WHERE seq <= ?", (low,))
            self._bytes -= freed
        self._drop_payloads(dropped)

    # -- observability -----------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        return self._bytes

    def prepared_through(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT value FROM prepared_state WHERE key = 'prepared_through'"
                                     ).fetchone()
        return 0 if row is None else int(row[0])

    def backlogs(self) -> dict[str, Backlog]:
        through = self.prepared_through()
        out = {}
        with self._lock:
            for sink in self.sinks:
                cursor, err, err_at = self._conn.execute(
                    "SELECT seq, last_error, error_at FROM prepared_cursors WHERE sink = ?", (sink,)).fetchone()
                n, size, oldest, first = self._conn.execute(
                    "SELECT count(*), coalesce(sum(bytes), 0), min(received_at), min(spool_first) "
                    "FROM prepared WHERE seq > ?", (cursor,)).fetchone()
                delivered = through if first is None else first - 1
                out[sink] = Backlog(sink, cursor, n, size, oldest, delivered, err, err_at)
        return out

    def delivered_spool_seq(self) -> int:
        """Every spool entry at or below this is in every sink (Kafka commits up to here)."""
        backlogs = self.backlogs()
        return min((b.delivered_spool_seq for b in backlogs.values()), default=self.prepared_through())

    def close(self) -> None:
        with self._lock, self._payload_lock:
            self._conn.close()
            self._payloads.close()
