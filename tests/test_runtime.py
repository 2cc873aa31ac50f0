"""The composition root: engines per device, and the int8 backend's quality gate."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import make_config


def test_one_engine_per_listed_device(tmp_path, runtime_factory):
    from worker.engine_pool import EnginePool

    rt = runtime_factory(make_config(tmp_path, embedding={"devices": ["cpu", "cpu"], "max_wait_ms": 5}))
    assert isinstance(rt.engine, EnginePool)
    assert len(rt.engine.engines) == 2
    assert rt.engine.engines[0].backend is rt.embedder  # the loaded model is reused, not reloaded


def test_a_cpu_budget_left_unset_uses_the_small_cpu_default(tmp_path, runtime_factory):
    rt = runtime_factory(make_config(tmp_path))
    set_rt = runtime_factory(make_config(tmp_path / "b", embedding={"max_batch_tokens": 16384}))
    assert rt.engine.max_batch_tokens < 16384
    assert set_rt.engine.max_batch_tokens == 16384


def test_int8_backend_is_used_only_after_passing_the_quality_check(tmp_path, runtime_factory, chunker):
    pytest.importorskip("onnxruntime", reason="the int8 extra (onnx, onnxruntime) is not installed")
    from worker.backends import int8_calibration_chunks
    from worker.embed_onnx import OnnxInt8Embedder

    rt = runtime_factory(make_config(tmp_path, embedding={"backend": "onnx", "max_wait_ms": 5}))
    assert isinstance(rt.engine.backend, OnnxInt8Embedder)
    assert rt.backend.backend == "onnx" and rt.backend.quality.accepted
    sample = int8_calibration_chunks(chunker)[:8]
    ref = rt.embedder.embed_ids([c.token_ids for c in sample])
    got = rt.engine.embed(sample, use_cache=False)
    cos = np.sum(ref * got, axis=1)
    assert cos.min() >= 0.97
