"""Dekaf source: Estuary's Kafka-protocol read path, beside the webhook, into the same spool.

::

    Dekaf topics --consume--> decode (Avro, Confluent framing) --> Estuary documents
        --Intake.accept (validate, dead-letter, fsync)--> Spool --commit offsets--> group

Contract:

* **Durable before commit.** Each poll batch is decoded, then appended to the :class:`Spool`
  through the webhook's :class:`Intake` (one entry per collection per batch); only after
  ``Spool.append`` returned are the offsets committed, synchronously, exactly at the positions
  spooled (``message.offset() + 1``: Kafka's "next to read"). A crash between append and
  commit replays the batch: harmless, writes are idempotent and versions are guarded.
* **Offsets are journal byte positions**, not counters: they jump by document size. Nothing
  here computes a position arithmetically other than the ``+ 1`` of the commit convention; lag
  and progress are in offset units (bytes on Dekaf), so a caught-up Dekaf partition may show a
  lag just under one document's size.
* **Rebalance.** Batches are handled synchronously between polls and revocation is delivered
  inside ``consume()``, so a revoked partition never has a half-handled batch: the callback
  commits what was spooled and not yet committed (a failed commit is retried there), forgets
  everything else of that partition, and waits (bounded by ``delivery_wait_s``) until the sinks
  have applied what this worker spooled, so the next owner does not write newer versions while
  this worker still applies older ones.
* **Decoding.** Dekaf folds ``/`` to ``_`` in field names (``_meta_op``, ``_meta_uuid``); a
  nested ``_meta`` record and a root document (``flow_document``) are accepted too. The
  document is rebuilt with ``_meta: {uuid, op}``; Avro ``uuid`` values become strings,
  timestamps ISO 8601 strings. A message that cannot be decoded is dead-lettered (stage
  ``decode``) and its offset committed; a schema-registry outage is transient: the batch is
  re-read after a back-off.
* **Deletes.** ``deletions: kafka``: a tombstone (key, null value) deletes that key. It carries
  no ``_meta``, so its version comes from the message timestamp (milliseconds, = publish time):
  :func:`publish_uuid` builds a v1 UUID at the *end* of that millisecond with the tick counter at
  its maximum, so the delete orders after every version published up to that millisecond (a
  version of the same key published later within the same millisecond would lose to it).
  ``deletions: cdc``: ``_is_deleted == 1`` marks a delete document.

Versions across workers: N workers in one group split the partitions; a key lives in one
journal, so one worker owns it at a time. When a partition moves, the pipeline's guard compares
each version with the **sink's** stored version (``Pipeline(verify_with_sink=True)``), not only
the local ledger, so an older version applied after another worker's newer one changes nothing.

Remaining race window: check-then-write is not atomic in Pinecone, Weaviate or LanceDB. Two
workers writing the same key at the same instant (both read version v1, then one writes v3 and
the other v2) can leave the older one last; and a delete leaves no row in the sink, so a worker
applying an older version *after* another worker's delete (a SIGKILLed worker restarting with
undelivered spool entries of a partition that has moved) can resurrect the key. The bounded
wait on revocation closes the window for graceful rebalances; for crashes, give each worker a
persistent ``state_dir`` and restart it promptly.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from worker.config import DekafSourceConfig
from worker.deadletter import DeadLetterStore
from worker.documents import Binding
from worker.errors import FatalError, TransientError
from worker.intake import Intake

log = logging.getLogger(__name__)

_GREGORIAN_TO_UNIX_TICKS = 0x01B21DD213814000
_TICKS_PER_MS = 10_000
_FOLDED_META = "_meta_"
_ROOT_FIELDS = ("flow_document", "_root")
_SKIP_FIELDS = ("_is_deleted", "flow_published_at")
_TOMBSTONE_NODE = 0x0000_4465_6B61  # "Dka": marks versions we made from a message timestamp


# -- decoding (pure) -----------------------------------------------------------------------------

def publish_uuid(timestamp_ms: int) -> str:
    """A Flow-style v1 UUID for a publish time known to the millisecond (tombstones).

    The 100 ns timestamp is the last tick of that millisecond and the 4-bit tick counter
    (``clock_seq >> 10``) is at its maximum, so the version sorts after every document published
    in or before that millisecond.
    """
    ticks = timestamp_ms * _TICKS_PER_MS + _GREGORIAN_TO_UNIX_TICKS + _TICKS_PER_MS - 1
    clock_seq = 0xF << 10
    return str(uuidlib.UUID(fields=(ticks & 0xFFFFFFFF, (ticks >> 32) & 0xFFFF,
                                    ((ticks >> 48) & 0x0FFF) | 0x1000,
                                    0x80 | ((clock_seq >> 8) & 0x3F), clock_seq & 0xFF,
                                    _TOMBSTONE_NODE)))


def plain(value: Any) -> Any:
    """Avro-decoded values → JSON values (UUID → str, timestamps → ISO 8601, Decimal → float)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, uuidlib.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _set_pointer(doc: dict[str, Any], pointer: str, value: Any) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]
    node = doc
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = node[part] = {}
        node = nxt
    node[parts[-1]] = value


def unfold(record: Mapping[str, Any], key_pointers: Iterable[str] = ()) -> dict[str, Any]:
    """A Dekaf record (``/`` folded to ``_``) → the Estuary document shape a binding expects.

    ``_meta_<name>`` fields and a nested ``_meta`` record become ``_meta``; a key pointer whose
    folded name is present (``/a/b`` arrives as ``a_b``) is put back at its pointer.
    """
    record = plain(dict(record))
    doc: dict[str, Any] = {}
    for name in _ROOT_FIELDS:
        root = record.pop(name, None)
        if isinstance(root, str):
            try:
                root = orjson.loads(root)
            except orjson.JSONDecodeError:
                root = None
        if isinstance(root, dict):
            doc.update(root)
    meta = dict(doc.get("_meta") or {})
    nested = record.pop("_meta", None)
    if isinstance(nested, dict):
        meta.update({k: v for k, v in nested.items() if v is not None})
    for name in list(record):
        if name.startswith(_FOLDED_META):
            value = record.pop(name)
            if value is not None:
                meta[name[len(_FOLDED_META):]] = value
        elif name in _SKIP_FIELDS:
            record.pop(name)
    for pointer in key_pointers:
        folded = pointer[1:].replace("/", "_")
        if "/" in pointer[1:] and folded in record:
            _set_pointer(doc, pointer, record.pop(folded))
    doc.update(record)
    doc["_meta"] = meta
    return doc


def document_of(binding: Binding, key: Mapping[str, Any] | None, value: Mapping[str, Any] | None,
                *, timestamp_ms: int, deletions: str) -> dict[str, Any]:
    """One Dekaf message → one Estuary document (a delete document for a tombstone)."""
    if value is None:  # tombstone: kafka deletion mode
        doc = unfold(key or {}, binding.key_pointers)
        doc["_meta"] = {"uuid": publish_uuid(timestamp_ms), "op": "d"}
        return doc
    deleted = value.get("_is_deleted")
    doc = unfold(value, binding.key_pointers)
    if key:  # the key record is authoritative for key fields the value may not select
        for name, v in unfold(key, binding.key_pointers).items():
            if name != "_meta":
                doc.setdefault(name, v)
    meta = doc["_meta"]
    if "uuid" not in meta:  # `_meta/uuid` not selected: fall back to the publish timestamp
        meta["uuid"] = publish_uuid(timestamp_ms)
    if deletions == "cdc" and deleted in (1, True):
        meta["op"] = "d"
    return doc


# -- the consumer --------------------------------------------------------------------------------

def consumer_settings(config: DekafSourceConfig, *, group_id: str | None = None) -> dict[str, Any]:
    """librdkafka settings for the configured Dekaf endpoint (secrets included: never log)."""
    settings: dict[str, Any] = {
        "bootstrap.servers": config.bootstrap_servers,
        "security.protocol": config.security_protocol,
        "group.id": group_id or config.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": int(config.session_timeout_s * 1000),
        "heartbeat.interval.ms": max(100, int(config.session_timeout_s * 1000 / 10)),
        "enable.partition.eof": True,
    }
    if config.security_protocol.startswith("SASL"):
        settings["sasl.mechanism"] = config.sasl_mechanism
        settings["sasl.username"] = config.username or ""
        settings["sasl.password"] = config.password.get_secret_value() if config.password else ""
    return settings


def schema_registry(config: DekafSourceConfig) -> Any:
    """A Confluent schema-registry client (HTTP Basic = broker credentials by default)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    conf: dict[str, Any] = {"url": config.schema_registry_url}
    user = config.schema_registry_username or config.username
    secret = config.schema_registry_password or config.password
    if user and not config.schema_registry_url.startswith("mock://"):
        conf["basic.auth.user.info"] = f"{user}:{secret.get_secret_value() if secret else ''}"
    return SchemaRegistryClient.new_client(conf)


def _transient(exc: Exception) -> bool:
    """Is a decode failure worth retrying (registry unreachable) rather than dead-lettering?"""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    if isinstance(exc, SchemaRegistryError):
        status = exc.http_status_code
        return status is None or status < 0 or status >= 500 or status in (401, 403, 408, 429)
    from confluent_kafka.serialization import SerializationError

    if isinstance(exc, (SerializationError, ValueError, EOFError, IndexError, KeyError, TypeError)):
        return False
    return True  # network errors of the registry's HTTP client, timeouts


class Decoder:
    """Avro key/value deserializers shared by the live source and the replay."""

    def __init__(self, config: DekafSourceConfig, bindings: Mapping[str, Binding], registry: Any) -> None:
        from confluent_kafka.schema_registry.avro import AvroDeserializer

        self.config = config
        self.collections = {t.topic: t.collection for t in config.topics}
        self.bindings = bindings
        self._key = AvroDeserializer(registry)
        self._value = AvroDeserializer(registry)

    def decode(self, message: Any) -> dict[str, Any]:
        """Raise on undecodable bytes; :func:`_transient` tells a retry from a dead letter."""
        from confluent_kafka.serialization import MessageField, SerializationContext

        topic = message.topic()
        binding = self.bindings[self.collections[topic]]
        raw_key, raw_value = message.key(), message.value()
        key = self._key(raw_key, SerializationContext(topic, MessageField.KEY)) if raw_key else None
        value = (self._value(raw_value, SerializationContext(topic, MessageField.VALUE))
                 if raw_value is not None else None)
        if value is None and not key:
            raise ValueError("tombstone without a key")
        _, timestamp_ms = message.timestamp()
        return document_of(binding, key, value, timestamp_ms=timestamp_ms, deletions=self.config.deletions)


@dataclass
class _Partition:
    topic: str
    partition: int
    committed: int | None = None  # what this worker committed last (next offset to read)
    spooled: int | None = None  # spooled, commit pending (next offset to read)
    last_seq: int = 0  # last spool entry holding documents of this partition
    eof: bool = False


@dataclass
class DekafCounters:
    messages: int = 0
    tombstones: int = 0
    decode_errors: int = 0
    spool_entries: int = 0
    commits: int = 0
    commit_failures: int = 0
    rebalances: int = 0
    last_error: str | None = None
    started_at: float = field(default_factory=time.time)


class DekafSource:
    kind = "dekaf"

    """Consumes the configured Dekaf topics on its own thread and spools what it reads.

    ``delivered_seq`` returns the spool sequence every sink has applied (for the bounded wait
    on revocation); ``consumer_factory`` and ``registry`` are for tests.
    """

    def __init__(self, config: DekafSourceConfig, *, bindings: Mapping[str, Binding], intake: Intake,
                 dead_letters: DeadLetterStore, metrics: Any = None,
                 delivered_seq: Callable[[], int] | None = None, delivery_wait_s: float = 10.0,
                 registry: Any = None, consumer_factory: Callable[[dict[str, Any]], Any] | None = None,
                 retry_backoff_s: float = 2.0) -> None:
        self.config = config
        self.intake = intake
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.decoder = Decoder(config, bindings, registry if registry is not None else schema_registry(config))
        self._delivered_seq = delivered_seq
        self.delivery_wait_s = delivery_wait_s
        self.retry_backoff_s = retry_backoff_s
        self._consumer_factory = consumer_factory or _default_consumer
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self._lock = threading.Lock()
        self._snapshot: dict[str, Any] = {"state": "created", "assignment": []}
        self.counters = DekafCounters()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.crashed: BaseException | None = None
        if metrics is not None:
            metrics.registry.register(_Collector(self))

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> DekafSource:
        self._thread = threading.Thread(target=self._run, name="dekaf", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Leave the group (commits what is spooled). True if the consumer closed in time."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            return not self._thread.is_alive()
        return True

    def status(self) -> dict[str, Any]:
        with self._lock:
            snap = dict(self._snapshot)
        c = self.counters
        snap.update(group_id=self.config.group_id, deletions=self.config.deletions,
                    topics={t.topic: t.collection for t in self.config.topics},
                    messages=c.messages, tombstones=c.tombstones, decode_errors=c.decode_errors,
                    spool_entries=c.spool_entries, commits=c.commits, commit_failures=c.commit_failures,
                    rebalances=c.rebalances, last_error=c.last_error)
        return snap

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            consumer = self._consumer_factory(consumer_settings(self.config))
        except Exception as exc:  # noqa: BLE001 - surfaced in status, the webhook keeps running
            self.crashed = exc
            self.counters.last_error = f"{type(exc).__name__}: {exc}"
            log.error("dekaf consumer could not start", extra={"error": str(exc)[:300]})
            self._publish(None, "failed")
            return
        consumer.subscribe([t.topic for t in self.config.topics], on_assign=self._on_assign,
                           on_revoke=self._on_revoke, on_lost=self._on_lost)
        self._publish(consumer, "running")
        try:
            while not self._stopping.is_set():
                messages = consumer.consume(self.config.max_batch_messages, self.config.poll_timeout_s)
                if messages:
                    self.handle(consumer, messages)
                self._retry_commits(consumer)
                self._publish(consumer, "running")
        except Exception as exc:  # noqa: BLE001
            self.crashed = exc
            self.counters.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("dekaf consumer stopped on an error")
        finally:
            try:
                self._retry_commits(consumer)
                consumer.close()  # revokes: commits what is spooled, leaves the group
            except Exception:  # noqa: BLE001 - closing is best effort; spooled data replays
                log.warning("dekaf consumer close failed", exc_info=True)
            self._publish(None, "stopped")

    def handle(self, consumer: Any, messages: list[Any]) -> None:
        """Decode, spool (durable), then commit one poll batch. Public for tests."""
        from confluent_kafka import KafkaError

        docs: dict[str, list[dict[str, Any]]] = {}
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
                    raise FatalError(f"dekaf consumer: {err.str()}")
                log.warning("dekaf consumer error", extra={"error": err.str()})
                continue
            tp = (msg.topic(), msg.partition())
            self.counters.messages += 1
            collection = self.decoder.collections[msg.topic()]
            try:
                doc = self.decoder.decode(msg)
            except Exception as exc:  # noqa: BLE001 - classified below
                if _transient(exc):
                    self._rewind(consumer, first, f"schema registry: {type(exc).__name__}: {exc}")
                    return
                self.counters.decode_errors += 1
                bad.append((collection, None, "decode",
                            f"{msg.topic()}[{msg.partition()}]@{msg.offset()}: {type(exc).__name__}: {exc}",
                            {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}))
            else:
                if msg.value() is None:
                    self.counters.tombstones += 1
                docs.setdefault(collection, []).append(doc)
            last[tp] = msg.offset()
            if tp in self._partitions:
                self._partitions[tp].eof = False
        self.dead_letters.add_many(bad)
        if bad and self.metrics is not None:
            self.metrics.documents_dead_lettered.labels("decode").inc(len(bad))
        spooled: set[str] = set()
        for collection, batch in docs.items():
            try:
                accepted = self.intake.accept(collection, orjson.dumps(batch))
            except TransientError as exc:  # spool full: re-read what is not spooled, later
                pending = {tp: o for tp, o in first.items()
                           if self.decoder.collections[tp[0]] not in spooled}
                self._rewind(consumer, pending, str(exc), getattr(exc, "retry_after_s", None))
                for tp in pending:
                    last.pop(tp, None)
                break
            spooled.add(collection)
            if accepted.seq is not None:
                self.counters.spool_entries += 1
                for tp in last:
                    if self.decoder.collections[tp[0]] == collection and tp in self._partitions:
                        self._partitions[tp].last_seq = accepted.seq
            if self.metrics is not None:
                self.metrics.documents_received.labels(collection).inc(accepted.received)
                self.metrics.documents_accepted.labels(collection).inc(accepted.accepted)
                if accepted.dead_lettered:
                    self.metrics.documents_dead_lettered.labels("validate").inc(accepted.dead_lettered)
        for tp, offset in last.items():
            state = self._partitions.get(tp)
            if state is not None:  # still ours: nothing revoked it mid-batch
                state.spooled = offset + 1  # Kafka's "next to read"; the only arithmetic here
        self._retry_commits(consumer)

    def _rewind(self, consumer: Any, first: Mapping[tuple[str, int], int], reason: str,
                retry_after_s: float | None = None) -> None:
        """Re-read from the first unspooled message of each partition after a back-off."""
        from confluent_kafka import TopicPartition

        self.counters.last_error = reason
        log.warning("dekaf batch not spooled; will re-read", extra={"error": reason[:300]})
        for (topic, partition), offset in first.items():
            if (topic, partition) in self._partitions:
                consumer.seek(TopicPartition(topic, partition, offset))
        self._stopping.wait(retry_after_s or self.retry_backoff_s)

    def _retry_commits(self, consumer: Any, only: Iterable[tuple[str, int]] | None = None) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        keys = list(self._partitions) if only is None else [k for k in only if k in self._partitions]
        pending = [self._partitions[k] for k in keys
                   if self._partitions[k].spooled is not None
                   and self._partitions[k].spooled != self._partitions[k].committed]
        if not pending:
            return
        offsets = [TopicPartition(p.topic, p.partition, p.spooled) for p in pending]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # kept as pending: retried next loop or on revocation
            self.counters.commit_failures += 1
            self.counters.last_error = f"commit: {exc}"
            log.warning("dekaf commit failed; will retry", extra={"error": str(exc)[:300]})
            return
        self.counters.commits += 1
        for p in pending:
            p.committed = p.spooled

    # -- rebalance callbacks (run inside consume(), on the loop thread) ------------------------
    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        from confluent_kafka import KafkaException

        self.counters.rebalances += 1
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
        log.info("dekaf partitions assigned", extra={"partitions": _names(partitions)})
        self._publish(consumer, "running")

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._retry_commits(consumer, keys)
        self._wait_delivered(max((self._partitions[k].last_seq for k in keys if k in self._partitions),
                                 default=0))
        for key in keys:
            self._partitions.pop(key, None)
        log.info("dekaf partitions revoked", extra={"partitions": _names(partitions)})
        self._publish(consumer, "running")

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:  # another member owns them already: committing would be refused
            self._partitions.pop((tp.topic, tp.partition), None)
        log.warning("dekaf partitions lost", extra={"partitions": _names(partitions)})

    def _wait_delivered(self, seq: int) -> None:
        if not seq or self._delivered_seq is None:
            return
        deadline = time.monotonic() + self.delivery_wait_s
        while self._delivered_seq() < seq:
            if time.monotonic() > deadline:
                log.warning("revoked partitions still have undelivered spool entries",
                            extra={"seq": seq, "delivered": self._delivered_seq()})
                return
            time.sleep(0.05)

    # -- observability -----------------------------------------------------------------------
    def _publish(self, consumer: Any, state: str) -> None:
        """Snapshot assignment, positions and watermarks (local calls only; no broker trip)."""
        rows = []
        if consumer is not None and self._partitions:
            from confluent_kafka import TopicPartition

            tps = [TopicPartition(p.topic, p.partition) for p in self._partitions.values()]
            try:
                positions = {(tp.topic, tp.partition): tp.offset for tp in consumer.position(tps)}
            except Exception:  # noqa: BLE001 - status is best effort
                positions = {}
            for p in sorted(self._partitions.values(), key=lambda p: (p.topic, p.partition)):
                try:
                    low, high = consumer.get_watermark_offsets(TopicPartition(p.topic, p.partition),
                                                               cached=True)
                except Exception:  # noqa: BLE001
                    low = high = -1
                position = positions.get((p.topic, p.partition), -1)
                # Nothing consumed yet this session: reading resumes at the committed offset, or
                # at the beginning (auto.offset.reset) for a partition the group never committed.
                at = (position if position is not None and position >= 0
                      else p.committed if p.committed is not None
                      else low if low is not None and low >= 0 else None)
                high_wm = high if high is not None and high >= 0 else None
                lag = None if high_wm is None or at is None else max(0, high_wm - at)
                if p.eof:  # the broker said end-of-partition (Dekaf: offsets are byte positions)
                    lag = 0
                rows.append({"topic": p.topic, "partition": p.partition,
                             "collection": self.decoder.collections.get(p.topic),
                             "position": at, "committed": p.committed, "high_watermark": high_wm,
                             "lag": lag, "eof": p.eof})
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


def _default_consumer(settings: dict[str, Any]) -> Any:
    from confluent_kafka import Consumer

    return Consumer(settings, logger=logging.getLogger("worker.dekaf.librdkafka"))


class _Collector:
    """Prometheus gauges read from the source's last snapshot at scrape time."""

    def __init__(self, source: DekafSource) -> None:
        self.source = source

    def collect(self):  # noqa: ANN201
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self.source.status()
        labels = ["topic", "partition"]
        lag = GaugeMetricFamily("memory_worker_dekaf_lag_offsets",
                                "High watermark minus position (journal bytes on Dekaf)", labels=labels)
        position = GaugeMetricFamily("memory_worker_dekaf_position_offset", "Next offset to read",
                                     labels=labels)
        committed = GaugeMetricFamily("memory_worker_dekaf_committed_offset",
                                      "Offset this worker committed (after spooling)", labels=labels)
        high = GaugeMetricFamily("memory_worker_dekaf_high_watermark_offset", "Partition end offset",
                                 labels=labels)
        for row in status["assignment"]:
            name = [row["topic"], str(row["partition"])]
            for family, value in ((lag, row["lag"]), (position, row["position"]),
                                  (committed, row["committed"]), (high, row["high_watermark"])):
                if value is not None:
                    family.add_metric(name, value)
        yield lag
        yield position
        yield committed
        yield high
        yield GaugeMetricFamily("memory_worker_dekaf_assigned_partitions",
                                "Partitions this worker owns in the group", value=len(status["assignment"]))
        yield CounterMetricFamily("memory_worker_dekaf_messages", "Dekaf messages consumed",
                                  value=status["messages"])
        yield CounterMetricFamily("memory_worker_dekaf_tombstones", "Dekaf tombstones consumed",
                                  value=status["tombstones"])


# -- replay (memory-worker reindex --from-dekaf) ---------------------------------------------------

@dataclass
class ReplayResult:
    messages: int = 0
    dead_lettered: int = 0
    partitions: int = 0
    stats: Any = None  # ApplyStats


def replay(rt: Any, config: DekafSourceConfig, *, group_id: str | None = None, from_beginning: bool = False,
           collections: Iterable[str] | None = None, progress: bool = False, registry: Any = None,
           idle_timeout_s: float = 10.0, batch_messages: int = 256,
           consumer_factory: Callable[[dict[str, Any]], Any] | None = None) -> ReplayResult:
    """Replay Dekaf topics straight through ``rt.pipeline`` until caught up; then return.

    Every partition of the selected topics is assigned explicitly (no group rebalance). The
    start is the beginning with ``from_beginning``, else the group's committed offsets (a fresh
    group has none, so it starts at the beginning too). The end is the high watermark seen at
    start; a partition counts as caught up when its position reaches it, when the broker says
    end-of-partition, or (Dekaf: offsets are byte positions, the position after the last
    document sits just past its start) when nothing arrived for ``idle_timeout_s``. Offsets are
    committed to the group after each applied batch, so an interrupted replay resumes.
    """
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
    from tqdm import tqdm

    from worker.pipeline import ApplyStats

    wanted = set(collections) if collections else {t.collection for t in config.topics}
    unknown = wanted - {t.collection for t in config.topics}
    if unknown:
        raise FatalError(f"not in sources.dekaf.topics: {', '.join(sorted(unknown))}")
    topics = [t.topic for t in config.topics if t.collection in wanted]
    group = group_id or f"{config.group_id}-replay-{int(time.time())}"
    decoder = Decoder(config, rt.bindings, registry if registry is not None else schema_registry(config))
    consumer = (consumer_factory or _default_consumer)(consumer_settings(config, group_id=group))
    result = ReplayResult(stats=ApplyStats())
    try:
        metadata = consumer.list_topics(timeout=30)
        tps = []
        for topic in topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                raise FatalError(f"topic {topic!r} not found on {config.bootstrap_servers}")
            tps += [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        committed = {} if from_beginning else {
            (tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=30)}
        start: dict[tuple[str, int], int] = {}
        end: dict[tuple[str, int], int] = {}
        for tp in tps:
            low, high = consumer.get_watermark_offsets(tp, timeout=30)
            key = (tp.topic, tp.partition)
            start[key] = committed.get(key, -1) if committed.get(key, -1) >= 0 else low
            end[key] = high
            tp.offset = start[key] if key in committed and committed[key] >= 0 else OFFSET_BEGINNING
        consumer.assign(tps)
        result.partitions = len(tps)
        todo = {k for k in start if end[k] > start[k]}
        total = sum(max(0, end[k] - start[k]) for k in todo)
        bar = tqdm(total=total, unit="offset", desc="replay", disable=not progress)
        seen = dict(start)
        idle_since = time.monotonic()
        while todo:
            messages = consumer.consume(batch_messages, 1.0)
            group_docs: dict[str, list[dict[str, Any]]] = {}
            commit: dict[tuple[str, int], int] = {}
            for msg in messages:
                key = (msg.topic(), msg.partition())
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        todo.discard(key)
                    continue
                result.messages += 1
                collection = decoder.collections[msg.topic()]
                try:
                    group_docs.setdefault(collection, []).append(decoder.decode(msg))
                except Exception as exc:  # noqa: BLE001
                    if _transient(exc):
                        raise TransientError(f"schema registry: {exc}") from exc
                    result.dead_lettered += 1
                    rt.dead_letters.add(collection, None, "decode", f"{type(exc).__name__}: {exc}",
                                        {"topic": msg.topic(), "partition": msg.partition(),
                                         "offset": msg.offset()})
                bar.update(max(0, min(msg.offset() + 1, end[key]) - seen[key]))
                seen[key] = max(seen[key], min(msg.offset() + 1, end[key]))
                commit[key] = msg.offset() + 1
                if msg.offset() + 1 >= end[key]:
                    todo.discard(key)
            for collection, raws in group_docs.items():
                docs, rejected = rt.pipeline.validate(collection, raws)
                result.dead_lettered += rejected
                result.stats.add(rt.pipeline.apply(docs))
            if commit:
                consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in commit.items()],
                                asynchronous=False)
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > idle_timeout_s:
                break  # nothing more arrives: caught up (see the docstring)
        bar.update(max(0, total - bar.n))
        bar.close()
    finally:
        consumer.close()
    return result


def reindex_command(config: Any, env: Mapping[str, str], *, sink: str | None, group_id: str | None,
                    from_beginning: bool, collection: str | None, progress: bool, as_json: bool) -> int:
    """``memory-worker reindex --from-dekaf``: replay, print a summary, exit 0 when caught up."""
    import json
    import sys

    from worker.runtime import build_runtime

    if config.sources.dekaf is None:
        print("error: --from-dekaf needs sources.dekaf in the config", file=sys.stderr)
        return 2
    rt = build_runtime(config, env, sink=sink)
    started = time.perf_counter()
    try:
        result = replay(rt, config.sources.dekaf, group_id=group_id, from_beginning=from_beginning,
                        collections=[collection] if collection else None, progress=progress)
    finally:
        rt.close()
    stats = result.stats
    elapsed = time.perf_counter() - started
    summary = {"messages": result.messages, "partitions": result.partitions, "keys": stats.documents,
               "written": stats.written, "deleted": stats.deleted, "chunks": stats.chunks,
               "skipped_stale": stats.skipped_stale, "unchanged": stats.unchanged,
               "dead_lettered": result.dead_lettered + stats.dead_lettered,
               "elapsed_s": round(elapsed, 2)}
    print(json.dumps(summary) if as_json else " ".join(f"{k}={v}" for k, v in summary.items()))
    return 0
