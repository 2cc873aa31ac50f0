"""Engines per device: start-up budget tuning on CUDA, one engine per device of a host
(:class:`EnginePool`), and :func:`build_engine`, the composition root's one call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import numpy as np

from worker.cache import EmbeddingCache
from worker.config import EmbeddingConfig
from worker.engine import Backend, EmbeddingEngine, EngineStats, is_out_of_memory
from worker.errors import ModelError
from worker.records import Chunk

log = logging.getLogger(__name__)


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
