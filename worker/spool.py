"""The durable spool between the webhook and the sinks: SQLite in WAL mode, fsync on commit.

Contract:

* :meth:`Spool.append` returns only after the entry is committed and the WAL fsynced
  (``synchronous=FULL``); the webhook answers 200 after that, so an acknowledged batch survives
  ``kill -9`` or a power cut at any instant.
* Each sink has its own cursor (the last entry it confirmed). Sinks progress independently.
* An entry is deleted once every configured sink's cursor has passed it (at-least-once per sink:
  a crash between a sink write and its cursor commit only replays idempotent writes).
* The spool has a disk budget (``spool.max_bytes``): over it, :meth:`append` raises
  :class:`SpoolFull` and the webhook answers 503 with Retry-After, which Estuary retries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from worker.errors import SpoolFull
from worker.sqlite import connect

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL, received_at REAL NOT NULL,
  documents INTEGER NOT NULL, bytes INTEGER NOT NULL, body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
  sink TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_at REAL NOT NULL,
  last_error TEXT, error_at REAL
);
"""


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    seq: int
    collection: str
    received_at: float
    documents: int
    body: bytes  # a JSON array of raw Estuary documents (already validated at intake)


@dataclass(frozen=True, slots=True)
class SinkPosition:
    sink: str
    delivered_seq: int
    behind_entries: int
    oldest_undelivered_age_s: float | None
    last_error: str | None
    error_at: float | None


class Spool:
    def __init__(self, path: Path, *, sinks: Sequence[str], max_bytes: int,
                 clock=time.time) -> None:  # noqa: ANN001
        self._conn = connect(path, synchronous="FULL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._clock = clock
        self.max_bytes = max_bytes
        self.sinks = tuple(sinks)
        with self._lock:
            start = self._conn.execute("SELECT coalesce(max(seq), 0) FROM entries").fetchone()[0]
            low = self._conn.execute("SELECT coalesce(min(seq), 0) - 1 FROM entries").fetchone()[0]
            for sink in self.sinks:
                # A sink added later starts at the oldest entry still held (it gets what is left).
                self._conn.execute("INSERT OR IGNORE INTO cursors (sink, seq, updated_at) VALUES (?,?,?)",
                                   (sink, max(low, 0) if start else 0, self._clock()))
            self._bytes = self._conn.execute("SELECT coalesce(sum(bytes), 0) FROM entries").fetchone()[0]
        self.path = path

    # -- intake side -------------------------------------------------------------------------
    def append(self, collection: str, body: bytes, documents: int) -> int:
        """Durably add one entry; returns its sequence number. Raises SpoolFull over budget."""
        with self._lock:
            if self._bytes + len(body) > self.max_bytes and self._bytes > 0:
                raise SpoolFull(f"spool holds {self._bytes} bytes, over its budget of "
                                f"{self.max_bytes}; sinks are behind", retry_after_s=5.0)
            cur = self._conn.execute(
                "INSERT INTO entries (collection, received_at, documents, bytes, body) VALUES (?,?,?,?,?)",
                (collection, self._clock(), documents, len(body), body))
            self._bytes += len(body)
            return int(cur.lastrowid)  # autocommit: committed and fsynced when execute returns

    # -- sink side ---------------------------------------------------------------------------
    def read(self, sink: str, *, limit: int, max_bytes: int | None = None) -> list[SpoolEntry]:
        """The next entries this sink has not confirmed, oldest first: at most ``limit`` entries,
        and no more once ``max_bytes`` of bodies are taken (always at least one entry)."""
        with self._lock:
            cursor = self._cursor(sink)
            if max_bytes is not None:
                sizes = self._conn.execute("SELECT bytes FROM entries WHERE seq > ? ORDER BY seq LIMIT ?",
                                           (cursor, limit)).fetchall()
                taken = total = 0
                for (size,) in sizes:
                    taken, total = taken + 1, total + size
                    if total >= max_bytes:
                        break
                limit = taken
            rows = self._conn.execute(
                "SELECT seq, collection, received_at, documents, body FROM entries WHERE seq > ? "
                "ORDER BY seq LIMIT ?", (cursor, limit)).fetchall()
        return [SpoolEntry(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]

    def confirm(self, sink: str, seq: int) -> None:
        """Move ``sink``'s cursor to ``seq`` and drop entries every sink has confirmed."""
        with self._lock:
            freed = 0
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("UPDATE cursors SET seq = max(seq, ?), updated_at = ?, "
                                   "last_error = NULL WHERE sink = ?", (seq, self._clock(), sink))
                low = self._conn.execute("SELECT min(seq) FROM cursors WHERE sink IN (%s)"
                                         % ",".join("?" * len(self.sinks)), self.sinks).fetchone()[0]
                if low is not None:
                    freed = self._conn.execute("SELECT coalesce(sum(bytes), 0) FROM entries "
                                               "WHERE seq <= ?", (low,)).fetchone()[0]
                    self._conn.execute("DELETE FROM entries WHERE seq <= ?", (low,))
                self._conn.execute("COMMIT")
            except BaseException:
                # Never leave the transaction open: append() is autocommit, and inside an open
                # transaction its INSERT would not be durable when the webhook answers 200.
                if self._conn.in_transaction:  # some errors (SQLITE_FULL) already rolled back
                    self._conn.execute("ROLLBACK")
                raise
            self._bytes -= freed

    def record_error(self, sink: str, error: str) -> None:
        with self._lock:
            self._conn.execute("UPDATE cursors SET last_error = ?, error_at = ? WHERE sink = ?",
                               (error[:2000], self._clock(), sink))

    def _cursor(self, sink: str) -> int:
        row = self._conn.execute("SELECT seq FROM cursors WHERE sink = ?", (sink,)).fetchone()
        return 0 if row is None else int(row[0])

    # -- observability -----------------------------------------------------------------------
    def depth(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM entries").fetchone()[0]

    @property
    def bytes(self) -> int:
        return self._bytes

    def oldest_age_s(self) -> float | None:
        with self._lock:
            row = self._conn.execute("SELECT min(received_at) FROM entries").fetchone()
        return None if row[0] is None else max(0.0, self._clock() - row[0])

    def positions(self) -> list[SinkPosition]:
        now = self._clock()
        out = []
        with self._lock:
            for sink in self.sinks:
                seq, err, err_at = self._conn.execute(
                    "SELECT seq, last_error, error_at FROM cursors WHERE sink = ?", (sink,)).fetchone()
                behind, oldest = self._conn.execute(
                    "SELECT count(*), min(received_at) FROM entries WHERE seq > ?", (seq,)).fetchone()
                out.append(SinkPosition(sink, seq, behind, None if oldest is None else now - oldest,
                                        err, err_at))
        return out

    def close(self) -> None:
        with self._lock:
            self._conn.close()
