"""The embedding engine: one owner for the model and device, fed by a token-budget queue.

::

    callers (pipeline threads) --submit(chunks)--> cache lookup --misses--> TokenBudgetQueue
        collator thread: waits for budget or deadline, plans length-sorted batches across
        requests, pads them (pinned host memory on CUDA)
        --bounded queue (1 batch of prefetch)--> inference thread: backend.embed_prepared
        --> scatter vectors back to each caller, in its original order; the caller fills the cache

Chunks from many documents and many requests share batches. Token ids come from the chunker;
nothing is tokenized here. A device out-of-memory error halves the batch budget and retries the
same chunks in smaller batches; it reaches the callers only when a single chunk cannot fit, and
the worker keeps running either way.

Start-up budget tuning, several devices (:class:`EnginePool`) and the wiring from config live in
:mod:`worker.engine_pool`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from worker import priority
from worker.batch import Queued, TokenBudgetQueue, plan_batches
from worker.cache import EmbeddingCache
from worker.errors import ModelError
from worker.records import Chunk

log = logging.getLogger(__name__)


class Backend(Protocol):
    """What the engine needs from a model. ``prepare``/``embed_prepared``/``release_memory`` are
    optional: with them, padding runs on the collator thread, beside inference."""

    dimensions: int

    def embed_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray: ...


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS out-of-memory errors (torch's class, or its message on older builds)."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


@dataclass(eq=False)
class _Request:
    out: np.ndarray
    remaining: int
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


@dataclass(eq=False, slots=True)
class _Row:
    """One model row: a unique chunk content in flight, and every request slot waiting for it.

    Concurrent submits of the same content hash attach to the row already queued or running
    instead of adding a second one (in-flight dedupe; the cache only covers finished work).
    """

    token_ids: Sequence[int]
    n_tokens: int
    key: str | None  # content hash while in flight (None for queries: never shared)
    waiters: list[tuple[_Request, int]]

    def live(self) -> bool:
        return any(req.error is None for req, _ in self.waiters)


@dataclass(slots=True)
class EngineStats:
    chunks: int = 0  # embedded by the model (cache hits and duplicates not counted)
    tokens: int = 0
    padded_tokens: int = 0  # what the padded forward passes computed
    batches: int = 0
    seconds: float = 0.0  # inference-thread time in the model
    cache_hits: int = 0
    inflight_shared: int = 0  # rows another request already had in flight (not run again)
    oom_backoffs: int = 0

    def add(self, other: EngineStats) -> None:
        for name in self.__slots__:  # type: ignore[attr-defined]
            setattr(self, name, getattr(self, name) + getattr(other, name))


class PendingVectors:
    """A submitted request; :meth:`result` blocks until its vectors are ready."""

    def __init__(self, out: np.ndarray, todo: dict[str, list[int]], request: _Request | None,
                 cache: EmbeddingCache | None) -> None:
        self._out = out
        self._todo = todo
        self._request = request
        self._cache = cache
        self._finished = request is None

    def result(self, timeout_s: float | None = None) -> np.ndarray:
        """Vectors in the submitted order (float32 ``[n, dim]``); raises the model's error."""
        if self._finished:
            return self._out
        req = self._request
        assert req is not None
        if not req.done.wait(timeout_s):
            raise TimeoutError(f"embedding not finished after {timeout_s} s")
        if req.error is not None:
            raise req.error
        for slot, positions in enumerate(self._todo.values()):
            self._out[positions] = req.out[slot]
        if self._cache is not None:
            self._cache.put_many([(h, req.out[slot]) for slot, h in enumerate(self._todo)])
        self._finished = True
        return self._out


class EmbeddingEngine:
    """Batches chunks from all callers by token budget and runs them on one backend.

    ``max_batch_tokens`` bounds the padded cost of a batch; ``max_wait_ms`` bounds how long a
    chunk waits for company; ``sort_window_batches`` is how many budgets' worth of pending chunks
    are sorted together (more: less padding, later first batch).
    """

    def __init__(self, backend: Backend, *, max_batch_tokens: int, max_wait_ms: int,
                 cache: EmbeddingCache | None = None, clock: Callable[[], float] = time.monotonic,
                 on_batch: Callable[[int, int, float], None] | None = None,
                 sort_window_batches: int = 32) -> None:
        self.backend = backend
        self.cache = cache
        self.stats = EngineStats()
        self.sort_window_batches = sort_window_batches
        self._on_batch = on_batch
        self._queue: TokenBudgetQueue[_Row] = TokenBudgetQueue(
            max_batch_tokens=max_batch_tokens, max_wait_s=max_wait_ms / 1000, clock=clock)
        self._urgent: deque[Queued] = deque()
        self._cond = threading.Condition()
        self._batches: queue.Queue[tuple[list[Queued], Any] | None] = queue.Queue(maxsize=1)
        self._stats_lock = threading.Lock()
        self._in_flight_tokens = 0  # queued or being embedded: the pool's load measure
        self._inflight: dict[str, _Row] = {}  # content hash -> its row, until its vector is out
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._clock = clock
        self._prepare = getattr(backend, "prepare", None)
        self._embed_prepared = getattr(backend, "embed_prepared", None)
        if self._prepare is None or self._embed_prepared is None:
            self._prepare, self._embed_prepared = (lambda ids: ids), backend.embed_ids

    @property
    def max_batch_tokens(self) -> int:
        return self._queue.max_batch_tokens

    @max_batch_tokens.setter
    def max_batch_tokens(self, value: int) -> None:
        with self._cond:
            self._queue.max_batch_tokens = value

    @property
    def load_tokens(self) -> int:
        """Tokens submitted and not yet embedded."""
        return self._in_flight_tokens

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> EmbeddingEngine:
        if not self._threads:
            self._stopping = False
            self._threads = [threading.Thread(target=self._collate, name="embed-collator", daemon=True),
                             threading.Thread(target=self._infer, name="embed-inference", daemon=True)]
            for t in self._threads:
                t.start()
        return self

    def stop(self) -> None:
        """Finish what is queued, then stop both threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=30)
        self._threads = []

    def __enter__(self) -> EmbeddingEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the caller's side -------------------------------------------------------------------
    def embed(self, chunks: Sequence[Chunk], *, use_cache: bool = True,
              priority: bool = False) -> np.ndarray:
        """Vectors for ``chunks`` in their order (float32 ``[n, dim]``). Blocks; thread-safe."""
        return self.submit(chunks, use_cache=use_cache, priority=priority).result()

    def submit(self, chunks: Sequence[Chunk], *, use_cache: bool = True,
               priority: bool = False) -> PendingVectors:
        """Queue ``chunks`` (cache hits and duplicate contents are not queued); returns at once.

        ``priority`` (queries): skip the budget wait and go ahead of every planned batch, so a
        query waits for at most the batches already handed to the model, not a backlog.
        """
        out = np.zeros((len(chunks), self.backend.dimensions), dtype=np.float32)
        if not chunks:
            return PendingVectors(out, {}, None, None)
        cache = self.cache if use_cache else None  # queries bypass the cache
        cached = cache.get_many([c.content_hash for c in chunks]) if cache else {}
        todo: dict[str, list[int]] = {}
        for i, c in enumerate(chunks):
            vec = cached.get(c.content_hash)
            if vec is not None:
                out[i] = vec
            else:  # an empty hash (a query) is never shared with another input
                todo.setdefault(c.content_hash or f"\0{i}", []).append(i)
        with self._stats_lock:
            self.stats.cache_hits += len(chunks) - sum(len(v) for v in todo.values())
        if not todo:
            return PendingVectors(out, {}, None, None)
        if not self._threads:
            raise ModelError("embedding engine used before start()")
        request = _Request(np.zeros((len(todo), out.shape[1]), dtype=np.float32), len(todo))
        with self._cond:
            rows: list[_Row] = []
            shared = 0
            for slot, (key, positions) in enumerate(todo.items()):
                chunk = chunks[positions[0]]
                row = self._inflight.get(key) if chunk.content_hash else None
                if row is not None:
                    row.waiters.append((request, slot))
                    shared += 1
                    continue
                row = _Row(chunk.token_ids, chunk.n_tokens, key if chunk.content_hash else None,
                           [(request, slot)])
                if row.key is not None:
                    self._inflight[row.key] = row
                rows.append(row)
            if priority:
                now = self._clock()
                self._urgent.extend(Queued(row, row.n_tokens, now) for row in rows)
            else:
                self._queue.put_many([(row, row.n_tokens) for row in rows])
            self._in_flight_tokens += sum(row.n_tokens for row in rows)
            self._cond.notify_all()
        with self._stats_lock:
            self.stats.inflight_shared += shared
        return PendingVectors(out, todo, request, cache)

    # -- collator thread ---------------------------------------------------------------------
    def _collate(self) -> None:
        priority.background()
        planned: deque[list[Queued]] = deque()
        while True:
            with self._cond:
                while not (self._stopping or self._urgent or planned or self._queue.ready()):
                    deadline = self._queue.deadline()
                    self._cond.wait(None if deadline is None else max(0.0, deadline - self._clock()))
                if self._urgent:  # queries jump ahead of the planned batches
                    urgent = list(self._urgent)
                    self._urgent.clear()
                    plan = plan_batches([q.n_tokens for q in urgent], self._queue.max_batch_tokens)
                    planned.extendleft(reversed([[urgent[i] for i in b] for b in plan]))
                elif not planned:
                    if self._stopping and not len(self._queue):
                        self._batches.put(None)
                        return
                    planned.extend(self._queue.take(
                        max_tokens=self.sort_window_batches * self._queue.max_batch_tokens))
            batch = planned.popleft()
            try:
                prepared = self._prepare([q.item.token_ids for q in batch])
            except Exception as exc:  # noqa: BLE001 - a bug in padding fails its callers only
                self._fail(batch, exc)
                continue
            self._batches.put((batch, prepared))  # blocks while one batch waits: backpressure

    # -- inference thread (the only one that touches the model) ------------------------------
    def _infer(self) -> None:
        priority.background()  # the model's OpenMP threads, started from here, inherit it
        while True:
            work = self._batches.get()
            if work is None:
                return
            self._run(*work)

    def _run(self, batch: list[Queued], prepared: Any) -> None:
        live = [q for q in batch if q.item.live()]
        if len(live) != len(batch):  # its requests already failed: do not spend model time on it
            self._finish([q for q in batch if not q.item.live()])
            if not live:
                return
            batch, prepared = live, self._prepare([q.item.token_ids for q in live])
        started = time.perf_counter()
        try:
            vectors = self._embed_prepared(prepared)
        except Exception as exc:  # noqa: BLE001 - handed to the waiting callers
            if is_out_of_memory(exc) and len(batch) > 1:
                self._back_off(batch)
                return
            self._fail(batch, exc)
            return
        elapsed = time.perf_counter() - started
        n_tokens = sum(q.n_tokens for q in batch)
        width = max(q.n_tokens for q in batch)
        with self._stats_lock:
            self.stats.batches += 1
            self.stats.chunks += len(batch)
            self.stats.tokens += n_tokens
            self.stats.padded_tokens += width * len(batch)
            self.stats.seconds += elapsed
        if self._on_batch:
            self._on_batch(len(batch), n_tokens, elapsed)
        for q, waiters, vec in zip(batch, self._finish(batch), vectors):
            for req, slot in waiters:
                req.out[slot] = vec
                req.remaining -= 1  # only this thread decrements
                if req.remaining == 0:
                    req.done.set()

    def _back_off(self, batch: list[Queued]) -> None:
        """Out of device memory: halve the budget for good and retry these chunks under it."""
        release = getattr(self.backend, "release_memory", None)
        if release is not None:
            release()
        width = max(q.n_tokens for q in batch)
        padded = width * len(batch)
        new_budget = max(width, min(self._queue.max_batch_tokens, padded) // 2)
        self.max_batch_tokens = new_budget
        with self._stats_lock:
            self.stats.oom_backoffs += 1
        log.warning("embedding out of memory; halving the batch budget",
                    extra={"max_batch_tokens": new_budget, "chunks": len(batch)})
        # A budget at least the widest item always splits a batch of two or more, so this ends.
        lengths = [q.n_tokens for q in batch]
        plan = plan_batches(lengths, new_budget)
        if len(plan) == 1:
            plan = [plan[0][: len(batch) // 2], plan[0][len(batch) // 2:]]
        for part in plan:
            sub = [batch[i] for i in part]
            self._run(sub, self._prepare([q.item.token_ids for q in sub]))

    def _fail(self, batch: list[Queued], exc: BaseException) -> None:
        log.error("embedding failed", extra={"chunks": len(batch), "error": type(exc).__name__})
        for waiters in self._finish(batch):
            for req, _ in waiters:
                if req.error is None:
                    req.error = exc
                req.done.set()

    def _finish(self, batch: list[Queued]) -> list[list[tuple[_Request, int]]]:
        """Take these rows out of flight (under the lock, so no submit attaches to them after
        their waiters were read) and return each row's waiters."""
        with self._cond:
            self._in_flight_tokens -= sum(q.n_tokens for q in batch)
            out = []
            for q in batch:
                row: _Row = q.item
                if row.key is not None and self._inflight.get(row.key) is row:
                    del self._inflight[row.key]
                out.append(list(row.waiters))
            return out
