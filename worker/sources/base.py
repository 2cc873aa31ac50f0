"""The one shape every source has.

A source pushes batches of raw Estuary documents, one collection per batch, into a :data:`Feed`
that the composition root chose: :meth:`worker.intake.Intake.accept` for ``memory-worker run``
(durable in the spool before anything else happens), or the direct prepare → write pipeline
for ``reindex``. Long-running sources (Kafka) also start, stop and report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

#: ``feed(collection, raw_documents, origin)``
Feed = Callable[[str, Sequence[Any], str], Any]


class Source(Protocol):
    kind: str  # "webhook", "dekaf", "kafka", "files"

    def start(self) -> Source:
        """Begin feeding (a thread for pull sources; nothing for push sources)."""

    def stop(self, timeout_s: float) -> bool:
        """Stop feeding; True if it stopped in time."""

    def status(self) -> dict[str, Any]:
        """What ``/estuary/status`` shows for this source."""
