"""SQLite connections set up the same way everywhere: WAL, full fsync on commit, busy timeout.

``synchronous=FULL`` in WAL mode fsyncs the log on every commit, so a committed transaction
survives ``kill -9`` and power loss; that is what lets the webhook answer 200 after commit.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect(path: Path, *, synchronous: str = "FULL") -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn
