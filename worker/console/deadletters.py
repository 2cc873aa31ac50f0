"""The console's dead-letter operations: filter, replay one, purge a filtered set.

::

    DeadLetterStore --Filter(collection, stage)--> the listed entries
    entry (a document) --Intake.accept(collection, [raw])--> spooled, or filed anew (today's reason)
                       --DeadLetterStore.remove([id])-----> the old entry is gone

Replay goes through the webhook's own path (:meth:`worker.intake.Intake.accept`): the document is
validated against today's bindings and spooled, or rejected and filed anew with today's reason;
the prepare loop then screens it again (quality rules) like any other document. The old entry is
removed only after ``accept`` returned: a crash between the two leaves the old entry *and* the
spooled copy, and replaying it again only writes the same version twice (idempotent sinks).

Only entries that hold the document itself can be replayed (stages ``validate``, ``quality``,
``revalidate``, ``prepare``). A ``sink:<name>`` entry holds the record's id, a ``decode`` entry a
Kafka offset, a ``read`` entry nothing: those are re-sent from their source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from worker.deadletter import DeadLetter, DeadLetterStore
from worker.errors import RequestInvalid, TransientError

if TYPE_CHECKING:
    from worker.intake import Intake

#: Stages whose entries keep the rejected document (``raw``) as it arrived.
DOCUMENT_STAGES = ("validate", "quality", "revalidate", "prepare")


@dataclass(frozen=True, slots=True)
class Filter:
    """The dead-letter page's filter (GET parameters); empty means any."""

    collection: str = ""
    stage: str = ""

    def matches(self, entry: DeadLetter) -> bool:
        return (not self.collection or entry.collection == self.collection) and \
            (not self.stage or entry.stage == self.stage)

    @property
    def params(self) -> dict[str, str]:
        """The non-empty parts, for links back to the same view."""
        return {k: v for k, v in (("collection", self.collection), ("stage", self.stage)) if v}

    def describe(self) -> str:
        parts = [f"collection {self.collection}" if self.collection else "",
                 f"stage {self.stage}" if self.stage else ""]
        return ", ".join(p for p in parts if p) or "no filter"


def matching(store: DeadLetterStore, where: Filter, *, up_to_id: int | None = None) -> list[DeadLetter]:
    """The entries ``where`` selects, oldest first (``up_to_id``: none newer than that id).

    The store filters by collection in SQL; the stage is filtered here (see the console's
    README note: ``DeadLetterStore.list(stage=...)`` would move it into SQL)."""
    return [e for e in store.list(collection=where.collection or None)
            if where.matches(e) and (up_to_id is None or e.id <= up_to_id)]


def replay_refusal(entry: DeadLetter) -> str | None:
    """Why ``entry`` cannot be replayed from here, or None when it can."""
    if entry.stage not in DOCUMENT_STAGES:
        return (f"a {entry.stage!r} entry holds a reference, not the document "
                f"({_describe_raw(entry.raw)}); have the source send it again")
    if not isinstance(entry.raw, dict):
        return "the entry holds no document object to send back"
    return None


@dataclass(frozen=True, slots=True)
class Replayed:
    """What became of a replayed entry (the old entry is removed in both cases)."""

    entry: DeadLetter
    spooled_seq: int | None  # validated and spooled: the spool entry that carries it
    refiled: DeadLetter | None  # rejected again at intake: the new entry, with today's reason

    @property
    def spooled(self) -> bool:
        return self.spooled_seq is not None


def replay(intake: Intake, store: DeadLetterStore, entry: DeadLetter, *, draining: bool) -> Replayed:
    """Send ``entry`` back through intake and remove it.

    Raises :class:`RequestInvalid` when it cannot be replayed (no document; its collection is no
    longer bound) and :class:`TransientError` when the worker cannot take it now (draining, the
    spool over its budget); the entry stays in both cases.
    """
    refusal = replay_refusal(entry)
    if refusal is not None:
        raise RequestInvalid(f"dead letter {entry.id} cannot be replayed: {refusal}")
    if draining:
        raise TransientError("the worker is shutting down; replay after it restarts", retry_after_s=5)
    accepted = intake.accept(entry.collection, orjson.dumps([entry.raw]))
    store.remove([entry.id])
    refiled = None
    if accepted.dead_lettered:
        # the newest entry for the same document, filed by accept() just now
        again = [e for e in store.list(collection=entry.collection)
                 if e.id > entry.id and e.stage == "validate"
                 and (e.raw == entry.raw or (e.key is not None and e.key == entry.key))]
        refiled = again[-1] if again else None
    return Replayed(entry, accepted.seq if accepted.accepted else None, refiled)


def purge(store: DeadLetterStore, where: Filter, *, up_to_id: int) -> int:
    """Remove what ``where`` selects, but nothing newer than ``up_to_id``: entries filed after
    the operator confirmed were not in the count they confirmed."""
    return store.remove([e.id for e in matching(store, where, up_to_id=up_to_id)])


def stages_of(entries: Sequence[DeadLetter]) -> list[str]:
    return sorted({e.stage for e in entries} | set(DOCUMENT_STAGES))


def _describe_raw(raw: object) -> str:
    if isinstance(raw, dict) and raw:
        return ", ".join(f"{k}={v}" for k, v in list(raw.items())[:4])
    return "nothing"
