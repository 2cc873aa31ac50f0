"""The service's loops: one prepare loop, and one writer loop per sink.

::

    Spool --PrepareLoop--> PreparedStore --SinkLoop(local)----> local
                                         --SinkLoop(pinecone)-> pinecone   (each at its own pace)
                                         --SinkLoop(weaviate)-> weaviate

Each loop follows the error tree (:mod:`worker.errors`):

* ``TransientError`` (and any unexpected exception): the work stays where it is; the loop backs
  off with full jitter, ``retry.initial_backoff_s · 2ⁿ`` capped at ``retry.max_backoff_s``, never
  less than a server's Retry-After; state ``failing``.
* ``FatalError`` (a configuration error, a sink that does not match the model): the sink is
  *parked*, state ``misconfigured`` with the reason, re-checked every ``retry.park_recheck_s``
  (``ensure`` again, then the same record). The other sinks go on; the prepared store keeps the
  parked sink's records until it is fixed or its budget pauses preparation.

A loop finishes the record it is on when asked to stop; the service's shutdown deadline bounds
the wait (what is not confirmed is redone after the next start: idempotent writes).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import orjson

from worker import priority
from worker.configbase import RetryConfig
from worker.errors import FatalError, TransientError
from worker.prepare import Preparer
from worker.prepared import PreparedStore
from worker.records import ApplyStats, PreparedRecord
from worker.retry import full_jitter_s
from worker.spool import Spool
from worker.write import SinkWriter

log = logging.getLogger(__name__)

# Bodies one prepare pass takes from the spool (besides spool.batch_entries). A pass is embedded,
# committed and then written as a whole, so its size bounds the time to visibility, the work a
# crash redoes, and memory: ~1 MiB of Gong is ~1,000 chunks, plenty to batch well.
PASS_MAX_BYTES = 1024 * 1024

STATES = ("starting", "ok", "failing", "misconfigured", "paused", "stopped")
#: A prepare pass failing this often with an unexpected error (a bug, a document that breaks
#: a stage) is retried entry by entry; an entry failing alone this often is dead-lettered
#: (stage ``prepare``) so one poison document never stalls the stream.
POISON_ATTEMPTS = 3


class _Loop(threading.Thread):
    """A stoppable loop with a state, a reason and the error-tree back-off."""

    def __init__(self, name: str, *, retry: RetryConfig, poll_interval_s: float,
                 rng: Callable[[float, float], float] = random.uniform) -> None:
        super().__init__(name=name, daemon=True)
        self.retry = retry
        self.poll_interval_s = poll_interval_s
        self.stopping = threading.Event()
        self.idle = threading.Event()
        self.busy = threading.Event()  # inside a pass (for shutdown: is there work to finish?)
        self.state = "starting"
        self.reason: str | None = None
        self.failures = 0
        self._rng = rng

    def backoff_s(self, exc: BaseException) -> float:
        """Full jitter over an exponential ceiling, at least the server's Retry-After."""
        return full_jitter_s(self.retry.initial_backoff_s, self.retry.max_backoff_s, self.failures, exc,
                             self._rng)

    def failed(self, exc: BaseException, what: str) -> float:
        """Record a failed pass; returns how long to wait before the next try."""
        self.failures += 1
        self.reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, FatalError):
            self.state = "misconfigured"
            log.error(f"{what} parked: misconfigured", extra={"loop": self.name, "error": str(exc)[:500],
                                                              "recheck_s": self.retry.park_recheck_s})
            return self.retry.park_recheck_s
        self.state = "failing"
        transient = isinstance(exc, TransientError)
        log.log(logging.WARNING if transient else logging.ERROR, f"{what} failed; will retry",
                exc_info=not transient, extra={"loop": self.name, "failures": self.failures,
                                               "error": str(exc)[:300]})
        return self.backoff_s(exc)

    def succeeded(self) -> None:
        self.failures = 0
        self.state = "ok"
        self.reason = None


class PrepareLoop(_Loop):
    """Spool entries → prepared records, in order, one pass at a time."""

    def __init__(self, *, spool: Spool, prepared: PreparedStore, preparer: Preparer, retry: RetryConfig,
                 batch_entries: int, poll_interval_s: float, metrics: Any = None,
                 pass_max_bytes: int = PASS_MAX_BYTES) -> None:
        super().__init__("prepare", retry=retry, poll_interval_s=poll_interval_s)
        self.spool = spool
        self.prepared = prepared
        self.preparer = preparer
        self.batch_entries = batch_entries
        self.pass_max_bytes = pass_max_bytes
        self.metrics = metrics
        self.stats = ApplyStats()
        self._suspect: int | None = None  # first spool seq of the pass that keeps failing
        self._suspect_failures = 0

    def run(self) -> None:
        priority.background()
        while not self.stopping.is_set():
            if self.prepared.full():  # the slowest sink is a whole budget behind
                if self.state != "paused":
                    log.warning("preparation paused: prepared store at its budget",
                                extra={"bytes": self.prepared.bytes, "max_bytes": self.prepared.max_bytes})
                self.state = "paused"
                self.stopping.wait(self.poll_interval_s)
                continue
            isolate = self._suspect is not None and self._suspect_failures >= POISON_ATTEMPTS
            entries = self.spool.read(limit=1 if isolate else self.batch_entries,
                                      max_bytes=self.pass_max_bytes)
            # One origin per record, so a Kafka partition's records can be dropped on their own.
            entries = _same_origin_prefix(entries)
            if not entries:
                if self.state in ("starting", "paused"):
                    self.state = "ok"
                self.idle.set()
                self.stopping.wait(self.poll_interval_s)
                continue
            self.idle.clear()
            self.busy.set()
            try:
                self.prepare(entries)
            except Exception as exc:  # noqa: BLE001 - the entries stay in the spool
                if not isinstance(exc, (TransientError, FatalError)) and self._poison(entries, exc):
                    continue
                self.stopping.wait(self.failed(exc, "prepare pass"))
                continue
            finally:
                self.busy.clear()
            if self._suspect is not None and entries[0].seq > self._suspect:
                self._suspect, self._suspect_failures = None, 0
            self.succeeded()

    def _poison(self, entries: list, exc: Exception) -> bool:  # noqa: ANN001
        """Count an unexpected failure of this pass; dead-letter a lone entry that keeps failing.
        True when the entry was dead-lettered (the loop moves on at once)."""
        if self._suspect != entries[0].seq:
            self._suspect, self._suspect_failures = entries[0].seq, 0
        self._suspect_failures += 1
        if len(entries) > 1 or self._suspect_failures < POISON_ATTEMPTS + (len(entries) == 1):
            return False
        entry = entries[0]
        reason = f"prepare failed {self._suspect_failures} times: {type(exc).__name__}: {exc}"
        screen = self.preparer.screen
        self.preparer.dead_letters.add_many([
            (entry.collection, None, "prepare", reason[:2000], screen.dead_letter_raw(entry.collection, raw))
            for raw in orjson.loads(entry.body)])
        self.prepared.commit(PreparedRecord([], {}), spool_first=entry.seq, spool_last=entry.seq,
                             received_at=entry.received_at, origin=entry.origin)
        log.error("spool entry dead-lettered: it fails the prepare stage every time",
                  exc_info=exc, extra={"seq": entry.seq, "collection": entry.collection})
        if self.metrics is not None:
            self.metrics.documents_dead_lettered.labels("prepare").inc(entry.documents)
        self._suspect, self._suspect_failures = None, 0
        return True

    def prepare(self, entries: list) -> int:  # noqa: ANN001
        stats = ApplyStats()
        docs, _ = self.preparer.parse_entries(entries)
        record = self.preparer.prepare(docs, stats)
        seq = self.prepared.commit(record, spool_first=entries[0].seq, spool_last=entries[-1].seq,
                                   received_at=min(e.received_at for e in entries),
                                   origin=entries[0].origin, entries=len(entries))
        self.stats.add(stats)
        if self.metrics is not None:
            self.metrics.on_prepared(stats)
        return seq


def _same_origin_prefix(entries: list) -> list:  # noqa: ANN001
    """The leading entries that share the first one's origin."""
    out = []
    for e in entries:
        if out and e.origin != out[0].origin:
            break
        out.append(e)
    return out


class SinkLoop(_Loop):
    """Prepared records → one sink, in order, confirming each after it is written."""

    def __init__(self, writer: SinkWriter, *, prepared: PreparedStore, retry: RetryConfig,
                 poll_interval_s: float, dimensions: int, metric: str, metrics: Any = None,
                 ensured: bool = False) -> None:
        super().__init__(f"sink-{writer.name}", retry=retry, poll_interval_s=poll_interval_s)
        self.sink = writer.name
        self.writer = writer
        self.prepared = prepared
        self.metrics = metrics
        self.dimensions = dimensions
        self.metric = metric
        self.ensured = ensured
        self.vectors_missing = 0

    def run(self) -> None:
        priority.background()
        while not self.stopping.is_set():
            try:
                if not self.ensured:  # at start, and on every re-check of a parked sink
                    self.writer.sink.ensure(self.dimensions, self.metric)
                    self.ensured = True
                    if self.state != "ok":
                        log.info("sink ready", extra={"sink": self.sink})
                records = self.prepared.read(self.sink, limit=1)
                if not records:
                    self.succeeded()
                    self.idle.set()
                    self.stopping.wait(self.poll_interval_s)
                    continue
                self.idle.clear()
                self.busy.set()
                try:
                    self.deliver(records[0])
                finally:
                    self.busy.clear()
            except Exception as exc:  # noqa: BLE001 - the record stays in the prepared store
                if isinstance(exc, FatalError):
                    self.ensured = False  # re-check from ensure() on
                if self.metrics is not None:
                    self.metrics.errors.labels(self.sink).inc()
                self.prepared.record_error(self.sink, f"{type(exc).__name__}: {exc}")
                self.stopping.wait(self.failed(exc, f"sink {self.sink}"))
                continue
            self.succeeded()

    def deliver(self, record: Any) -> None:  # noqa: ANN401
        out = self.writer.write(record)
        # Counted before the confirm: once status says a record is delivered, the counters say so
        # too (a crash in between redoes the idempotent write and counts it again).
        self.vectors_missing += out.vectors_missing
        if self.metrics is not None:
            self.metrics.on_written(self.sink, out)
        self.prepared.confirm(self.sink, record.seq)
