"""The embedding cache (worker/cache.py): keyed by model fingerprint and content, bounded,
persistent across restarts, and in front of the model (cache hits cost no model call)."""

from __future__ import annotations

import numpy as np

from test_engine import FakeBackend, assert_exact, make_chunk
from worker.cache import EmbeddingCache
from worker.engine import EmbeddingEngine


def vec(seed: int, dims: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)


def open_cache(path, *, fingerprint="model-a@1", dims=4, max_entries=100) -> EmbeddingCache:
    return EmbeddingCache(path, fingerprint=fingerprint, dimensions=dims, max_entries=max_entries)


def test_a_put_vector_comes_back_and_survives_a_restart(tmp_path):
    path = tmp_path / "embeddings.sqlite"
    cache = open_cache(path)
    cache.put_many([("h1", vec(1)), ("h2", vec(2))])
    assert set(cache.get_many(["h1", "h2", "h3"])) == {"h1", "h2"}
    cache.close()
    reopened = open_cache(path)  # a restarted worker
    found = reopened.get_many(["h1", "h2", "h3"])
    np.testing.assert_array_equal(found["h1"], vec(1))
    np.testing.assert_array_equal(found["h2"], vec(2))
    assert "h3" not in found and len(reopened) == 2
    reopened.close()


def test_another_model_or_vector_size_never_reads_these_vectors(tmp_path):
    path = tmp_path / "embeddings.sqlite"
    cache = open_cache(path)
    cache.put_many([("h1", vec(1))])
    cache.close()
    other = open_cache(path, fingerprint="model-b@1")
    assert other.get_many(["h1"]) == {}
    other.close()
    resized = open_cache(path, dims=8)
    assert resized.get_many(["h1"]) == {}
    resized.close()


def test_the_cache_is_bounded_and_evicts_the_least_recently_used(tmp_path):
    cache = open_cache(tmp_path / "embeddings.sqlite", max_entries=10)
    cache.put_many([(f"h{i}", vec(i)) for i in range(10)])
    assert len(cache) == 10
    assert set(cache.get_many(["h0", "h1"])) == {"h0", "h1"}  # used recently: kept
    cache.put_many([(f"n{i}", vec(100 + i)) for i in range(5)])
    assert len(cache) <= 10
    kept = cache.get_many([f"h{i}" for i in range(10)] + [f"n{i}" for i in range(5)])
    assert {"h0", "h1", *(f"n{i}" for i in range(5))} <= set(kept)
    assert len(kept) == len(cache)
    cache.close()


def test_max_entries_zero_disables_the_cache(tmp_path):
    cache = open_cache(tmp_path / "embeddings.sqlite", max_entries=0)
    cache.put_many([("h1", vec(1))])
    assert cache.get_many(["h1"]) == {} and len(cache) == 0
    cache.close()


def test_cache_hits_cost_no_model_time_even_after_a_restart(tmp_path):
    path = tmp_path / "embeddings.sqlite"
    chunks = [make_chunk([101, i, i + 1, 102], index=i) for i in range(20)]
    backend = FakeBackend()
    cache = open_cache(path)
    with EmbeddingEngine(backend, max_batch_tokens=1024, max_wait_ms=1, cache=cache) as engine:
        assert_exact(engine.embed(chunks), chunks)
        calls = len(backend.calls)
        assert calls >= 1
        assert_exact(engine.embed(chunks[::-1]), chunks[::-1])  # re-delivered
        assert len(backend.calls) == calls and engine.stats.cache_hits == 20
        # Queries bypass the cache both ways.
        assert_exact(engine.embed(chunks[:1], use_cache=False), chunks[:1])
        assert len(backend.calls) == calls + 1
    cache.close()

    restarted_backend = FakeBackend()
    restarted = open_cache(path)
    with EmbeddingEngine(restarted_backend, max_batch_tokens=1024, max_wait_ms=1,
                         cache=restarted) as engine:
        mixed = chunks[5:] + [make_chunk([101, 999, 102], index=99)]
        assert_exact(engine.embed(mixed), mixed)
    assert [len(b) for b in restarted_backend.calls] == [1]  # only the new chunk
    restarted.close()
