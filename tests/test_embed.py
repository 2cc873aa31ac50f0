"""The model backends (worker/embed.py) and the engine in front of the real model.

The worker never lets sentence-transformers tokenize passages: it feeds the chunker's ids to the
model's modules directly. These tests pin that shortcut to the library's own ``encode``, and the
int8 quality bar (the int8 backends themselves: test_embed_onnx.py, test_embed_openvino.py).
CUDA-only branches are checked as logic (no GPU here).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import load_stream
from worker.config import BindingConfig
from worker.documents import Binding
from worker.embed import (INT8_MIN_COSINE, INT8_MIN_MEAN_COSINE, attention_for, available_cores,
                          check_int8_quality, cpu_threads_for, dtype_for, pick_device)
from worker.engine import EmbeddingEngine
from worker.errors import ModelError

PRESETS = {"sophia-ai/gong-calls-enriched": "gong_call",
           "sophia-ai/slack-messages-enriched": "slack_message",
           "sophia-ai/github-enriched": "github_document"}
MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def sample_chunks(chunker):
    """The shortest, the median and the longest chunk of every collection (so batches pad)."""
    picked = []
    for collection, preset in PRESETS.items():
        binding = Binding(BindingConfig(collection=collection, preset=preset))
        chunks = [c for cd in chunker.chunk([binding.parse(r) for r in load_stream(collection)])
                  for c in cd.chunks]
        by_length = sorted(chunks, key=lambda c: (c.n_tokens, c.doc_id, c.index))
        picked += [by_length[0], by_length[len(by_length) // 2], by_length[-1]]
    assert {c.doc_id.split(":")[0] for c in picked} == {"gong", "slack", "github"}
    assert max(c.n_tokens for c in picked) == 256 and min(c.n_tokens for c in picked) < 64
    return picked


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def test_a_chunk_embedded_alone_equals_it_embedded_in_a_padded_batch(embedder, sample_chunks):
    batch = embedder.embed_ids([c.token_ids for c in sample_chunks])
    alone = np.stack([embedder.embed_ids([c.token_ids])[0] for c in sample_chunks])
    assert batch.shape == (len(sample_chunks), 384) and batch.dtype == np.float32
    assert cosines(alone, batch).min() >= MIN_COSINE
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


def test_embedder_equals_sentence_transformers_encode_of_the_chunk_text(embedder, sample_chunks):
    ours = embedder.embed_ids([c.token_ids for c in sample_chunks])
    reference = embedder.model.encode([c.text for c in sample_chunks], normalize_embeddings=True,
                                      convert_to_numpy=True, batch_size=8)
    assert cosines(ours, reference).min() >= MIN_COSINE


def test_engine_returns_vectors_in_order_equal_to_encode(embedder, sample_chunks):
    with EmbeddingEngine(embedder, max_batch_tokens=1024, max_wait_ms=1) as engine:
        # Reversed, with duplicates: the engine sorts by length and dedupes, callers must not see it.
        chunks = list(reversed(sample_chunks)) + sample_chunks[:3]
        vectors = engine.embed(chunks)
        assert engine.stats.chunks == len(sample_chunks)  # duplicates embedded once
        assert engine.stats.batches > 1  # a 1,024-token budget forces several batches
    reference = embedder.model.encode([c.text for c in chunks], normalize_embeddings=True,
                                      convert_to_numpy=True, batch_size=8)
    assert cosines(vectors, reference).min() >= MIN_COSINE


def test_engine_with_nothing_to_do_and_before_start(embedder, sample_chunks):
    engine = EmbeddingEngine(embedder, max_batch_tokens=1024, max_wait_ms=1)
    assert engine.embed([]).shape == (0, 384)
    with pytest.raises(ModelError, match="before start"):
        engine.embed(sample_chunks[:1])


def test_query_embedding_equals_encode_and_is_bounded(embedder):
    query = "what discount did sales leadership sign off on for Acme?"
    ours = embedder.embed_query(query)
    reference = embedder.model.encode([query], normalize_embeddings=True, convert_to_numpy=True)
    assert cosines(ours[None, :], reference)[0] >= MIN_COSINE
    long_ids = embedder.query_ids("renewal " * 5000)
    assert len(long_ids) == embedder.spec.max_seq_tokens
    assert long_ids[0] == embedder.info.cls_id and long_ids[-1] == embedder.info.sep_id


def test_device_choice_is_checked_not_silently_changed(spec):
    assert pick_device("auto", cuda_available=True, mps_available=True) == "cuda"
    assert pick_device("auto", cuda_available=False, mps_available=True) == "mps"
    assert pick_device("auto", cuda_available=False, mps_available=False) == "cpu"
    assert pick_device("cuda:1", cuda_available=True, mps_available=False) == "cuda:1"
    with pytest.raises(ModelError, match="CUDA is not available"):
        pick_device("cuda", cuda_available=False, mps_available=False)
    with pytest.raises(ModelError, match="MPS is not available"):
        pick_device("mps", cuda_available=True, mps_available=False)
    assert dtype_for(spec, "cpu") == "float32"
    assert dtype_for(spec, "cuda:0") == spec.dtype.cuda
    assert cpu_threads_for(None, 8) == 8 and cpu_threads_for(3, 8) == 3 and cpu_threads_for(None, None) == 1

    assert 1 <= available_cores() <= 4096


def test_cpu_runs_float32_with_sdpa_and_cuda_half_precision_prefers_flash_attention(embedder, spec):
    assert embedder.device == "cpu" and embedder.dtype == "float32" and embedder.attention == "sdpa"
    assert next(embedder.model.parameters()).dtype.is_floating_point
    assert str(next(embedder.model.parameters()).dtype) == "torch.float32"
    assert attention_for("cuda:0", "float16", flash_available=True) == "flash_attention_2"
    assert attention_for("cuda:0", "bfloat16", flash_available=False) == "sdpa"
    assert attention_for("cuda", "float32", flash_available=True) == "sdpa"
    assert attention_for("cpu", "float32", flash_available=True) == "sdpa"
    # A spec cannot even ask for half precision on CPU.
    with pytest.raises(Exception):
        spec.model_copy(update={"dtype": spec.dtype.model_validate({"cpu": "float16"})})


def test_prepare_pads_masks_and_pins_only_for_cuda(embedder):
    tensors = embedder.prepare([[101, 5, 6, 102], [101, 7, 102]])
    assert tensors["input_ids"].tolist() == [[101, 5, 6, 102], [101, 7, 102, embedder.info.pad_id]]
    assert tensors["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert tensors["token_type_ids"].tolist() == [[0] * 4] * 2
    assert embedder.pin_memory is False  # pinning needs CUDA; the CPU path never asks for it
    assert not any(t.is_pinned() for t in tensors.values())


def test_int8_quality_bar_accepts_close_vectors_and_refuses_drifting_ones():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((50, 384)).astype(np.float32)
    close = reference + 0.02 * rng.standard_normal(reference.shape).astype(np.float32)
    quality = check_int8_quality(reference, close)
    assert quality.accepted and quality.mean_cosine >= INT8_MIN_MEAN_COSINE
    one_bad = close.copy()
    one_bad[7] = rng.standard_normal(384)  # mean still fine, one chunk far off
    with pytest.raises(ModelError, match="int8 backend refused"):
        check_int8_quality(reference, one_bad)
    refused = check_int8_quality(reference, one_bad, raise_if_refused=False)
    assert not refused.accepted and refused.min_cosine < INT8_MIN_COSINE
    with pytest.raises(ModelError):
        check_int8_quality(reference, close[:10])
