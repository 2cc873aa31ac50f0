"""The generation registry and the migration state machine (``state_dir/generations.sqlite``).

::

    (none) ──start──▶ dual_write ──switch──▶ switching ──▶ switched ──finish──▶ finishing ──▶ (none)
                          ▲                                   │                    │
                          └────────────rollback───────────────┴────────────────────┘
             dual_write ──finish (drops the new generation: an abort)──▶ finishing ──▶ (none)

* ``generations``: every generation this state directory has known: fingerprint, parts, the
  YAML of its config (unexpanded: secrets stay ``${VAR}``), its per-sink target settings.
* ``pointers``: ``serving``, the generation every query is answered from (read on every
  query), and ``prepared``, the generation of the records in the prepared store.
* ``migration``: at most one row: old, new, phase, the store head at start, the finish time.
* ``cursors``: per generation fed from the document store, the last change applied to it.
* ``leases``: who applies store changes to a generation (a backfill in the CLI or the
  service's follower, never both), renewed while held, free once expired.
* ``services``: each running service's primary generation and heartbeat (``finish`` refuses
  to drop a generation a live service still writes as its primary).
* ``events``: what happened when, for ``migrate status``.

Every transition is one SQLite transaction (``synchronous=FULL``), so ``kill -9`` at any
instant leaves either the state before or the state after it. The side effects around a
transition (creating targets, repointing Weaviate aliases, dropping targets) are idempotent and
are redone by running the verb again; ``switching`` and ``finishing`` are the phases in which
such a redo may be pending.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import ConfigError
from worker.generation import Generation
from worker.sqlite import connect, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
  id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, parts TEXT NOT NULL, config_yaml TEXT NOT NULL,
  config_path TEXT NOT NULL, targets TEXT NOT NULL, created_at REAL NOT NULL, dropped_at REAL
);
CREATE TABLE IF NOT EXISTS pointers (name TEXT PRIMARY KEY, generation TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS migration (
  id INTEGER PRIMARY KEY CHECK (id = 1), old TEXT NOT NULL, new TEXT NOT NULL, phase TEXT NOT NULL,
  started_at REAL NOT NULL, start_head INTEGER NOT NULL, switched_at REAL, finish_at REAL,
  drop_generation TEXT, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (generation TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS services (owner TEXT PRIMARY KEY, generation TEXT NOT NULL, beat_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (ts REAL NOT NULL, verb TEXT NOT NULL, detail TEXT NOT NULL);
"""

PHASES = ("dual_write", "switching", "switched", "finishing")
#: A service whose heartbeat is older than this is taken for dead.
SERVICE_STALE_S = 30.0


def owner_id(role: str) -> str:
    return f"{role}:{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str) -> bool:
    """False only for an owner on this host whose process is gone (a kill -9): its lease can be
    taken at once instead of when it expires. Another host's owner is taken for alive."""
    _, _, rest = owner.partition(":")
    host, _, pid = rest.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


@dataclass(frozen=True, slots=True)
class GenerationRow:
    id: str
    fingerprint: str
    parts: dict[str, Any]
    config_yaml: str
    config_path: str
    targets: dict[str, dict[str, Any]]
    created_at: float
    dropped_at: float | None


@dataclass(frozen=True, slots=True)
class Migration:
    old: str
    new: str
    phase: str
    started_at: float
    start_head: int
    switched_at: float | None
    finish_at: float | None
    drop_generation: str | None

    @property
    def switched(self) -> bool:
        return self.phase in ("switched", "finishing") and self.drop_generation != self.new

    def other(self, generation: str) -> str | None:
        """The generation on the other side of this migration from ``generation``."""
        return self.new if generation == self.old else self.old if generation == self.new else None


class Registry:
    """``generations.sqlite``; thread-safe, shared by the service and the CLI (WAL)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path)
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()

    # -- reads -------------------------------------------------------------------------------
    def _one(self, sql: str, args: tuple = ()) -> Any:  # noqa: ANN401
        with self._lock:
            return self._conn.execute(sql, args).fetchone()

    def generation(self, gen_id: str) -> GenerationRow | None:
        r = self._one("SELECT * FROM generations WHERE id=?", (gen_id,))
        return None if r is None else GenerationRow(r[0], r[1], json.loads(r[2]), r[3], r[4], json.loads(r[5]),
                                                     r[6], r[7])

    def generations(self) -> list[GenerationRow]:
        with self._lock:
            ids = [r[0] for r in self._conn.execute("SELECT id FROM generations ORDER BY created_at")]
        return [g for g in (self.generation(i) for i in ids) if g is not None]

    def identify(self, gen: Generation) -> Generation:
        """The recorded generation a config with generation ``gen`` writes: ``gen``'s own row,
        else a live one it is :func:`~worker.generation.compatible` with (the serving one first,
        or a migration's side), with the config's extra bindings merged in; else ``gen`` itself
        (unknown here). A config that fits both sides of a migration (it lacks the bindings
        they differ in) is refused: which side it writes would depend on the serving pointer."""
        from worker.generation import compatible, merged

        row = self.generation(gen.id)
        if row is not None and row.dropped_at is None:
            return Generation(row.id, row.fingerprint, row.parts)
        m = self.migration()
        fits = []
        for gen_id in dict.fromkeys(i for i in (self.serving(), m and m.new, m and m.old) if i):
            row = self.generation(gen_id)
            if row is not None and row.dropped_at is None and compatible(row.parts, gen.parts):
                fits.append(Generation(row.id, row.fingerprint, row.parts))
        if len(fits) > 1:
            a, b = (g.parts.get("bindings", {}) for g in fits[:2])
            differ = sorted(c for c in a.keys() & b.keys() if a[c] != b[c])
            raise ConfigError(f"the config fits both generations {fits[0].id} and {fits[1].id} of the "
                              f"migration: it lacks the bindings they differ in ({', '.join(differ)}); "
                              "add them to say which side it is")
        return merged(fits[0], gen) if fits else gen

    def pointer(self, name: str = "serving") -> str | None:
        r = self._one("SELECT generation FROM pointers WHERE name=?", (name,))
        return r[0] if r else None

    def serving(self) -> str | None:
        return self.pointer("serving")

    def migration(self) -> Migration | None:
        r = self._one("SELECT old, new, phase, started_at, start_head, switched_at, finish_at, "
                      "drop_generation FROM migration WHERE id=1")
        return Migration(*r) if r else None

    def cursor(self, gen_id: str) -> int | None:
        r = self._one("SELECT seq FROM cursors WHERE generation=?", (gen_id,))
        return r[0] if r else None

    def events(self, limit: int = 20) -> list[tuple[float, str, str]]:
        with self._lock:
            return list(self._conn.execute("SELECT ts, verb, detail FROM events ORDER BY rowid DESC LIMIT ?",
                                           (limit,)))[::-1]

    def live_services(self, now: float | None = None) -> list[tuple[str, str]]:
        now = time.time() if now is None else now
        with self._lock:
            return list(self._conn.execute("SELECT owner, generation FROM services WHERE beat_at > ?",
                                           (now - SERVICE_STALE_S,)))

    # -- writes ------------------------------------------------------------------------------
    def _event(self, conn: Any, verb: str, detail: str) -> None:  # noqa: ANN401
        conn.execute("INSERT INTO events VALUES (?, ?, ?)", (time.time(), verb, detail))

    def register(self, gen: Generation, *, config_yaml: str, config_path: str,
                 targets: dict[str, dict[str, Any]]) -> None:
        """Record a generation (idempotent: an existing one keeps its targets; a dropped one is
        recorded afresh)."""
        with self._lock, transaction(self._conn, immediate=True) as conn:
            conn.execute("DELETE FROM generations WHERE id=? AND dropped_at IS NOT NULL", (gen.id,))
            conn.execute("INSERT OR IGNORE INTO generations VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                         (gen.id, gen.fingerprint, json.dumps(gen.parts), config_yaml, config_path,
                          json.dumps(targets), time.time()))

    def adopt(self, gen: Generation, *, config_yaml: str, config_path: str) -> str:
        """The first generation of a state directory: it keeps the configured target names and
        serves. Returns the serving generation (this one, or the one already serving)."""
        with self._lock, transaction(self._conn, immediate=True) as conn:
            r = conn.execute("SELECT generation FROM pointers WHERE name='serving'").fetchone()
            if r is not None:
                return r[0]
            conn.execute("INSERT OR IGNORE INTO generations VALUES (?, ?, ?, ?, ?, '{}', ?, NULL)",
                         (gen.id, gen.fingerprint, json.dumps(gen.parts), config_yaml, config_path, time.time()))
            conn.execute("INSERT INTO pointers VALUES ('serving', ?, ?)", (gen.id, time.time()))
            self._event(conn, "adopt", f"{gen.id} serves, with the configured target names")
            return gen.id

    def extend(self, gen: Generation, *, config_yaml: str, config_path: str) -> None:
        """Record the bindings a compatible config added to generation ``gen`` (from
        :meth:`identify`), and that config as the generation's, so a runtime built from the
        record (the follower, a rollback) knows those bindings too."""
        with self._lock, transaction(self._conn, immediate=True) as conn:
            r = conn.execute("SELECT parts FROM generations WHERE id=?", (gen.id,)).fetchone()
            if r is None:
                return
            added = sorted(set(gen.parts["bindings"]) - set(json.loads(r[0]).get("bindings", {})))
            if not added:
                return
            m = conn.execute("SELECT old, new FROM migration WHERE id=1").fetchone()
            if m is not None:  # the other side, fed from its own record, would never see them
                raise ConfigError(f"bindings {', '.join(added)} are new, and migration {m[0]} → {m[1]} "
                                  "is in progress: add them once it has finished (or rolled back), "
                                  "or to the new config before `migrate start`")
            conn.execute("UPDATE generations SET parts=?, config_yaml=?, config_path=? WHERE id=?",
                         (json.dumps(gen.parts), config_yaml, config_path, gen.id))
            self._event(conn, "extend", f"{gen.id}: bindings {', '.join(added)} added (a compatible config)")

    def set_pointer(self, name: str, gen_id: str) -> None:
        with self._lock, transaction(self._conn) as conn:
            conn.execute("INSERT OR REPLACE INTO pointers VALUES (?, ?, ?)", (name, gen_id, time.time()))

    def begin(self, old: str, new: str, start_head: int) -> Migration:
        with self._lock, transaction(self._conn, immediate=True) as conn:
            r = conn.execute("SELECT old, new, phase FROM migration WHERE id=1").fetchone()
            if r is not None:
                if (r[0], r[1]) == (old, new):  # `start` run again (after a crash): already begun
                    return self._migration(conn)
                raise ConfigError(f"a migration {r[0]} → {r[1]} is in phase {r[2]}; finish or roll it "
                                  "back before starting another")
            now = time.time()
            conn.execute("INSERT INTO migration VALUES (1, ?, ?, 'dual_write', ?, ?, NULL, NULL, NULL, ?)",
                         (old, new, now, start_head, now))
            conn.execute("INSERT OR REPLACE INTO cursors VALUES (?, 0, ?)", (new, now))
            self._event(conn, "start", f"{old} → {new}: dual-write; backfill through store change {start_head}")
            return self._migration(conn)

    def _migration(self, conn: Any) -> Migration:  # noqa: ANN401
        r = conn.execute("SELECT old, new, phase, started_at, start_head, switched_at, finish_at, "
                         "drop_generation FROM migration WHERE id=1").fetchone()
        return Migration(*r)

    def set_phase(self, phase: str, *, expect: tuple[str, ...], serving: str | None = None,
                  finish_at: float | None = None, drop: str | None = None, event: str = "") -> Migration:
        """Move the migration to ``phase`` (from one of ``expect``), repointing ``serving`` in the
        same transaction."""
        with self._lock, transaction(self._conn, immediate=True) as conn:
            r = conn.execute("SELECT phase FROM migration WHERE id=1").fetchone()
            if r is None or r[0] not in expect:
                raise ConfigError(f"no migration in phase {' or '.join(expect)} (now: "
                                  f"{r[0] if r else 'none'})")
            now = time.time()
            conn.execute("UPDATE migration SET phase=?, updated_at=?, finish_at=?, drop_generation=?, "
                         "switched_at=CASE WHEN ?='switched' THEN ? ELSE switched_at END WHERE id=1",
                         (phase, now, finish_at, drop, phase, now))
            if serving is not None:
                conn.execute("INSERT OR REPLACE INTO pointers VALUES ('serving', ?, ?)", (serving, now))
            self._event(conn, phase, event)
            return self._migration(conn)

    def end(self, dropped: str) -> None:
        """The migration is over: ``dropped``'s targets are gone."""
        with self._lock, transaction(self._conn, immediate=True) as conn:
            conn.execute("DELETE FROM migration WHERE id=1")
            conn.execute("UPDATE generations SET dropped_at=? WHERE id=?", (time.time(), dropped))
            conn.execute("DELETE FROM cursors WHERE generation=?", (dropped,))
            conn.execute("DELETE FROM leases WHERE name=?", (f"follow:{dropped}",))
            self._event(conn, "finish", f"{dropped} dropped")

    def advance(self, gen_id: str, seq: int, *, owner: str, lease_s: float) -> None:
        """Record that every store change through ``seq`` is in ``gen_id`` (and renew the lease)."""
        now = time.time()
        with self._lock, transaction(self._conn, immediate=True) as conn:
            held = conn.execute("SELECT owner FROM leases WHERE name=?", (f"follow:{gen_id}",)).fetchone()
            if held is not None and held[0] != owner:
                raise ConfigError(f"{owner} lost the follow lease of {gen_id} to {held[0]}")
            conn.execute("INSERT OR REPLACE INTO cursors VALUES (?, ?, ?)", (gen_id, seq, now))
            conn.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (f"follow:{gen_id}", owner, now + lease_s))

    def set_cursor(self, gen_id: str, seq: int) -> None:
        with self._lock, transaction(self._conn) as conn:
            conn.execute("INSERT OR REPLACE INTO cursors VALUES (?, ?, ?)", (gen_id, seq, time.time()))

    def acquire(self, name: str, owner: str, lease_s: float) -> bool:
        """Take (or renew) a lease; False while someone else (alive) holds it."""
        now = time.time()
        with self._lock, transaction(self._conn, immediate=True) as conn:
            r = conn.execute("SELECT owner, until FROM leases WHERE name=?", (name,)).fetchone()
            if r is not None and r[0] != owner and r[1] > now:
                if owner_alive(r[0]):
                    return False
                self._event(conn, "lease", f"{name}: taken by {owner} from {r[0]}, whose process is gone")
            conn.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (name, owner, now + lease_s))
            return True

    def lease_holder(self, name: str) -> str | None:
        r = self._one("SELECT owner, until FROM leases WHERE name=?", (name,))
        return r[0] if r is not None and r[1] > time.time() else None

    def release(self, name: str, owner: str) -> None:
        with self._lock, transaction(self._conn) as conn:
            conn.execute("DELETE FROM leases WHERE name=? AND owner=?", (name, owner))

    def heartbeat(self, owner: str, gen_id: str) -> None:
        with self._lock, transaction(self._conn) as conn:
            conn.execute("INSERT OR REPLACE INTO services VALUES (?, ?, ?)", (owner, gen_id, time.time()))

    def leave(self, owner: str) -> None:
        with self._lock, transaction(self._conn) as conn:
            conn.execute("DELETE FROM services WHERE owner=?", (owner,))

    def note(self, verb: str, detail: str) -> None:
        with self._lock, transaction(self._conn) as conn:
            self._event(conn, verb, detail)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_registry(state_dir: Path) -> Registry:
    return Registry(Path(state_dir) / "generations.sqlite")


def resolve_targets(registry: Registry, config: Any, gen: Generation) -> tuple[Any, Generation]:  # noqa: ANN401
    """The config pointed at its generation's own targets, and that generation: the configured
    names for the generation a fresh state directory adopts, the recorded targets for a known
    (or compatible, :meth:`Registry.identify`) one. A config whose generation this state
    directory does not know is refused: writing it to the configured names would mix two
    vector spaces (or two chunkings) in one target."""
    from worker.config import config_source
    from worker.generation import targeted

    path, text = config_source(config)
    serving = registry.adopt(gen, config_yaml=text, config_path=path)
    known = registry.identify(gen)
    if known.id != gen.id:
        registry.extend(known, config_yaml=text, config_path=path)
        gen = known
    row = registry.generation(gen.id)
    if row is None or row.dropped_at is not None:
        state = "was dropped" if row is not None else "is not known here"
        raise ConfigError(
            f"the config's index generation {gen.id} {state}; {serving} serves from "
            f"{registry.path.parent}. Writing it to the same targets would mix two generations: "
            f"run `memory-worker migrate plan --config {path}` then `migrate start`, or use "
            "another state_dir and targets")
    return targeted(config, row.targets), gen
