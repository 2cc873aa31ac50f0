"""The embedding engine: one owner for the model and device, fed by a token-budget queue.

::

    callers (pipeline threads) --embed(chunks)--> cache lookup --misses--> TokenBudgetQueue
        collator thread: waits for budget or deadline, plans length-sorted batches
        --bounded queue (1 batch of prefetch)--> inference thread: Embedder.embed_ids
        --> scatter vectors back to each caller, in its original order; fill the cache

Chunks from many documents and many requests share batches. Token ids come from the chunker;
nothing is tokenized here. A device out-of-memory error halves the batch budget and retries the
same batch in halves; it never reaches the caller unless a single chunk cannot fit.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from worker.batch import Queued, TokenBudgetQueue
from worker.cache import EmbeddingCache
from worker.errors import ModelError
from worker.records import Chunk

log = logging.getLogger(__name__)


class Backend(Protocol):
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
    chunks: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    seconds: float = 0.0
    cache_hits: int = 0
    oom_backoffs: int = 0


class EmbeddingEngine:
    def __init__(self, backend: Backend, *, max_batch_tokens: int, max_wait_ms: int,
                 cache: EmbeddingCache | None = None, clock: Callable[[], float] = time.monotonic,
                 on_batch: Callable[[int, int, float], None] | None = None) -> None:
        self.backend = backend
        self.cache = cache
        self.stats = EngineStats()
        self._on_batch = on_batch
        self._queue: TokenBudgetQueue[tuple[_Request, int, tuple[int, ...]]] = TokenBudgetQueue(
            max_batch_tokens=max_batch_tokens, max_wait_s=max_wait_ms / 1000, clock=clock)
        self._cond = threading.Condition()
        self._batches: queue.Queue[list[Queued] | None] = queue.Queue(maxsize=1)
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._clock = clock

    @property
    def max_batch_tokens(self) -> int:
        return self._queue.max_batch_tokens

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> EmbeddingEngine:
        if not self._threads:
            self._threads = [threading.Thread(target=self._collate, name="embed-collator", daemon=True),
                             threading.Thread(target=self._infer, name="embed-inference", daemon=True)]
            for t in self._threads:
                t.start()
        return self

    def stop(self) -> None:
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
    def embed(self, chunks: Sequence[Chunk], *, use_cache: bool = True) -> np.ndarray:
        """Vectors for ``chunks`` in their order (float32 ``[n, dim]``). Blocks; thread-safe."""
        out = np.zeros((len(chunks), self.backend.dimensions), dtype=np.float32)
        if not chunks:
            return out
        cache = self.cache if use_cache else None  # queries bypass the cache
        cached = cache.get_many([c.content_hash for c in chunks]) if cache else {}
        todo: dict[str, list[int]] = {}
        for i, c in enumerate(chunks):
            vec = cached.get(c.content_hash)
            if vec is not None:
                out[i] = vec
            else:
                todo.setdefault(c.content_hash, []).append(i)
        self.stats.cache_hits += len(chunks) - sum(len(v) for v in todo.values())
        if not todo:
            return out
        unique = np.zeros((len(todo), out.shape[1]), dtype=np.float32)
        request = _Request(unique, len(todo))
        if not self._threads:
            raise ModelError("embedding engine used before start()")
        with self._cond:
            for slot, positions in enumerate(todo.values()):
                ids = chunks[positions[0]].token_ids
                self._queue.put((request, slot, ids), len(ids))
            self._cond.notify_all()
        request.done.wait()
        if request.error is not None:
            raise request.error
        for slot, positions in enumerate(todo.values()):
            out[positions] = unique[slot]
        if cache is not None:
            cache.put_many([(h, unique[slot]) for slot, h in enumerate(todo)])
        return out

    # -- collator thread ---------------------------------------------------------------------
    def _collate(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._queue.ready():
                    deadline = self._queue.deadline()
                    self._cond.wait(None if deadline is None else max(0.0, deadline - self._clock()))
                if self._stopping and not len(self._queue):
                    self._batches.put(None)
                    return
                # Take a few budgets' worth at a time: enough to sort well, little enough to
                # start the model early.
                planned = self._queue.take(max_tokens=8 * self._queue.max_batch_tokens)
            for batch in planned:
                self._batches.put(batch)  # blocks while one batch is already waiting: backpressure

    # -- inference thread (the only one that touches the model) ------------------------------
    def _infer(self) -> None:
        while True:
            batch = self._batches.get()
            if batch is None:
                return
            self._run(batch)

    def _run(self, batch: list[Queued]) -> None:
        ids = [q.item[2] for q in batch]
        started = time.perf_counter()
        try:
            vectors = self.backend.embed_ids(ids)
        except Exception as exc:  # noqa: BLE001 - handed to the waiting callers
            if is_out_of_memory(exc) and len(batch) > 1:
                self._queue.max_batch_tokens = max(max(len(i) for i in ids),
                                                   self._queue.max_batch_tokens // 2)
                self.stats.oom_backoffs += 1
                log.warning("embedding out of memory; halving the batch budget",
                            extra={"max_batch_tokens": self._queue.max_batch_tokens})
                half = len(batch) // 2
                self._run(batch[:half])
                self._run(batch[half:])
                return
            for q in batch:
                req: _Request = q.item[0]
                req.error = exc
                req.done.set()
            return
        elapsed = time.perf_counter() - started
        width = max(len(i) for i in ids)
        self.stats.batches += 1
        self.stats.chunks += len(ids)
        self.stats.tokens += sum(len(i) for i in ids)
        self.stats.padded_tokens += width * len(ids)
        self.stats.seconds += elapsed
        if self._on_batch:
            self._on_batch(len(ids), sum(len(i) for i in ids), elapsed)
        for q, vec in zip(batch, vectors):
            req, slot, _ = q.item
            req.out[slot] = vec
            req.remaining -= 1  # only this thread decrements
            if req.remaining == 0:
                req.done.set()
