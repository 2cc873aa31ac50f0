"""Kafka-protocol sources: Dekaf and Estuary's ``materialize-kafka``, one consumer loop for both.

::

    topic partitions --consume (read_committed)--> decode (worker.sources.codecs)
        --Intake.accept (validate, dead-letter) per partition--> Spool (origin kafka:<topic>:<n>)
        --prepare → write (every sink)--> commit the offsets every sink has applied

Contract:

* **The broker is the durable log; commit after delivery.** A poll batch is decoded and spooled
  as one entry per (partition, collection), tagged with its origin. An offset is committed only
  once every sink confirmed every spool entry at or below it (the prepared store's
  ``delivered_spool_seq``): Kafka's commit-after-process. A worker that dies mid-batch leaves
  its partitions to the next owner, which reads again from the last commit; idempotent writes
  and the version guard make the redo safe, and nothing waits for a dead host's disk.
* **The local spool is only a buffer for Kafka data.** At start, every Kafka-origin entry and
  prepared record left by an earlier run is dropped (the broker still has it, at or after the
  committed offsets). On a graceful hand-over (revocation) the source commits what the sinks
  have, waits up to ``delivery_wait_s`` for the rest, then drops what is still undelivered for
  those partitions, so this worker never writes them late, after their new owner.
* **Offsets** are opaque positions (Dekaf: journal byte offsets with gaps); the only arithmetic is
  Kafka's "next to read" ``+ 1``.
* **Dekaf: one consumer per task.** Estuary advises against several consumers of one Dekaf task
  in one group (estuary/flow PR #2093), and one key's versions can sit on two partitions after a
  journal split. A Dekaf member whose first assignment is not every partition of its topics
  (another member holds some) refuses: it leaves the group, reports ``state: refused`` with the
  reason, and consumes nothing. The member that had everything keeps it after the rebalance.
* **materialize-kafka: N members.** Keys are the collection key, so a key never changes
  partition; members split the partitions and per-key order is the partition's order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from worker.config import KafkaConsumerConfig
from worker.deadletter import DeadLetterStore
from worker.sources.kafka_client import consumer_settings, default_consumer, is_transient
from worker.errors import FatalError, TransientError
from worker.intake import Intake

log = logging.getLogger(__name__)

ORIGIN_PREFIX = "kafka:"


def origin_of(topic: str, partition: int) -> str:
    return f"{ORIGIN_PREFIX}{topic}:{partition}"


class Codec(Protocol):
    """Turns one consumed message into the Estuary document the webhook would have carried."""

    collections: Mapping[str, str]  # topic -> collection

    def decode(self, message: Any) -> dict[str, Any] | None:  # noqa: ANN401
        """The document; ``None`` to skip the message (e.g. a checkpoint). Raises on bad bytes."""


@dataclass
class _Partition:
    topic: str
    partition: int
    committed: int | None = None  # what this worker committed last (next offset to read)
    #: (spool seq, next offset) per spooled batch, oldest first; seq 0 = nothing to deliver.
    pending: deque[tuple[int, int]] = field(default_factory=deque)
    eof: bool = False
    read: int | None = None  # next offset after the last message handled


@dataclass
class KafkaCounters:
    messages: int = 0
    tombstones: int = 0
    decode_errors: int = 0
    skipped: int = 0
    spool_entries: int = 0
    commits: int = 0
    commit_failures: int = 0
    rebalances: int = 0
    dropped_entries: int = 0
    last_error: str | None = None
    started_at: float = field(default_factory=time.time)


class KafkaSource:
    """Consumes the configured topics on its own thread and spools what it reads.

    ``delivered_seq()`` is the spool sequence every sink has applied; ``drop(origin)`` removes
    spooled and prepared data of one partition (both from the prepared store and the spool).
    ``consumer_factory`` is for tests.
    """

    def __init__(self, kind: str, config: KafkaConsumerConfig, *, codec: Codec, intake: Intake,
                 dead_letters: DeadLetterStore, delivered_seq: Callable[[], int],
                 drop: Callable[[str], int], metrics: Any = None, single_consumer: bool = False,  # noqa: ANN401
                 consumer_factory: Callable[[dict[str, Any]], Any] | None = None,
                 retry_backoff_s: float = 2.0) -> None:
        self.kind = kind
        self.config = config
        self.codec = codec
        self.intake = intake
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.single_consumer = single_consumer
        self._delivered_seq = delivered_seq
        self._drop = drop
        self.retry_backoff_s = retry_backoff_s
        self._consumer_factory = consumer_factory or default_consumer
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self._lock = threading.Lock()
        self._snapshot: dict[str, Any] = {"state": "created", "assignment": []}
        self.counters = KafkaCounters()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._held_everything = False
        self.refused: str | None = None
        self.crashed: BaseException | None = None
        if metrics is not None:
            from worker.sources.kafka_metrics import KafkaCollector

            metrics.registry.register(KafkaCollector(self))

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> KafkaSource:
        self._thread = threading.Thread(target=self._run, name=self.kind, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Commit what the sinks have and leave the group. True if it closed in time."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            return not self._thread.is_alive()
        return True

    def status(self) -> dict[str, Any]:
        with self._lock:
            snap = dict(self._snapshot)
        c = self.counters
        snap.update(kind=self.kind, group_id=self.config.group_id,
                    topics={t.topic: t.collection for t in self.config.topics},
                    messages=c.messages, tombstones=c.tombstones, decode_errors=c.decode_errors,
                    skipped=c.skipped, spool_entries=c.spool_entries, commits=c.commits,
                    commit_failures=c.commit_failures, rebalances=c.rebalances,
                    dropped_entries=c.dropped_entries, last_error=c.last_error, refused=self.refused)
        if hasattr(self.config, "deletions"):
            snap["deletions"] = self.config.deletions
        return snap

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            consumer = self._consumer_factory(consumer_settings(self.config))
        except Exception as exc:  # noqa: BLE001 - surfaced in status, the webhook keeps running
            self.crashed = exc
            self.counters.last_error = f"{type(exc).__name__}: {exc}"
            log.error("kafka consumer could not start", extra={"source": self.kind, "error": str(exc)[:300]})
            self._publish(None, "failed")
            return
        consumer.subscribe([t.topic for t in self.config.topics], on_assign=self._on_assign,
                           on_revoke=self._on_revoke, on_lost=self._on_lost)
        self._publish(consumer, "running")
        try:
            while not self._stopping.is_set() and self.refused is None:
                messages = consumer.consume(self.config.max_batch_messages, self.config.poll_timeout_s)
                if self.refused is not None:
                    break
                if messages:
                    self.handle(consumer, messages)
                self._commit_delivered(consumer)
                self._publish(consumer, "running")
        except Exception as exc:  # noqa: BLE001
            self.crashed = exc
            self.counters.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("kafka consumer stopped on an error", extra={"source": self.kind})
        finally:
            try:
                self._commit_delivered(consumer)
                consumer.close()  # revokes (commits what the sinks have), leaves the group
            except Exception:  # noqa: BLE001 - closing is best effort; the broker still has it all
                log.warning("kafka consumer close failed", exc_info=True)
            self._publish(None, "refused" if self.refused else "stopped")

    def handle(self, consumer: Any, messages: list[Any]) -> None:  # noqa: ANN401
        """Decode and spool one poll batch, one entry per (partition, collection). Public for tests."""
        from confluent_kafka import KafkaError

        batches: dict[tuple[str, int], list[dict[str, Any]]] = {}
        first: dict[tuple[str, int], int] = {}
        last: dict[tuple[str, int], int] = {}
        bad: list[tuple[str, str | None, str, str, Any]] = []
        for msg in messages:  # where to re-read from if this batch cannot be spooled
            if msg.error() is None:
                first.setdefault((msg.topic(), msg.partition()), msg.offset())
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    state = self._partitions.get((msg.topic(), msg.partition()))
                    if state is not None:
                        state.eof = True
                    continue
                if err.fatal():
                    raise FatalError(f"kafka consumer: {err.str()}")
                log.warning("kafka consumer error", extra={"source": self.kind, "error": err.str()})
                continue
            tp = (msg.topic(), msg.partition())
            self.counters.messages += 1
            collection = self.codec.collections.get(msg.topic(), "")
            try:
                doc = self.codec.decode(msg)
            except Exception as exc:  # noqa: BLE001 - classified below
                if is_transient(exc):
                    self._rewind(consumer, first, f"schema registry: {type(exc).__name__}: {exc}")
                    return
                self.counters.decode_errors += 1
                bad.append((collection, None, "decode",
                            f"{msg.topic()}[{msg.partition()}]@{msg.offset()}: {type(exc).__name__}: {exc}",
                            {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}))
            else:
                if doc is None:
                    self.counters.skipped += 1
                else:
                    if msg.value() is None:
                        self.counters.tombstones += 1
                    batches.setdefault(tp, []).append(doc)
            last[tp] = msg.offset()
            if tp in self._partitions:
                self._partitions[tp].eof = False
        self.dead_letters.add_many(bad)
        if bad and self.metrics is not None:
            self.metrics.documents_dead_lettered.labels("decode").inc(len(bad))
        for tp, offset in last.items():
            state = self._partitions.get(tp)
            if state is None:  # revoked mid-batch: its next owner reads it again
                continue
            docs = batches.get(tp, [])
            seq = 0
            if docs:
                collection = self.codec.collections[tp[0]]
                try:
                    accepted = self.intake.accept(collection, orjson.dumps(docs), origin=origin_of(*tp))
                except TransientError as exc:  # spool full: re-read this partition later
                    self._rewind(consumer, {tp: first[tp]}, str(exc), getattr(exc, "retry_after_s", None))
                    continue
                seq = accepted.seq or 0
                if accepted.seq is not None:
                    self.counters.spool_entries += 1
            state.pending.append((seq, offset + 1))  # Kafka's "next to read": the only arithmetic
            state.read = offset + 1

    def _rewind(self, consumer: Any, first: Mapping[tuple[str, int], int], reason: str,  # noqa: ANN401
                retry_after_s: float | None = None) -> None:
        """Re-read from the first unspooled message of each partition after a back-off."""
        from confluent_kafka import TopicPartition

        self.counters.last_error = reason
        log.warning("kafka batch not spooled; will re-read", extra={"source": self.kind, "error": reason[:300]})
        for (topic, partition), offset in first.items():
            if (topic, partition) in self._partitions:
                consumer.seek(TopicPartition(topic, partition, offset))
        self._stopping.wait(retry_after_s or self.retry_backoff_s)

    def _commit_delivered(self, consumer: Any, only: Iterable[tuple[str, int]] | None = None) -> None:  # noqa: ANN401
        """Commit, per partition, the offset after the last batch every sink has applied."""
        from confluent_kafka import KafkaException, TopicPartition

        delivered = self._delivered_seq()
        keys = list(self._partitions) if only is None else [k for k in only if k in self._partitions]
        offsets = []
        for key in keys:
            p = self._partitions[key]
            target = None
            while p.pending and p.pending[0][0] <= delivered:
                target = p.pending.popleft()[1]
            if target is not None and target != p.committed:
                offsets.append((p, target))
        if not offsets:
            return
        try:
            consumer.commit(offsets=[TopicPartition(p.topic, p.partition, o) for p, o in offsets],
                            asynchronous=False)
        except KafkaException as exc:  # retried on the next loop (the broker still has the data)
            self.counters.commit_failures += 1
            self.counters.last_error = f"commit: {exc}"
            log.warning("kafka commit failed; will retry", extra={"source": self.kind, "error": str(exc)[:300]})
            for p, o in offsets:
                p.pending.appendleft((0, o))
            return
        self.counters.commits += 1
        for p, o in offsets:
            p.committed = o

    # -- rebalance callbacks (run inside consume(), on the loop thread) ------------------------
    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:  # noqa: ANN401
        from confluent_kafka import KafkaException

        self.counters.rebalances += 1
        if self.single_consumer and not self._check_single(consumer, partitions):
            return
        try:  # where the group left off: lag of a partition with nothing new to read is known
            committed = {(tp.topic, tp.partition): tp.offset
                         for tp in consumer.committed(partitions, timeout=10)}
        except KafkaException:
            committed = {}
        for tp in partitions:
            state = self._partitions.setdefault((tp.topic, tp.partition), _Partition(tp.topic, tp.partition))
            offset = committed.get((tp.topic, tp.partition), -1)
            if offset is not None and offset >= 0:
                state.committed = offset
        log.info("kafka partitions assigned", extra={"source": self.kind, "partitions": _names(partitions)})
        self._publish(consumer, "running")

    def _check_single(self, consumer: Any, partitions: list[Any]) -> bool:  # noqa: ANN401
        """Dekaf: refuse to be a second member of the group (see the module docstring)."""
        metadata = consumer.list_topics(timeout=10)
        wanted = {(t.topic, p) for t in self.config.topics
                  for p in (metadata.topics[t.topic].partitions if t.topic in metadata.topics else ())}
        got = {(tp.topic, tp.partition) for tp in partitions}
        if got >= wanted:
            self._held_everything = True
            return True
        if self._held_everything:
            log.warning("another member joined this Dekaf group; it will refuse and leave",
                        extra={"group": self.config.group_id, "partitions": _names(partitions)})
            return True
        self.refused = (f"another consumer in group {self.config.group_id!r} holds "
                        f"{len(wanted - got)} of the {len(wanted)} partitions of "
                        f"{', '.join(t.topic for t in self.config.topics)}: Dekaf is a single-consumer "
                        "pull path (one worker per Dekaf materialization; estuary/flow PR #2093). "
                        "Stop the other worker, give this one another group_id for a separate "
                        "index, or scale out with sources.kafka (materialize-kafka) instead")
        log.error("dekaf source refused", extra={"reason": self.refused})
        self.counters.last_error = self.refused
        return False

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:  # noqa: ANN401
        keys = [(tp.topic, tp.partition) for tp in partitions]
        deadline = time.monotonic() + self.config.delivery_wait_s
        while True:
            self._commit_delivered(consumer, keys)
            if all(not self._partitions[k].pending for k in keys if k in self._partitions):
                break
            if time.monotonic() > deadline or self._stopping.is_set() and self.refused is not None:
                break
            time.sleep(0.05)
        for key in keys:
            state = self._partitions.pop(key, None)
            if state is not None and state.pending:
                dropped = self._drop(origin_of(*key))
                self.counters.dropped_entries += dropped
                log.warning("revoked partition had undelivered data; left to its next owner",
                            extra={"source": self.kind, "partition": f"{key[0]}[{key[1]}]", "dropped": dropped})
        log.info("kafka partitions revoked", extra={"source": self.kind, "partitions": _names(partitions)})
        self._publish(consumer, "running")

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:  # noqa: ANN401
        for tp in partitions:  # another member owns them already: committing would be refused
            state = self._partitions.pop((tp.topic, tp.partition), None)
            if state is not None and state.pending:
                self.counters.dropped_entries += self._drop(origin_of(tp.topic, tp.partition))
        log.warning("kafka partitions lost", extra={"source": self.kind, "partitions": _names(partitions)})

    # -- observability -----------------------------------------------------------------------
    def _publish(self, consumer: Any, state: str) -> None:  # noqa: ANN401
        """Snapshot assignment, positions and watermarks (local calls only; no broker trip)."""
        rows = []
        if consumer is not None and self._partitions:
            from confluent_kafka import TopicPartition

            for p in sorted(self._partitions.values(), key=lambda p: (p.topic, p.partition)):
                try:
                    low, high = consumer.get_watermark_offsets(TopicPartition(p.topic, p.partition),
                                                               cached=True)
                except Exception:  # noqa: BLE001 - status is best effort
                    low = high = -1
                at = (p.read if p.read is not None else p.committed if p.committed is not None
                      else low if low is not None and low >= 0 else None)
                high_wm = high if high is not None and high >= 0 else None
                lag = None if high_wm is None or at is None else max(0, high_wm - at)
                if p.eof:  # the broker said end-of-partition (Dekaf: offsets are byte positions)
                    lag = 0
                rows.append({"topic": p.topic, "partition": p.partition,
                             "collection": self.codec.collections.get(p.topic),
                             "position": at, "committed": p.committed, "high_watermark": high_wm,
                             "lag": lag, "eof": p.eof, "undelivered_batches": len(p.pending)})
        member = None
        if consumer is not None:
            try:
                member = consumer.memberid()
            except Exception:  # noqa: BLE001
                member = None
        with self._lock:
            self._snapshot = {"state": state, "member_id": member, "assignment": rows,
                              "updated_at": time.time()}


def _names(partitions: Iterable[Any]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in partitions)
