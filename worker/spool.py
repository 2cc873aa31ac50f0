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

Accept latency: :meth:`append` has a connection and a lock of its own, so a prepare pass
reading ~1 MiB of bodies, or a status scrape counting entries, never holds up an intake. With
``checkpoint_interval_s`` the WAL is checkpointed by a background thread (PASSIVE: it never
blocks writers) instead of inside whichever commit crosses SQLite's 1000-page threshold, which
was every ~4th 1 MiB append. Commits still fsync the WAL before they return, so durability is
unchanged: a checkpoint only copies committed pages into the database file.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from worker import priority
from worker.errors import SpoolFull
from worker.sqlite import connect

log = logging.getLogger(__name__)

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


#: Consecutive failed WAL checkpoints before (and between) warnings.
CHECKPOINT_WARN_AFTER = 60


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    seq: int
    collection: str
    received_at: float
    documents: int
    body: bytes  # a JSON array of raw Estuary documents (validated at intake)
    origin: str = WEBHOOK


class Spool:
    def __init__(self, path: Path, *, max_bytes: int, clock=time.time,  # noqa: ANN001
                 checkpoint_interval_s: float | None = None) -> None:
        self._writer = connect(path, synchronous="FULL")
        self._writer.executescript(_SCHEMA)
        columns = {row[1] for row in self._writer.execute("PRAGMA table_info(entries)")}
        if "origin" not in columns:  # a spool written by an older version
            self._writer.execute("ALTER TABLE entries ADD COLUMN origin TEXT NOT NULL DEFAULT 'webhook'")
        self._reader = connect(path, synchronous="FULL")
        #: Every writer of this database file in the process takes it (the prepared store too), so
        #: none waits in SQLite's busy handler, which sleeps in steps of up to 100 ms.
        self.write_lock = self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()  # read, counts
        self._bytes_lock = threading.Lock()
        self._clock = clock
        self.max_bytes = max_bytes
        self.path = path
        #: Set when the WAL is checkpointed in the background: other connections that write to
        #: this file (the prepared store) turn their automatic checkpoint off too.
        self.background_checkpoint = checkpoint_interval_s is not None
        self._checkpointer: _Checkpointer | None = None
        if checkpoint_interval_s is not None:
            self._writer.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = _Checkpointer(path, checkpoint_interval_s)
            self._checkpointer.start()
        self._bytes = self._writer.execute("SELECT coalesce(sum(bytes), 0) FROM entries").fetchone()[0]

    # -- intake side -------------------------------------------------------------------------
    def append(self, collection: str, body: bytes, documents: int, *, origin: str = WEBHOOK) -> int:
        """Durably add one entry; returns its sequence number. Raises SpoolFull over budget."""
        with self._write_lock:
            if self._bytes + len(body) > self.max_bytes and self._bytes > 0:
                raise SpoolFull(f"spool holds {self._bytes} bytes, over its budget of "
                                f"{self.max_bytes}; sinks are behind", retry_after_s=5.0)
            cur = self._writer.execute(
                "INSERT INTO entries (collection, received_at, documents, bytes, body, origin) "
                "VALUES (?,?,?,?,?,?)", (collection, self._clock(), documents, len(body), body, origin))
            with self._bytes_lock:
                self._bytes += len(body)
            return int(cur.lastrowid)  # autocommit: committed and fsynced when execute returns

    # -- prepare side ------------------------------------------------------------------------
    def read(self, *, limit: int, max_bytes: int | None = None) -> list[SpoolEntry]:
        """The oldest entries: at most ``limit``, stopping at the one whose body crosses ``max_bytes``
        (so one entry always comes back, however large)."""
        with self._read_lock:
            if max_bytes is None:
                rows = self._reader.execute(
                    "SELECT seq, collection, received_at, documents, body, origin FROM entries "
                    "ORDER BY seq LIMIT ?", (limit,)).fetchall()
            else:
                # Sizes first (cheap), then only the bodies that fit.
                sizes = self._reader.execute("SELECT seq, bytes FROM entries ORDER BY seq LIMIT ?",
                                           (limit,)).fetchall()
                total, last = 0, None
                for seq, size in sizes:  # the entry that crosses the budget is the last one
                    total += size
                    last = seq
                    if total >= max_bytes:
                        break
                if last is None:
                    return []
                rows = self._reader.execute(
                    "SELECT seq, collection, received_at, documents, body, origin FROM entries "
                    "WHERE seq <= ? ORDER BY seq", (last,)).fetchall()
        return [SpoolEntry(r[0], r[1], r[2], r[3], bytes(r[4]), r[5]) for r in rows]

    def purge(self, origin_prefix: str) -> int:
        """Drop entries whose origin starts with ``origin_prefix`` (Kafka data the broker still
        holds: another consumer, or this one after a restart, reads it again). Returns how many."""
        with self._write_lock:
            freed, n = self._writer.execute(
                "SELECT coalesce(sum(bytes), 0), count(*) FROM entries WHERE substr(origin, 1, ?) = ?",
                (len(origin_prefix), origin_prefix)).fetchone()
            self._writer.execute("DELETE FROM entries WHERE substr(origin, 1, ?) = ?",
                                 (len(origin_prefix), origin_prefix))
            with self._bytes_lock:
                self._bytes -= freed
        return int(n)

    def released(self, freed_bytes: int) -> None:
        """Entries were removed (with the prepared record made from them): free their budget."""
        with self._bytes_lock:
            self._bytes -= freed_bytes

    # -- observability -----------------------------------------------------------------------
    def depth(self) -> int:
        with self._read_lock:
            return self._reader.execute("SELECT count(*) FROM entries").fetchone()[0]

    @property
    def bytes(self) -> int:
        return self._bytes

    def oldest_received_at(self) -> float | None:
        with self._read_lock:
            return self._reader.execute("SELECT min(received_at) FROM entries").fetchone()[0]

    def oldest_age_s(self) -> float | None:
        oldest = self.oldest_received_at()
        return None if oldest is None else max(0.0, self._clock() - oldest)

    def max_seq(self) -> int:
        with self._read_lock:
            row = self._reader.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
        return 0 if row is None else int(row[0])

    def checkpoints(self) -> int:
        """Background checkpoints run so far (0 without ``checkpoint_interval_s``)."""
        return self._checkpointer.runs if self._checkpointer is not None else 0

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._write_lock, self._read_lock:
            self._writer.close()
            self._reader.close()


class _Checkpointer(threading.Thread):
    """``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval_s`` on its own connection, at
    background priority. PASSIVE copies what no reader still needs and never waits for a lock."""

    def __init__(self, path: Path, interval_s: float) -> None:
        super().__init__(name="spool-checkpoint", daemon=True)
        self._conn = connect(path, synchronous="FULL")
        self._interval_s = interval_s
        self._halt = threading.Event()
        self.runs = 0

    def run(self) -> None:
        priority.background()
        failed = 0
        while not self._halt.wait(self._interval_s):
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                self.runs += 1
                failed = 0
            except Exception as exc:  # noqa: BLE001 - a busy or closing database: the next tick retries
                failed += 1
                if failed % CHECKPOINT_WARN_AFTER == 0:  # not one busy tick: a WAL that keeps growing
                    log.warning("spool WAL checkpoint keeps failing",
                                extra={"consecutive": failed, "error": str(exc)})

    def stop(self) -> None:
        self._halt.set()
        if self.ident is not None:
            self.join(5)
        self._conn.close()
