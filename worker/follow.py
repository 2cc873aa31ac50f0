"""Feed one index generation from the document store, in change order.

::

    documents.sqlite (seq 1, 2, 3 …) --page--> screen (that generation's bindings) --> Pipeline
        (prepare: newest per key, guard, chunk, embed once) --> that generation's sink writers
        --> cursor[generation] = last seq (generations.sqlite)

This one mechanism is a migration's backfill *and* its dual-write: after ``migrate start`` the
new generation's cursor is 0, so the follower first applies every stored document (the
backfill), then every change the live stream writes into the store (the dual-write), seconds
behind the primary. It also keeps the *old* generation fresh after a service restarted on the
new config, so ``rollback`` serves an up-to-date index.

Exactly one process applies changes to a generation at a time: the holder of the lease
``follow:<generation>`` (the running service's follow loop, or ``migrate backfill`` in the
CLI). The cursor advances only after the sinks confirmed a page, in the same transaction that
renews the lease, so ``kill -9`` at any point re-applies at most one page (idempotent writes:
deterministic ids, the version guard, unchanged documents skipped).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from worker import priority
from worker.configbase import RetryConfig
from worker.delivery import _Loop
from worker.docstore import DocumentStore
from worker.errors import TransientError
from worker.migration import Registry
from worker.records import ApplyStats

log = logging.getLogger(__name__)

#: A follower holds its lease this long past its last page (then anyone may take over).
LEASE_S = 60.0


class LeaseLost(TransientError):
    """Another process took over a generation's follower (ours was too slow to renew)."""


@dataclass(slots=True)
class FollowProgress:
    cursor: int
    head: int
    stats: ApplyStats

    @property
    def behind(self) -> int:
        return max(0, self.head - self.cursor)


class StoreFollower:
    """Applies ``store`` changes to one generation's runtime (``rt``: worker.runtime.Runtime)."""

    def __init__(self, rt: object, store: DocumentStore, registry: Registry, generation: str, *,
                 owner: str, page: int = 256) -> None:
        self.rt = rt
        self.store = store
        self.registry = registry
        self.generation = generation
        self.owner = owner
        self.page = page
        self.lease = f"follow:{generation}"
        self.stats = ApplyStats()

    def acquire(self) -> bool:
        return self.registry.acquire(self.lease, self.owner, LEASE_S)

    def release(self) -> None:
        self.registry.release(self.lease, self.owner)

    def cursor(self) -> int:
        return self.registry.cursor(self.generation) or 0

    def step(self, *, through: int | None = None) -> int:
        """Apply one page of changes after the cursor (at most ``through``); returns how many.

        The caller holds the lease. Raises what the sinks raise (the cursor stays put)."""
        rows = self.store.changes(self.cursor(), limit=self.page, through=through)
        if not rows:
            return 0
        if not self.acquire():  # renewed before every page, so a slow page cannot outlive it
            raise LeaseLost(f"{self.owner} lost the follow lease of {self.generation}")
        pipeline = self.rt.pipeline  # type: ignore[attr-defined]
        docs = []
        run: list = []
        for i, row in enumerate(rows):  # consecutive rows of one collection are screened together
            run.append(row.document)
            if i + 1 == len(rows) or rows[i + 1].collection != row.collection:
                parsed, _ = pipeline.preparer.parse(row.collection, run, store=False)
                docs.extend(parsed)
                run = []
        with self._renewing():  # a page can take longer than the lease on a busy host
            self.stats.add(pipeline.apply(docs))
        self.registry.advance(self.generation, rows[-1].seq, owner=self.owner, lease_s=LEASE_S)
        return len(rows)

    @contextlib.contextmanager
    def _renewing(self) -> Iterator[None]:
        done = threading.Event()

        def renew() -> None:
            while not done.wait(LEASE_S / 4):
                self.acquire()

        beat = threading.Thread(target=renew, name=f"lease-{self.generation}", daemon=True)
        beat.start()
        try:
            yield
        finally:
            done.set()
            beat.join()

    def run_to(self, head: int, *, on_progress: Callable[[FollowProgress], None] | None = None,
               stop: Callable[[], bool] = lambda: False) -> FollowProgress:
        """Apply every change through ``head`` (the caller holds the lease)."""
        while not stop():
            if self.step(through=head) == 0:
                break
            if on_progress is not None:
                on_progress(self.progress(head))
        return self.progress(head)

    def progress(self, head: int | None = None) -> FollowProgress:
        return FollowProgress(self.cursor(), self.store.head() if head is None else head, self.stats)


class FollowLoop(_Loop):
    """The service's follower of one generation: takes the lease when free, then keeps the
    generation within a poll of the store's head; backs off on errors like a sink loop."""

    def __init__(self, follower: StoreFollower, *, retry: RetryConfig, poll_interval_s: float,
                 until: int | None = None, rng: Callable[[float, float], float] = random.uniform) -> None:
        super().__init__(f"follow-{follower.generation}", retry=retry, poll_interval_s=poll_interval_s, rng=rng)
        self.follower = follower
        #: Stop once the cursor reaches this change (a primary catching up after a restart).
        self.until = until

    def run(self) -> None:
        priority.background()
        wait = 0.0
        try:
            while not self.stopping.wait(wait):
                wait = self.poll_interval_s
                if not self.follower.acquire():
                    holder = self.follower.registry.lease_holder(self.follower.lease)
                    self.state, self.reason = "waiting", f"lease held by {holder}"
                    wait = 1.0
                    continue
                self.busy.set()
                try:
                    n = self.follower.step(through=self.until)
                except Exception as exc:  # noqa: BLE001 - the error tree decides the back-off
                    wait = self.failed(exc, "store follower")
                    continue
                finally:
                    self.busy.clear()
                self.succeeded()
                if n:
                    wait = 0.0
                elif self.until is not None and self.follower.cursor() >= self.until:
                    break
        finally:
            self.follower.release()
            self.state = "stopped"


def rebuild_from_store(rt: object, store: DocumentStore, *, page: int = 256, collection: str | None = None,
                       on_page: Callable[[int], None] | None = None) -> ApplyStats:
    """Apply every stored document (tombstones included) to ``rt``'s sinks: ``reindex
    --from-store``. No cursor: a rerun is idempotent (unchanged documents are skipped)."""
    stats = ApplyStats()
    pipeline = rt.pipeline  # type: ignore[attr-defined]
    batch: list = []

    def flush() -> None:
        docs = []
        for name in dict.fromkeys(r.collection for r in batch):
            parsed, _ = pipeline.preparer.parse(name, [r.document for r in batch if r.collection == name],
                                                store=False)
            docs.extend(parsed)
        stats.add(pipeline.apply(docs))
        if on_page is not None:
            on_page(len(batch))
        batch.clear()

    for row in store.iter_all():
        if collection is not None and row.collection != collection:
            continue
        batch.append(row)
        if len(batch) >= page:
            flush()
    if batch:
        flush()
    return stats
