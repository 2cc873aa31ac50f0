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

:class:`EnginePool` puts one engine on each device of a host (``embedding.devices``) and sends
each request to the least-loaded engine, splitting large requests across all of them.
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

from worker.batch import Queued, TokenBudgetQueue, plan_batches
from worker.cache import EmbeddingCache
from worker.config import EmbeddingConfig
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


@dataclass(slots=True)
class EngineStats:
    chunks: int = 0  # embedded by the model (cache hits and duplicates not counted)
    tokens: int = 0
    padded_tokens: int = 0  # what the padded forward passes computed
    batches: int = 0
    seconds: float = 0.0  # inference-thread time in the model
    cache_hits: int = 0
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
        self._queue: TokenBudgetQueue[tuple[_Request, int, Sequence[int]]] = TokenBudgetQueue(
            max_batch_tokens=max_batch_tokens, max_wait_s=max_wait_ms / 1000, clock=clock)
        self._urgent: deque[Queued] = deque()
        self._cond = threading.Condition()
        self._batches: queue.Queue[tuple[list[Queued], Any] | None] = queue.Queue(maxsize=1)
        self._stats_lock = threading.Lock()
        self._in_flight_tokens = 0  # queued or being embedded: the pool's load measure
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
        items = [((request, slot, chunks[positions[0]].token_ids), chunks[positions[0]].n_tokens)
                 for slot, positions in enumerate(todo.values())]
        with self._cond:
            if priority:
                now = self._clock()
                self._urgent.extend(Queued(item, n, now) for item, n in items)
            else:
                self._queue.put_many(items)
            self._in_flight_tokens += sum(n for _, n in items)
            self._cond.notify_all()
        return PendingVectors(out, todo, request, cache)

    # -- collator thread ---------------------------------------------------------------------
    def _collate(self) -> None:
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
                prepared = self._prepare([q.item[2] for q in batch])
            except Exception as exc:  # noqa: BLE001 - a bug in padding fails its callers only
                self._fail(batch, exc)
                continue
            self._batches.put((batch, prepared))  # blocks while one batch waits: backpressure

    # -- inference thread (the only one that touches the model) ------------------------------
    def _infer(self) -> None:
        while True:
            work = self._batches.get()
            if work is None:
                return
            self._run(*work)

    def _run(self, batch: list[Queued], prepared: Any) -> None:
        live = [q for q in batch if q.item[0].error is None]
        if len(live) != len(batch):  # a request already failed: do not spend model time on it
            self._release([q for q in batch if q.item[0].error is not None])
            if not live:
                return
            batch, prepared = live, self._prepare([q.item[2] for q in live])
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
        for q, vec in zip(batch, vectors):
            req, slot, _ = q.item
            req.out[slot] = vec
            req.remaining -= 1  # only this thread decrements
            if req.remaining == 0:
                req.done.set()
        self._release(batch)

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
            self._run(sub, self._prepare([q.item[2] for q in sub]))

    def _fail(self, batch: list[Queued], exc: BaseException) -> None:
        log.error("embedding failed", extra={"chunks": len(batch), "error": type(exc).__name__})
        for q in batch:
            req: _Request = q.item[0]
            if req.error is None:
                req.error = exc
            req.done.set()
        self._release(batch)

    def _release(self, batch: list[Queued]) -> None:
        with self._cond:
            self._in_flight_tokens -= sum(q.n_tokens for q in batch)


# -- start-up budget tuning (CUDA) ---------------------------------------------------------------

def autotune_budget(backend: Backend, *, max_seq_tokens: int, start_tokens: int,
                    ceiling_tokens: int, headroom: float = 0.8, filler_id: int = 1000) -> int:
    """The largest batch budget that fits device memory, times ``headroom``.

    Probes worst-case batches (every row ``max_seq_tokens`` long) at ``start_tokens``, doubling
    until out of memory or ``ceiling_tokens``, halving instead when the start does not fit. The
    answer is a multiple of ``max_seq_tokens``, at least one full row. Raises :class:`ModelError`
    when not even one full-length row fits. Run once at start-up, before the engine starts.
    """
    info = getattr(backend, "info", None)
    cls_id, sep_id = (info.cls_id, info.sep_id) if info is not None else (filler_id, filler_id)
    release = getattr(backend, "release_memory", None)

    def fits(budget: int) -> bool:
        rows = max(1, budget // max_seq_tokens)
        row = [cls_id, *([filler_id] * (max_seq_tokens - 2)), sep_id]
        try:
            backend.embed_ids([row] * rows)
            return True
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if release is not None:
                release()
            return False

    budget = max(max_seq_tokens, min(start_tokens, ceiling_tokens))
    if fits(budget):
        while budget * 2 <= ceiling_tokens and fits(budget * 2):
            budget *= 2
    else:
        while budget > max_seq_tokens:
            budget = max(max_seq_tokens, budget // 2)
            if fits(budget):
                break
        else:
            raise ModelError(f"one {max_seq_tokens}-token sequence does not fit device memory")
        if budget == max_seq_tokens and not fits(budget):
            raise ModelError(f"one {max_seq_tokens}-token sequence does not fit device memory")
    tuned = max(max_seq_tokens, int(budget * headroom) // max_seq_tokens * max_seq_tokens)
    log.info("batch budget tuned", extra={"largest_fitting": budget, "max_batch_tokens": tuned})
    return tuned


# -- several devices on one host -----------------------------------------------------------------

class EnginePool:
    """One engine per device; each request goes to the least-loaded engine (``least_loaded``) or
    the next in turn (``round_robin``). A request over ``split_tokens`` real tokens is cut into
    one contiguous part per engine, run in parallel, and put back together in order.

    Same caller interface as :class:`EmbeddingEngine`: ``start``/``stop``/``embed``/``submit``/
    ``stats``.
    """

    def __init__(self, engines: Sequence[EmbeddingEngine], *, policy: str = "least_loaded",
                 split_tokens: int | None = None) -> None:
        if not engines:
            raise ValueError("an engine pool needs at least one engine")
        if policy not in ("least_loaded", "round_robin"):
            raise ValueError(f"unknown pool policy {policy!r}")
        self.engines = list(engines)
        self.policy = policy
        self.split_tokens = split_tokens if split_tokens is not None else \
            2 * min(e.max_batch_tokens for e in self.engines)
        self._turn = 0
        self._lock = threading.Lock()

    @property
    def backend(self) -> Backend:
        return self.engines[0].backend

    @property
    def cache(self) -> EmbeddingCache | None:
        return self.engines[0].cache

    @property
    def max_batch_tokens(self) -> int:
        return min(e.max_batch_tokens for e in self.engines)

    @property
    def stats(self) -> EngineStats:
        total = EngineStats()
        for e in self.engines:
            total.add(e.stats)
        return total

    def start(self) -> EnginePool:
        for e in self.engines:
            e.start()
        return self

    def stop(self) -> None:
        for e in self.engines:
            e.stop()

    def __enter__(self) -> EnginePool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _pick(self) -> EmbeddingEngine:
        with self._lock:
            if self.policy == "round_robin":
                engine = self.engines[self._turn % len(self.engines)]
                self._turn += 1
                return engine
            return min(self.engines, key=lambda e: e.load_tokens)

    def embed(self, chunks: Sequence[Chunk], *, use_cache: bool = True,
              priority: bool = False) -> np.ndarray:
        tokens = sum(c.n_tokens for c in chunks)
        if len(self.engines) == 1 or tokens <= self.split_tokens or len(chunks) < len(self.engines):
            return self._pick().embed(chunks, use_cache=use_cache, priority=priority)
        parts = _split_by_tokens(chunks, len(self.engines))
        pending = [e.submit(part, use_cache=use_cache, priority=priority)
                   for e, part in zip(self.engines, parts)]
        return np.concatenate([p.result() for p in pending])


def _split_by_tokens(chunks: Sequence[Chunk], n_parts: int) -> list[Sequence[Chunk]]:
    """Contiguous parts of about equal token counts (so equal model time), none empty."""
    total = sum(c.n_tokens for c in chunks)
    parts: list[Sequence[Chunk]] = []
    start, acc = 0, 0
    for i, c in enumerate(chunks):
        acc += c.n_tokens
        remaining_parts = n_parts - len(parts) - 1
        if remaining_parts and acc >= total * (len(parts) + 1) / n_parts \
                and len(chunks) - (i + 1) >= remaining_parts:
            parts.append(chunks[start:i + 1])
            start = i + 1
    parts.append(chunks[start:])
    return parts


def cpu_batch_tokens(max_seq_tokens: int) -> int:
    """The CPU budget when none is configured: 2,048 tokens (a few full rows).

    On CPU the model is compute-bound at any batch size and small batches stay in cache: on the
    2-core bench machine 2,048 gave ~18% more tokens per CPU-second than 16,384 (bench/README.md).
    """
    return max(2048, 4 * max_seq_tokens)


# -- wiring --------------------------------------------------------------------------------------

def build_engine(config: EmbeddingConfig, backends: Sequence[Backend], *, max_seq_tokens: int,
                 cache: EmbeddingCache | None = None,
                 on_batch: Callable[[int, int, float], None] | None = None
                 ) -> EmbeddingEngine | EnginePool:
    """Started engine(s) for ``backends`` (one per device): the composition root's one call.

    On CUDA with ``autotune_batch_tokens``, each device's budget is probed at start-up (from
    ``max_batch_tokens`` up to 8x it). On CPU, a budget left unset in the config becomes
    :func:`cpu_batch_tokens` (small batches measured faster there); a set one is used as is.
    """
    engines = []
    for backend in backends:
        budget = config.max_batch_tokens
        device = str(getattr(backend, "device", "cpu"))
        if device == "cpu" and "max_batch_tokens" not in config.model_fields_set:
            budget = cpu_batch_tokens(max_seq_tokens)
        if config.autotune_batch_tokens and device.startswith("cuda"):
            budget = autotune_budget(backend, max_seq_tokens=max_seq_tokens, start_tokens=budget,
                                     ceiling_tokens=8 * budget)
        engines.append(EmbeddingEngine(backend, max_batch_tokens=budget,
                                       max_wait_ms=config.max_wait_ms, cache=cache,
                                       on_batch=on_batch))
    if len(engines) == 1:
        return engines[0].start()
    return EnginePool(engines).start()
