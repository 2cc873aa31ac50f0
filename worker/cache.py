"""Persistent, bounded embedding cache keyed by (model fingerprint, chunk content hash).

Re-delivered or unchanged chunks, and a lagging sink catching up, cost no model time. SQLite
(WAL, synchronous=NORMAL: losing the last few entries in a power cut only costs recomputation).
When over ``max_entries`` the least recently used tenth is evicted (recency is updated on every
hit). Thread-safe: one connection behind a lock. A vector of the wrong size (another model under
a reused fingerprint) reads as a miss.

Crash safety: ``put_many`` is one transaction, so a crash leaves either all of a request's
vectors or none; the vectors are recomputed on the next delivery either way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from worker.sqlite import connect, transaction as _transaction


class EmbeddingCache:
    def __init__(self, path: Path, *, fingerprint: str, dimensions: int, max_entries: int) -> None:
        self._conn = connect(path, synchronous="NORMAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, "
                           "vector BLOB NOT NULL, used REAL NOT NULL) WITHOUT ROWID")
        self._conn.execute("CREATE INDEX IF NOT EXISTS vectors_used ON vectors(used)")
        self._prefix = fingerprint + ":"
        self._dims = dimensions
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._count = self._conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
        self.hits = 0
        self.misses = 0

    def get_many(self, content_hashes: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        if not content_hashes or self.max_entries == 0:
            return found
        keys = [self._prefix + h for h in dict.fromkeys(content_hashes)]
        with self._lock:
            for start in range(0, len(keys), 500):
                part = keys[start:start + 500]
                marks = ",".join("?" * len(part))
                for key, blob in self._conn.execute(
                        f"SELECT key, vector FROM vectors WHERE key IN ({marks})", part):
                    vec = np.frombuffer(blob, dtype=np.float32)
                    if vec.shape[0] == self._dims:
                        found[key[len(self._prefix):]] = vec
            if found:
                now = time.time()
                with _transaction(self._conn):
                    self._conn.executemany("UPDATE vectors SET used = ? WHERE key = ?",
                                           [(now, self._prefix + h) for h in found])
        self.hits += len(found)
        self.misses += len(keys) - len(found)
        return found

    def put_many(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        if not items or self.max_entries == 0:
            return
        now = time.time()
        rows = [(self._prefix + h, np.asarray(v, dtype=np.float32).tobytes(), now) for h, v in items]
        with self._lock, _transaction(self._conn):
            before = self._conn.total_changes
            self._conn.executemany("INSERT OR IGNORE INTO vectors VALUES (?,?,?)", rows)
            self._count += self._conn.total_changes - before
            if self._count > self.max_entries:
                evict = self._count - self.max_entries + self.max_entries // 10
                self._conn.execute("DELETE FROM vectors WHERE key IN (SELECT key FROM vectors "
                                   "ORDER BY used LIMIT ?)", (evict,))
                self._count = self._conn.execute("SELECT count(*) FROM vectors").fetchone()[0]

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        with self._lock:
            self._conn.close()
