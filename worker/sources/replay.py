"""``memory-worker reindex --from-dekaf | --from-kafka``: replay topics into the sinks.

Every partition of the selected topics is assigned explicitly (no group membership, so it never
disturbs a live group) and read with the same codec as the live source; documents go through
the same prepare → write stages as ``run`` (:class:`worker.pipeline.Pipeline`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from worker.config import KafkaConsumerConfig
from worker.errors import FatalError, TransientError
from worker.sources.kafka import Codec
from worker.sources.kafka_client import consumer_settings, default_consumer, is_transient

@dataclass
class ReplayResult:
    messages: int = 0
    dead_lettered: int = 0
    partitions: int = 0
    stats: Any = None  # ApplyStats


def replay(rt: Any, kind: str, config: KafkaConsumerConfig, *, codec: Codec, group_id: str | None = None,
           from_beginning: bool = False, collections: Iterable[str] | None = None, progress: bool = False,
           idle_timeout_s: float = 10.0, batch_messages: int = 256,
           consumer_factory: Callable[[dict[str, Any]], Any] | None = None) -> ReplayResult:
    """Replay the source's topics straight through ``rt.pipeline`` (prepare → write, the same
    stages as ``run``) until caught up; then return.

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
        raise FatalError(f"not in sources.{kind}.topics: {', '.join(sorted(unknown))}")
    topics = [t.topic for t in config.topics if t.collection in wanted]
    group = group_id or f"{config.group_id}-replay-{int(time.time())}"
    consumer = (consumer_factory or default_consumer)(consumer_settings(config, group_id=group))
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
                collection = codec.collections[msg.topic()]
                try:
                    doc = codec.decode(msg)
                    if doc is not None:
                        group_docs.setdefault(collection, []).append(doc)
                except Exception as exc:  # noqa: BLE001
                    if is_transient(exc):
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


def reindex_command(rt: Any, kind: str, config: KafkaConsumerConfig, codec: Codec, *, group_id: str | None,
                    from_beginning: bool, collection: str | None, progress: bool, as_json: bool) -> int:
    """``memory-worker reindex --from-dekaf | --from-kafka``: replay, print a summary, exit 0
    when caught up. ``rt`` and ``codec`` come from :mod:`worker.runtime`."""
    import json

    started = time.perf_counter()
    try:
        result = replay(rt, kind, config, codec=codec, group_id=group_id, from_beginning=from_beginning,
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
