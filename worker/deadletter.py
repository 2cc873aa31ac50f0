"""The dead-letter store: every rejected document with its reason, kept until purged.

Each entry keeps the collection, the key (when known), the stage that rejected it (``validate``
or ``sink:<name>``), the reason, the time and the raw document, so that ``memory-worker dlq
replay`` can send it back through validation after a config fix.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from worker.sqlite import connect, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
  id INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL, doc_key TEXT,
  stage TEXT NOT NULL, reason TEXT NOT NULL, created_at REAL NOT NULL, raw BLOB NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    collection: str
    key: str | None
    stage: str
    reason: str
    created_at: float
    raw: Any

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "collection": self.collection, "key": self.key, "stage": self.stage,
                "reason": self.reason, "created_at": self.created_at}


class DeadLetterStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path)
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def add(self, collection: str, key: str | None, stage: str, reason: str, raw: Any) -> None:
        self.add_many([(collection, key, stage, reason, raw)])

    def add_many(self, entries: list[tuple[str, str | None, str, str, Any]]) -> None:
        if not entries:
            return
        now = time.time()
        rows = []
        for collection, key, stage, reason, raw in entries:
            try:
                blob = orjson.dumps(raw)
            except TypeError:
                blob = orjson.dumps(repr(raw))
            rows.append((collection, key, stage, reason, now, blob))
        with self._lock, transaction(self._conn):
            self._conn.executemany("INSERT INTO dead_letters (collection, doc_key, stage, reason, "
                                   "created_at, raw) VALUES (?,?,?,?,?,?)", rows)

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]

    def list(self, *, collection: str | None = None, limit: int | None = None) -> list[DeadLetter]:
        sql = "SELECT id, collection, doc_key, stage, reason, created_at, raw FROM dead_letters"
        args: list[Any] = []
        if collection:
            sql += " WHERE collection = ?"
            args.append(collection)
        sql += " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [DeadLetter(r[0], r[1], r[2], r[3], r[4], r[5], orjson.loads(r[6])) for r in rows]

    def get(self, entry_id: int) -> DeadLetter | None:
        with self._lock:
            r = self._conn.execute("SELECT id, collection, doc_key, stage, reason, created_at, raw "
                                   "FROM dead_letters WHERE id = ?", (entry_id,)).fetchone()
        return None if r is None else DeadLetter(r[0], r[1], r[2], r[3], r[4], r[5], orjson.loads(r[6]))

    def remove(self, ids: list[int]) -> int:
        n = 0
        with self._lock, transaction(self._conn):
            for i in ids:
                n += self._conn.execute("DELETE FROM dead_letters WHERE id = ?", (i,)).rowcount
        return n

    def purge(self, *, collection: str | None = None) -> int:
        with self._lock:
            if collection:
                return self._conn.execute("DELETE FROM dead_letters WHERE collection = ?",
                                          (collection,)).rowcount
            return self._conn.execute("DELETE FROM dead_letters").rowcount

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(self.list())

    def close(self) -> None:
        self._conn.close()
