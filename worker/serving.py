"""The running service's generations: queries routed by the serving pointer, and dual-writes.

::

    query ──▶ RoutedRetriever ──serving pointer (generations.sqlite, read per query)──▶ the
              runtime of that generation ──▶ its own targets   (one generation per answer)

    live stream ──▶ primary runtime (the service's config; spool → prepare → sink loops)
                └─▶ document store ──FollowLoop──▶ the migration's other generation

The watcher (one thread, every ``WATCH_S``) reads the migration state that ``memory-worker
migrate`` writes: when a migration appears it builds the other generation's runtime (its
recorded config, pointed at its targets; its model loaded once) and starts its follower; when
the migration ends it stops and closes them. It also heartbeats the service's primary
generation, and performs a ``finish`` that fell due (not one that would drop its own primary).

A query embeds with the model of the generation it reads, so a switch between two vector spaces
never pairs one model's query vector with the other's index. The Weaviate alias (for other
readers) is repointed by ``migrate switch``/``rollback``; this worker's own queries resolve the
pointer to the physical collection, which is never ambiguous mid-switch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from worker.contract import QueryRequest, QueryResponse
from worker.docstore import DocumentStore
from worker.follow import FollowLoop, StoreFollower
from worker.migration import Registry, owner_id

log = logging.getLogger(__name__)

WATCH_S = 1.0


class RoutedRetriever:
    """Duck-types :class:`worker.retrieve.Retriever` over the serving generation's runtime."""

    def __init__(self, generations: ServedGenerations) -> None:
        self._g = generations

    @property
    def sinks(self) -> Mapping[str, Any]:
        return self._g.serving_retriever()[1].sinks

    def search(self, req: QueryRequest) -> QueryResponse:
        gen, retriever = self._g.serving_retriever()
        return retriever.search(req).model_copy(update={"generation": gen})

    def get_document(self, doc_id: str, sink: str | None = None) -> Any:  # noqa: ANN401
        return self._g.serving_retriever()[1].get_document(doc_id, sink)

    def sources(self) -> Any:  # noqa: ANN401
        return self._g.serving_retriever()[1].sources()

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401
        """Everything else (catalog, collections, screen …) from the serving generation's."""
        return getattr(self._g.serving_retriever()[1], name)


class ServedGenerations(threading.Thread):
    """The primary runtime plus, during a migration, the other side's runtime and follower."""

    def __init__(self, primary: Any, *, registry: Registry, store: DocumentStore | None,  # noqa: ANN401
                 build_other: Callable[[str], Any], retry: Any, poll_interval_s: float) -> None:  # noqa: ANN401
        super().__init__(name="generations", daemon=True)
        self.primary = primary
        self.primary_id: str = primary.generation.id
        self.registry = registry
        self.store = store
        self._build_other = build_other
        self.retry = retry
        self.poll_interval_s = poll_interval_s
        self.owner = owner_id("service")
        self.others: dict[str, Any] = {}
        self.followers: dict[str, FollowLoop] = {}
        self._retrievers: dict[str, Any] = {self.primary_id: primary.retriever()}
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.error: str | None = None
        self.retriever = RoutedRetriever(self)

    def serving_retriever(self) -> tuple[str, Any]:  # noqa: ANN401
        gen = self.registry.serving() or self.primary_id
        with self._lock:
            retriever = self._retrievers.get(gen)
        if retriever is None:  # not built yet (a switch seconds after start): the primary answers
            return self.primary_id, self._retrievers[self.primary_id]
        return gen, retriever

    # -- the watcher -------------------------------------------------------------------------
    def catch_up_primary(self) -> None:
        """A primary that was fed from the store until this start (a restart on the new config)
        first applies the store changes after its cursor, up to today's head."""
        cursor = self.registry.cursor(self.primary_id)
        if self.store is None or cursor is None:
            return
        head = self.store.head()
        if cursor < head:
            follower = StoreFollower(self.primary, self.store, self.registry, self.primary_id, owner=self.owner)
            loop = FollowLoop(follower, retry=self.retry, poll_interval_s=self.poll_interval_s, until=head)
            self.followers[f"{self.primary_id}:catch-up"] = loop
            loop.start()

    def run(self) -> None:
        self.catch_up_primary()
        while not self.stopping.is_set():
            try:
                self.sync()
                self.error = None
            except Exception as exc:  # noqa: BLE001 - reported in status, retried next tick
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("generation watcher failed; will retry", extra={"error": self.error[:300]})
            self.stopping.wait(WATCH_S)

    def sync(self) -> None:
        self.registry.heartbeat(self.owner, self.primary_id)
        migration = self.registry.migration()
        wanted = set()
        if migration is not None and self.store is not None:
            other = migration.other(self.primary_id)
            due = (migration.phase == "finishing" and migration.finish_at is not None
                   and time.time() >= migration.finish_at and migration.drop_generation == other)
            if other is not None and not due:  # fed until its drop falls due
                wanted.add(other)
        for gen in list(self.others):
            if gen not in wanted:
                self._retire(gen)
        for gen in wanted - set(self.others):
            self._adopt(gen)
        if migration is not None and migration.phase == "finishing":
            from worker.migrate import finish_if_due

            finish_if_due(self.registry, self.primary.config, self.primary.spec, env=None,
                          runtimes={self.primary_id: self.primary, **self.others},
                          service_owner=self.owner, before_drop=self._retire)

    def _adopt(self, gen: str) -> None:
        rt = self._build_other(gen)
        follower = StoreFollower(rt, self.store, self.registry, gen, owner=self.owner)
        loop = FollowLoop(follower, retry=self.retry, poll_interval_s=self.poll_interval_s)
        with self._lock:
            self.others[gen] = rt
            self._retrievers[gen] = rt.retriever()
            self.followers[gen] = loop
        loop.start()
        log.info("generation followed from the document store", extra={"generation": gen})

    def _retire(self, gen: str) -> None:
        with self._lock:
            loop = self.followers.pop(gen, None)
            rt = self.others.pop(gen, None)
            self._retrievers.pop(gen, None)
        if loop is not None:
            loop.stopping.set()
            loop.join(30)
        if rt is not None:
            rt.close()

    def stop(self) -> None:
        self.stopping.set()
        for gen in list(self.others):
            self._retire(gen)
        for loop in list(self.followers.values()):  # the primary's catch-up, if still running
            loop.stopping.set()
            loop.join(30)
        try:
            self.registry.leave(self.owner)
        except Exception:  # noqa: BLE001 - best effort at shutdown
            log.debug("registry leave failed", exc_info=True)

    def report(self) -> dict[str, Any]:
        migration = self.registry.migration()
        out: dict[str, Any] = {"primary": self.primary_id, "serving": self.registry.serving()}
        if self.error:
            out["error"] = self.error
        if migration is not None:
            out["migration"] = {"old": migration.old, "new": migration.new, "phase": migration.phase}
        head = self.store.head() if self.store is not None else None
        for gen, loop in self.followers.items():
            cursor = self.registry.cursor(gen) or 0
            out.setdefault("followers", {})[gen] = {"state": loop.state, "reason": loop.reason,
                                                   "cursor": cursor, "behind": (head or 0) - cursor}
        return out
