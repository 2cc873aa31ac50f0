"""The durable spool between the sources and the prepare stage: SQLite in WAL mode, fsync on commit.

Contract:

* :meth:`Spool.append` returns only after the entry is committed and the WAL fsynced
  (``synchronous=FULL``); the webhook answers 200 after that, so an acknowledged batch survives
  ``kill -9`` or a power cut at any instant.
* One consumer, the prepare stage, reads entries in order (:meth:`read`). An entry leaves the
  spool in the same SQLite transaction that stores the prepared record made from it
  (:meth:`worker.prepared.PreparedStore.commit`), so an entry is always in exactly one of the
  two stores. Sinks read prepared records, never spool entries.
* The spool has a disk budget (``spool.max_bytes``): over it, :meth:`append` raises
  :class:`SpoolFull` and the webhook answers 503 with Retry-After, which Estuary retries.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from worker.errors import SpoolFull
from worker.sqlite import connect

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL, received_at REAL NOT NULL,
  documents INTEGER NOT NULL, bytes INTEGER NOT NULL, body BLOB NOT NULL,
  origin TEXT NOT NULL DEFAULT 'webhook'
);
"""

#: Entries from the webhook (durable here) vs. from a Kafka topic partition (``kafka:<topic>:<n>``,
#: durable in the broker; the spool is only a buffer for them, see :mod:`worker.sources.kafka`).
WEBHOOK = "webhook"


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    seq: int
    collection: str
    received_at: float
    documents: int
    body: bytes  # a JSON array of raw Estuary documents (validated at intake)
    origin: str = WEBHOOK


class Spool:
    def __init__(self, path: Path, *, max_bytes: int, clock=time.time) -> None:  # noqa: ANN001
        self._conn = connect(path, synchronous="FULL")
        self._conn.executescript(_SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(entries)")}
        if "origin" not in columns:  # a spool written by an older version
            self._conn.execute("ALTER TABLE entries ADD COLUMN origin TEXT NOT NULL DEFAULT 'webhook'")
        self._lock = threading.Lock()
        self._clock = clock
        self.max_bytes = max_bytes
        self.path = path
        with self._lock:
            self._bytes = self._conn.execute("SELECT coalesce(sum(bytes), 0) FROM entries").fetchone()[0]

    # -- intake side -------------------------------------------------------------------------
    def append(self, collection: str, body: bytes, documents: int, *, origin: str = WEBHOOK) -> int:
        """Durably add one entry; returns its sequence number. Raises SpoolFull over budget."""
        with self._lock:
            if self._bytes + len(body) > self.max_bytes and self._bytes > 0:
                raise SpoolFull(f"spool holds {self._bytes} bytes, over its budget of "
                                f"{self.max_bytes}; sinks are behind", retry_after_s=5.0)
            cur = self._conn.execute(
                "INSERT INTO entries (collection, received_at, documents, bytes, body, origin) "
                "VALUES (?,?,?,?,?,?)", (collection, self._clock(), documents, len(body), body, origin))
            self._bytes += len(body)
            return int(cur.lastrowid)  # autocommit: committed and fsynced when execute returns

    # -- prepare side ------------------------------------------------------------------------
    def read(self, *, limit: int, max_bytes: int | None = None) -> list[SpoolEntry]:
        """The oldest entries: at most ``limit``, stopping at the one whose body crosses ``max_bytes``
        (so one entry always comes back, however large)."""
        with self._lock:
            if max_bytes is None:
                rows = self._conn.execute(
                    "SELECT seq, collection, received_at, documents, body, origin FROM entries "
                    "ORDER BY seq LIMIT ?", (limit,)).fetchall()
            else:
                # Sizes first (cheap), then only the bodies that fit.
                sizes = self._conn.execute("SELECT seq, bytes FROM entries ORDER BY seq LIMIT ?",
                                           (limit,)).fetchall()
                total, last = 0, None
                for seq, size in sizes:  # the entry that crosses the budget is the last one
                    total += size
                    last = seq
                    if total >= max_bytes:
                        break
                if last is None:
                    return []
                rows = self._conn.execute(
                    "SELECT seq, collection, received_at, documents, body, origin FROM entries "
                    "WHERE seq <= ? ORDER BY seq", (last,)).fetchall()
        return [SpoolEntry(r[0], r[1], r[2], r[3], bytes(r[4]), r[5]) for r in rows]

    def purge(self, origin_prefix: str) -> int:
        """Drop entries whose origin starts with ``origin_prefix`` (Kafka data the broker still
        holds: another consumer, or this one after a restart, reads it again). Returns how many."""
        with self._lock:
            freed, n = self._conn.execute(
                "SELECT coalesce(sum(bytes), 0), count(*) FROM entries WHERE substr(origin, 1, ?) = ?",
                (len(origin_prefix), origin_prefix)).fetchone()
            self._conn.execute("DELETE FROM entries WHERE substr(origin, 1, ?) = ?",
                               (len(origin_prefix), origin_prefix))
            self._bytes -= freed
        return int(n)

    def released(self, freed_bytes: int) -> None:
        """Entries were removed (with the prepared record made from them): free their budget."""
        with self._lock:
            self._bytes -= freed_bytes

    # -- observability -----------------------------------------------------------------------
    def depth(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM entries").fetchone()[0]

    @property
    def bytes(self) -> int:
        return self._bytes

    def oldest_received_at(self) -> float | None:
        with self._lock:
            return self._conn.execute("SELECT min(received_at) FROM entries").fetchone()[0]

    def oldest_age_s(self) -> float | None:
        oldest = self.oldest_received_at()
        return None if oldest is None else max(0.0, self._clock() - oldest)

    def max_seq(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
        return 0 if row is None else int(row[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
