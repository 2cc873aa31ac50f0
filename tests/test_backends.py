"""Choosing the model backend (worker/backends.py): auto, the quality gate and its fallback.

The OpenVINO model is quantized once per session (``openvino_state`` in conftest.py); tests copy
it into their own state dir, as a restarted worker finds it.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from conftest import copy_int8_models, make_config
from worker.backends import (INT8_CALIBRATION_CHUNKS, INT8_QUANTIZATION_CHUNKS, choose_backend,
                             embed_in_batches, int8_calibration_chunks)
from worker.config import EmbeddingConfig


def test_the_default_backend_is_auto():
    from worker.config import WorkerConfig

    assert EmbeddingConfig().backend == "auto"
    assert WorkerConfig.model_fields["embedding"].get_default(call_default_factory=True).backend == "auto"


def test_the_gate_and_the_quantizer_see_different_chunks_of_the_sample_stream(chunker):
    gate = int8_calibration_chunks(chunker)
    calibration = int8_calibration_chunks(chunker, held_out=True)
    assert len(gate) == INT8_CALIBRATION_CHUNKS and len(calibration) == INT8_QUANTIZATION_CHUNKS
    assert not {(c.doc_id, c.index) for c in gate} & {(c.doc_id, c.index) for c in calibration}
    assert {c.doc_id.split(":")[0] for c in gate} == {"gong", "slack", "github"}
    assert len({c.doc_id.split(":")[0] for c in calibration}) >= 2
    assert int8_calibration_chunks(chunker, held_out=True) == calibration  # same sample every start


def test_auto_on_cpu_runs_openvino_int8_when_it_passes_the_gate(openvino_state, tmp_path, runtime_factory,
                                                                caplog):
    from worker.embed_openvino import OpenVinoEmbedder
    from worker.metrics import Metrics

    config = make_config(tmp_path, embedding={"backend": "auto", "device": "cpu", "max_wait_ms": 5})
    copy_int8_models(openvino_state.state, tmp_path / "state")
    metrics = Metrics()
    with caplog.at_level(logging.INFO, logger="worker"):
        rt = runtime_factory(config, metrics=metrics)
    assert isinstance(rt.engine.backend, OpenVinoEmbedder)
    assert not rt.engine.backend.quantized_now  # the copied IR was loaded, not rebuilt
    assert not [r for r in caplog.records if r.getMessage() == "int8 model quantized"]
    accepted = [r for r in caplog.records if r.getMessage() == "int8 backend accepted"]
    assert accepted and accepted[0].min_cosine >= 0.97
    assert rt.backend.requested == "auto" and rt.backend.backend == "openvino"
    assert "passed the quality gate" in rt.backend.reason
    build_info = metrics.registry.get_sample_value("memory_worker_build_info", {
        "version": __import__("worker").__version__, "model": "all-minilm-l6-v2", "backend": "openvino",
        "device": "cpu"})
    assert build_info == 1


def test_auto_on_a_gpu_is_torch_without_building_anything(tmp_path):
    class OnCuda:  # only what the choice reads before deciding
        device, dtype = "cuda:0", "float16"

    model = OnCuda()
    choice = choose_backend(EmbeddingConfig(backend="auto"), model, chunker=None, state=tmp_path)  # type: ignore[arg-type]
    assert choice.backend == "torch" and choice.model is model and choice.precision == "float16"
    assert "cuda:0" in choice.reason
    assert not list(tmp_path.iterdir())


def test_auto_when_the_spec_does_not_allow_openvino_is_torch(embedder, chunker, tmp_path):
    class OnnxOnly:
        spec = embedder.spec.model_copy(update={"int8_backends": ("onnx",)})
        device, dtype = "cpu", "float32"

    choice = choose_backend(EmbeddingConfig(backend="auto"), OnnxOnly(), chunker, tmp_path)  # type: ignore[arg-type]
    assert choice.backend == "torch" and "does not allow openvino" in choice.reason


def perturbed_export(src_state, dest_state, relative_noise: float) -> None:
    """The shipped model's ONNX export with noise on the first six weight matrices: a broken
    export, which every int8 model quantized from it inherits."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    [src] = (src_state / "onnx").glob("*/model-fp32.onnx")
    model = onnx.load(str(src))
    rng = np.random.default_rng(0)
    weights = [i for i in model.graph.initializer
               if len(i.dims) == 2 and min(i.dims) > 2 and not i.name.startswith("model.")][:6]
    assert len(weights) == 6
    for init in weights:
        w = numpy_helper.to_array(init)
        noisy = w + relative_noise * w.std() * rng.standard_normal(w.shape)
        init.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), init.name))
    dest = dest_state / "onnx" / src.parent.name
    dest.mkdir(parents=True)
    onnx.save(model, str(dest / "model-fp32.onnx"))


def test_a_degraded_int8_model_is_refused_and_the_worker_embeds_with_fp32(openvino_state, embedder,
                                                                          chunker, tmp_path,
                                                                          runtime_factory, caplog):
    perturbed_export(openvino_state.state, tmp_path / "state", relative_noise=0.3)
    config = make_config(tmp_path, embedding={"backend": "openvino", "device": "cpu", "max_wait_ms": 5})
    with caplog.at_level(logging.INFO, logger="worker"):
        rt = runtime_factory(config)
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("int8 model quantized") == 2  # static, then weights only
    refused = [r for r in caplog.records if r.getMessage() == "int8 backend refused by the quality gate"]
    assert [r.precision for r in refused] == ["int8-static", "int8-weights"]
    assert all(r.levelno == logging.WARNING and r.mean_cosine < 0.99 for r in refused)
    assert "no int8 model passed the quality gate; embedding with float32 torch" in messages
    assert rt.engine.backend is rt.embedder
    assert rt.backend.backend == "torch" and rt.backend.requested == "openvino"
    assert "refused by the quality gate" in rt.backend.reason
    chunks = int8_calibration_chunks(chunker)[:16]
    got = rt.engine.embed(chunks, use_cache=False)
    want = embed_in_batches(embedder, [c.token_ids for c in chunks])
    assert np.sum(got * want, axis=1).min() >= 0.999  # float32 vectors, not the broken model's

    # The onnx backend, from the same broken export, falls back the same way.
    pytest.importorskip("onnxruntime")
    onnx_choice = choose_backend(EmbeddingConfig(backend="onnx"), embedder, chunker, tmp_path / "state")
    assert onnx_choice.backend == "torch" and onnx_choice.model is embedder
    assert "onnx int8 refused" in onnx_choice.reason


def test_torch_is_used_as_configured(embedder, chunker, tmp_path):
    choice = choose_backend(EmbeddingConfig(backend="torch"), embedder, chunker, tmp_path)
    assert choice.backend == "torch" and choice.model is embedder and choice.quality is None
    assert choice.as_json() == {"requested": "torch", "backend": "torch", "precision": "float32",
                                "reason": "configured (embedding.backend: torch)"}


def test_without_the_sample_stream_auto_is_torch_and_an_explicit_int8_backend_is_an_error(
        embedder, chunker, tmp_path, monkeypatch):
    """A container image without ``examples/``: nothing to run the quality gate on."""
    import worker.modelspec
    from worker.errors import ConfigError

    (tmp_path / "models").mkdir()
    monkeypatch.setattr(worker.modelspec, "default_models_dir", lambda: tmp_path / "models")
    choice = choose_backend(EmbeddingConfig(backend="auto"), embedder, chunker, tmp_path / "state")
    if choice.reason.startswith("auto: openvino is not installed"):
        pytest.skip("the int8 extra is not installed")
    assert choice.backend == "torch" and "sample stream" in choice.reason
    with pytest.raises(ConfigError, match="sample stream"):
        choose_backend(EmbeddingConfig(backend="openvino"), embedder, chunker, tmp_path / "state")
    assert not (tmp_path / "state").exists()  # nothing exported or quantized
