"""The embedding engine (worker/engine.py) with fake backends at the model boundary.

A fake backend's vector is a pure function of the token ids, so every result can be checked
exactly, and the batches it was called with show the budget, the sort and the retries.
"""

from __future__ import annotations

import hashlib
import random
import threading

import numpy as np
import pytest

from worker.config import EmbeddingConfig
from worker.engine import EmbeddingEngine
from worker.engine_pool import EnginePool, autotune_budget, build_engine
from worker.errors import ModelError
from worker.records import Chunk

WAIT_S = 10  # generous bound on a result that should come at once (never a speed assertion)


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, which is how the engine recognises one."""


class FakeBackend:
    dimensions = 4

    def __init__(self, *, oom_above_tokens: int | None = None, fail_on: int | None = None,
                 device: str = "cpu") -> None:
        self.calls: list[list[tuple[int, ...]]] = []
        self.oom_above_tokens = oom_above_tokens
        self.fail_on = fail_on  # a token id that makes the model raise
        self.device = device
        self.released = 0
        self.gate: threading.Event | None = None  # set: the model may run

    def embed_ids(self, batch):
        if self.gate is not None:
            self.gate.wait(WAIT_S)
        padded = max(len(ids) for ids in batch) * len(batch)
        if self.oom_above_tokens is not None and padded > self.oom_above_tokens:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if self.fail_on is not None and any(self.fail_on in ids for ids in batch):
            raise ValueError("model exploded")
        self.calls.append([tuple(ids) for ids in batch])
        return np.stack([expected_vector(ids) for ids in batch])

    def release_memory(self):
        self.released += 1


def expected_vector(ids) -> np.ndarray:
    return np.array([len(ids), sum(ids) % 9973, ids[0], ids[-1]], dtype=np.float32)


def make_chunk(ids, doc="doc:1", index=0) -> Chunk:
    ids = tuple(ids)
    return Chunk(doc, index, f"text {ids[:3]}", ids, hashlib.blake2b(repr(ids).encode()).hexdigest())


def random_chunks(rng: random.Random, n: int, doc: str = "doc:1") -> list[Chunk]:
    chunks = []
    for i in range(n):
        length = rng.randint(200, 256) if rng.random() < 0.8 else rng.randint(3, 199)
        chunks.append(make_chunk([101, *(rng.randrange(1000, 30000) for _ in range(length - 2)), 102],
                                 doc, i))
    return chunks


def assert_exact(vectors: np.ndarray, chunks) -> None:
    np.testing.assert_array_equal(vectors, np.stack([expected_vector(c.token_ids) for c in chunks]))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


# -- order, budget, sharing ----------------------------------------------------------------------

def test_many_concurrent_requests_get_their_own_vectors_in_order_within_budget():
    backend = FakeBackend()
    rng = random.Random(1)
    requests = [random_chunks(rng, rng.randint(1, 60), doc=f"doc:{r}") for r in range(12)]
    results: dict[int, np.ndarray] = {}
    with EmbeddingEngine(backend, max_batch_tokens=2048, max_wait_ms=20) as engine:
        def call(r: int) -> None:
            results[r] = engine.embed(requests[r])

        threads = [threading.Thread(target=call, args=(r,)) for r in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S)
    for r, chunks in enumerate(requests):
        assert_exact(results[r], chunks)
    for batch in backend.calls:
        assert max(len(ids) for ids in batch) * len(batch) <= 2048
    embedded = [ids for batch in backend.calls for ids in batch]
    assert sorted(embedded) == sorted(c.token_ids for chunks in requests for c in chunks)
    assert engine.stats.chunks == len(embedded)
    assert engine.stats.padded_tokens >= engine.stats.tokens == sum(map(len, embedded))


def test_batches_are_sorted_by_length_so_padding_stays_small():
    backend = FakeBackend()
    chunks = random_chunks(random.Random(2), 600)
    with EmbeddingEngine(backend, max_batch_tokens=4096, max_wait_ms=5) as engine:
        assert_exact(engine.embed(chunks), chunks)
    assert engine.stats.padded_tokens / engine.stats.tokens <= 1.05


def test_chunks_of_several_requests_share_a_batch():
    backend = FakeBackend()
    clock = FakeClock()
    a = [make_chunk([101, 7, 102], "doc:a")]
    b = [make_chunk([101, 8, 9, 102], "doc:b")]
    with EmbeddingEngine(backend, max_batch_tokens=16384, max_wait_ms=50, clock=clock) as engine:
        pa, pb = engine.submit(a), engine.submit(b)
        clock.advance(0.05)
        assert_exact(pa.result(WAIT_S), a)
        assert_exact(pb.result(WAIT_S), b)
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 2


def test_duplicate_contents_are_embedded_once_but_returned_everywhere():
    backend = FakeBackend()
    chunks = random_chunks(random.Random(3), 5)
    doubled = chunks + chunks[::-1]
    with EmbeddingEngine(backend, max_batch_tokens=4096, max_wait_ms=1) as engine:
        assert_exact(engine.embed(doubled), doubled)
    assert sum(len(b) for b in backend.calls) == 5


def test_empty_request_and_use_before_start():
    engine = EmbeddingEngine(FakeBackend(), max_batch_tokens=1024, max_wait_ms=1)
    assert engine.embed([]).shape == (0, 4)
    with pytest.raises(ModelError, match="before start"):
        engine.embed([make_chunk([1, 2, 3])])


# -- deadline ------------------------------------------------------------------------------------

def test_a_small_request_waits_for_company_until_its_deadline_then_flushes():
    backend = FakeBackend()
    clock = FakeClock()
    small = [make_chunk([101, 5, 102])]
    with EmbeddingEngine(backend, max_batch_tokens=16384, max_wait_ms=50, clock=clock) as engine:
        pending = engine.submit(small)
        with pytest.raises(TimeoutError):
            pending.result(0.2)  # the injected clock has not moved: no flush yet
        assert backend.calls == []
        clock.advance(0.049)
        with pytest.raises(TimeoutError):
            pending.result(0.1)
        clock.advance(0.001)
        assert_exact(pending.result(WAIT_S), small)


def test_a_full_budget_flushes_without_waiting_for_the_deadline():
    backend = FakeBackend()
    clock = FakeClock()  # never advanced: only the budget can flush
    chunks = [make_chunk([101, *range(1000 + i, 1254 + i), 102], index=i) for i in range(8)]
    with EmbeddingEngine(backend, max_batch_tokens=1024, max_wait_ms=50, clock=clock) as engine:
        assert_exact(engine.submit(chunks).result(WAIT_S), chunks)


def test_with_the_real_clock_a_small_request_comes_back_after_max_wait():
    with EmbeddingEngine(FakeBackend(), max_batch_tokens=16384, max_wait_ms=50) as engine:
        small = [make_chunk([101, 5, 102])]
        assert_exact(engine.submit(small).result(WAIT_S), small)


def test_stop_finishes_queued_work():
    backend = FakeBackend()
    clock = FakeClock()
    engine = EmbeddingEngine(backend, max_batch_tokens=16384, max_wait_ms=50, clock=clock).start()
    chunks = [make_chunk([101, 6, 102])]
    pending = engine.submit(chunks)
    engine.stop()  # before the deadline: stop drains instead of dropping
    assert_exact(pending.result(WAIT_S), chunks)


# -- failures ------------------------------------------------------------------------------------

def test_out_of_memory_halves_the_budget_retries_and_returns_every_vector():
    backend = FakeBackend(oom_above_tokens=1000)
    chunks = random_chunks(random.Random(4), 80)
    with EmbeddingEngine(backend, max_batch_tokens=8192, max_wait_ms=5) as engine:
        vectors = engine.embed(chunks)
        assert_exact(vectors, chunks)
        assert engine.stats.oom_backoffs >= 1 and backend.released == engine.stats.oom_backoffs
        assert engine.max_batch_tokens <= 1000
        # The lowered budget sticks: the next request runs without new out-of-memory errors.
        backoffs = engine.stats.oom_backoffs
        more = random_chunks(random.Random(5), 40, doc="doc:2")
        assert_exact(engine.embed(more), more)
        assert engine.stats.oom_backoffs == backoffs
    assert sorted(ids for b in backend.calls for ids in b) == \
        sorted(c.token_ids for c in chunks + more)


def test_a_single_chunk_that_cannot_fit_fails_its_request_and_the_engine_carries_on():
    backend = FakeBackend(oom_above_tokens=100)
    too_big = [make_chunk(range(1000, 1200))]
    with EmbeddingEngine(backend, max_batch_tokens=4096, max_wait_ms=1) as engine:
        with pytest.raises(OutOfMemoryError):
            engine.embed(too_big)
        fine = [make_chunk([101, 1, 2, 102])]
        assert_exact(engine.embed(fine), fine)


def test_a_model_error_reaches_the_caller_and_other_requests_still_succeed():
    backend = FakeBackend(fail_on=666)
    bad = [make_chunk([101, 666, 102]), make_chunk([101, 667, 102])]
    good = [make_chunk([101, 668, 102], "doc:2")]
    with EmbeddingEngine(backend, max_batch_tokens=4096, max_wait_ms=1) as engine:
        with pytest.raises(ValueError, match="exploded"):
            engine.embed(bad)
        assert_exact(engine.embed(good), good)
        assert engine.load_tokens == 0  # failed work is not counted as load forever


# -- autotune (CUDA start-up; the logic runs anywhere) -------------------------------------------

def test_autotune_finds_the_largest_fitting_budget_with_headroom():
    backend = FakeBackend(oom_above_tokens=40_000)
    budget = autotune_budget(backend, max_seq_tokens=256, start_tokens=4096, ceiling_tokens=262_144,
                             headroom=0.8)
    # 4096 → 8192 → 16384 → 32768 fit, 65536 does not: 0.8 × 32768, a multiple of 256.
    assert budget == int(32768 * 0.8) // 256 * 256
    assert budget % 256 == 0 and budget <= 40_000
    assert backend.released == 1


def test_autotune_halves_down_when_the_start_does_not_fit_and_respects_the_ceiling():
    low = FakeBackend(oom_above_tokens=3000)
    assert autotune_budget(low, max_seq_tokens=256, start_tokens=16384, ceiling_tokens=65536,
                           headroom=1.0) == 2048
    roomy = FakeBackend()
    assert autotune_budget(roomy, max_seq_tokens=256, start_tokens=4096, ceiling_tokens=16384,
                           headroom=1.0) == 16384


def test_autotune_refuses_when_not_even_one_sequence_fits_and_passes_other_errors_on():
    with pytest.raises(ModelError, match="does not fit"):
        autotune_budget(FakeBackend(oom_above_tokens=100), max_seq_tokens=256, start_tokens=1024,
                        ceiling_tokens=4096)
    with pytest.raises(ValueError):
        autotune_budget(FakeBackend(fail_on=1000), max_seq_tokens=256, start_tokens=1024,
                        ceiling_tokens=4096)


def test_build_engine_autotunes_only_on_cuda_and_pools_several_devices():
    cpu = FakeBackend()
    engine = build_engine(EmbeddingConfig(max_batch_tokens=4096), [cpu], max_seq_tokens=256)
    try:
        assert isinstance(engine, EmbeddingEngine) and engine.max_batch_tokens == 4096
        assert cpu.calls == []  # no probing on CPU
    finally:
        engine.stop()
    unset = build_engine(EmbeddingConfig(), [FakeBackend()], max_seq_tokens=512)
    try:  # left unset on CPU: the small CPU budget, still at least a few full rows
        assert unset.max_batch_tokens == 2048
    finally:
        unset.stop()
    gpu = FakeBackend(oom_above_tokens=10_000, device="cuda:0")
    engine = build_engine(EmbeddingConfig(max_batch_tokens=4096), [gpu], max_seq_tokens=256)
    try:
        assert engine.max_batch_tokens == int(8192 * 0.8) // 256 * 256
    finally:
        engine.stop()
    pool = build_engine(EmbeddingConfig(max_batch_tokens=4096, autotune_batch_tokens=False),
                        [FakeBackend(device="cuda:0"), FakeBackend(device="cuda:1")], max_seq_tokens=256)
    try:
        assert isinstance(pool, EnginePool) and len(pool.engines) == 2
        assert all(e.max_batch_tokens == 4096 for e in pool.engines)
    finally:
        pool.stop()


# -- several devices -----------------------------------------------------------------------------

def test_pool_splits_a_large_request_across_engines_and_keeps_order():
    backends = [FakeBackend(), FakeBackend()]
    chunks = random_chunks(random.Random(6), 200)
    engines = [EmbeddingEngine(b, max_batch_tokens=2048, max_wait_ms=5) for b in backends]
    with EnginePool(engines) as pool:
        assert_exact(pool.embed(chunks), chunks)
        assert pool.stats.chunks == 200
    assert all(b.calls for b in backends)
    per_engine = [sum(len(ids) for batch in b.calls for ids in batch) for b in backends]
    assert min(per_engine) / max(per_engine) > 0.8  # split by tokens, not just halved


def test_pool_sends_a_small_request_to_the_least_loaded_engine():
    busy, idle = FakeBackend(), FakeBackend()
    busy.gate = threading.Event()
    engines = [EmbeddingEngine(busy, max_batch_tokens=2048, max_wait_ms=1),
               EmbeddingEngine(idle, max_batch_tokens=2048, max_wait_ms=1)]
    with EnginePool(engines, split_tokens=10**9) as pool:
        blocked = engines[0].submit([make_chunk([101, 1, 102])])
        small = [make_chunk([101, 2, 3, 102], "doc:2")]
        assert_exact(pool.embed(small), small)  # answered while engine 0 is still stuck
        assert idle.calls and not busy.calls
        busy.gate.set()
        blocked.result(WAIT_S)


def test_pool_round_robin_alternates():
    backends = [FakeBackend(), FakeBackend()]
    engines = [EmbeddingEngine(b, max_batch_tokens=2048, max_wait_ms=1) for b in backends]
    with EnginePool(engines, policy="round_robin", split_tokens=10**9) as pool:
        for i in range(4):
            pool.embed([make_chunk([101, i, 102], index=i)])
    assert [len(b.calls) for b in backends] == [2, 2]


def test_a_priority_request_goes_ahead_of_a_backlog():
    backend = FakeBackend()
    backend.gate = threading.Event()
    backlog = random_chunks(random.Random(7), 120)
    query = [make_chunk([101, 42, 43, 102], "query")]
    with EmbeddingEngine(backend, max_batch_tokens=1024, max_wait_ms=1) as engine:
        pending = engine.submit(backlog)
        pending_query = engine.submit(query, use_cache=False, priority=True)
        backend.gate.set()
        assert_exact(pending_query.result(WAIT_S), query)
        assert_exact(pending.result(WAIT_S), backlog)
    order = [ids for batch in backend.calls for ids in batch]
    # Behind at most the batch being run and the one prefetched (plus the one being handed over).
    assert order.index(query[0].token_ids) < 4 * (1024 // 200)
    assert len(order) == 121


def test_concurrent_submits_of_the_same_chunks_share_one_model_row_each():
    """In-flight dedupe: three callers (three sinks' worth) asking for the same 50 chunks while
    the model is busy get their vectors from 50 model rows, not 150."""
    backend = FakeBackend()
    backend.gate = threading.Event()  # hold the model so all three submits overlap
    rng = random.Random(7)
    chunks = random_chunks(rng, 50)
    with EmbeddingEngine(backend, max_batch_tokens=4096, max_wait_ms=1) as engine:
        pending = [engine.submit(chunks) for _ in range(3)]
        backend.gate.set()
        results = [p.result(WAIT_S) for p in pending]
    rows = sum(len(call) for call in backend.calls)
    assert rows == len({c.content_hash for c in chunks}) == 50
    for out in results:
        assert_exact(out, chunks)
    assert engine.stats.inflight_shared == 100 and engine.stats.chunks == 50


def test_a_shared_row_that_fails_fails_every_waiter_and_leaves_nothing_in_flight():
    backend = FakeBackend(fail_on=999)
    chunk = make_chunk([101, 999, 102])
    backend.gate = threading.Event()
    with EmbeddingEngine(backend, max_batch_tokens=4096, max_wait_ms=1) as engine:
        pending = [engine.submit([chunk]) for _ in range(2)]
        backend.gate.set()
        for p in pending:
            with pytest.raises(ValueError, match="model exploded"):
                p.result(WAIT_S)
        assert engine._inflight == {}
        backend.fail_on = None
        assert_exact(engine.embed([chunk]), [chunk])  # a later submit runs it afresh
