"""SQLite connections set up the same way everywhere, and the one transaction helper.

``synchronous=FULL`` in WAL mode fsyncs the log on every commit, so a committed transaction
survives ``kill -9`` and power loss; that is what lets the webhook answer 200 after commit.

Connections are opened in autocommit mode (``isolation_level=None``); every multi-statement
write goes through :func:`transaction`, which rolls back on any error so that one failed
statement never leaves the connection inside an open transaction (where later writes would
silently not commit, or fail with "cannot start a transaction within a transaction").
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def connect(path: Path, *, synchronous: str = "FULL") -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection, *, immediate: bool = False) -> Iterator[sqlite3.Connection]:
    """``BEGIN`` … ``COMMIT``; ``ROLLBACK`` on any error (and re-raise).

    ``immediate`` takes the write lock at ``BEGIN`` (for read-then-write transactions). Some
    errors (SQLITE_FULL, an I/O error) already rolled the transaction back inside SQLite, so the
    rollback is only issued while a transaction is still open.
    """
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
