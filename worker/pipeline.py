"""prepare → write, synchronously: one pass over a group of documents into every sink.

The same two stages the service runs in its loops (:mod:`worker.prepare`, :mod:`worker.write`),
called directly: ``reindex`` replays, ``dlq replay`` and tests use it. In the service a durable
prepared store sits between them (:mod:`worker.prepared`, :mod:`worker.delivery`); here the
record goes straight from the preparer to each writer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import reduce
from typing import Any

from worker.prepare import Preparer, newest_versions
from worker.records import ApplyStats, FlowDocument
from worker.write import SinkWriter, WriteOutcome

__all__ = ["ApplyStats", "Pipeline", "merge_outcomes", "newest_versions"]


def merge_outcomes(stats: ApplyStats, outcomes: Mapping[str, WriteOutcome]) -> ApplyStats:
    """Add the writers' outcomes to the preparer's counts (a document counts once)."""
    if not outcomes:
        return stats
    every = list(outcomes.values())
    stats.written += len(set().union(*(o.written for o in every)))
    stats.deleted += len(set().union(*(o.deleted for o in every)))
    stats.skipped_stale += len(reduce(set.intersection, (o.stale for o in every)))
    stats.unchanged += len(reduce(set.intersection, (o.unchanged for o in every)))
    stats.dead_lettered += sum(o.dead_lettered for o in every)
    for name, o in outcomes.items():
        stats.per_sink_written[name] = stats.per_sink_written.get(name, 0) + o.records
    return stats


class Pipeline:
    def __init__(self, preparer: Preparer, writers: Mapping[str, SinkWriter]) -> None:
        self.preparer = preparer
        self.writers = dict(writers)

    @property
    def verify_with_sink(self) -> bool:
        return any(w.verify_with_sink for w in self.writers.values())

    @verify_with_sink.setter
    def verify_with_sink(self, value: bool) -> None:
        for w in self.writers.values():
            w.verify_with_sink = value

    def validate(self, collection: str, raws: Sequence[Any]) -> tuple[list[FlowDocument], int]:
        """Parse documents; invalid ones go to the dead-letter store. Returns (valid, rejected)."""
        return self.preparer.parse(collection, raws)

    def apply(self, docs: Sequence[FlowDocument], *, sinks: Sequence[str] | None = None) -> ApplyStats:
        stats = ApplyStats()
        record = self.preparer.prepare(docs, stats)
        names = list(sinks) if sinks is not None else list(self.writers)
        outcomes = {name: self.writers[name].write(record) for name in names} if record.documents else {}
        return merge_outcomes(stats, outcomes)
