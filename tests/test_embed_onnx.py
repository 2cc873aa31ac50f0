"""The ONNX export and the ONNX Runtime int8 backend (worker/embed_onnx.py) against float32."""

from __future__ import annotations

import pytest

from test_embed import sample_chunks  # noqa: F401 - the fixture: short, median and longest chunks
from worker.embed import check_int8_quality
from worker.engine import EmbeddingEngine
from worker.errors import ModelError


def test_onnx_int8_backend_is_refused_when_the_spec_does_not_allow_it(embedder, tmp_path):
    from worker.embed_onnx import OnnxInt8Embedder

    class NoInt8:
        spec = embedder.spec.model_copy(update={"int8_backends": ()})
        device, dtype = "cpu", "float32"

    with pytest.raises(ModelError, match="does not allow"):
        OnnxInt8Embedder.build(NoInt8(), tmp_path)  # type: ignore[arg-type]


@pytest.mark.parametrize("without_vnni", [False, True], ids=["s8-weights", "u8-weights-for-cpus-without-vnni"])
def test_onnx_int8_backend_meets_the_quality_bar_on_sample_chunks(embedder, sample_chunks, tmp_path,
                                                                  monkeypatch, without_vnni):
    """Both weight types pass here; u8×u8 has no saturating kernel, so a CPU without VNNI
    computes the same integers as this one."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from worker import embed_onnx
    from worker.embed_onnx import OnnxInt8Embedder

    monkeypatch.setattr(embed_onnx, "x86_without_vnni", lambda: without_vnni)

    int8 = OnnxInt8Embedder.build(embedder, tmp_path)
    ids = [c.token_ids for c in sample_chunks]
    quality = check_int8_quality(embedder.embed_ids(ids), int8.embed_ids(ids))
    assert quality.accepted
    # Kept on disk: a restart loads the quantized file instead of exporting again.
    files = sorted(p.name for p in tmp_path.rglob("*.onnx"))
    assert files == ["model-fp32.onnx", "model-int8.onnx"]
    again = OnnxInt8Embedder.build(embedder, tmp_path)
    assert again.model_path == int8.model_path
    # Dynamic quantization scales activations per batch, so int8 vectors depend slightly on the
    # batch they were in; through the engine (other batches) they still meet the bar.
    with EmbeddingEngine(again, max_batch_tokens=2048, max_wait_ms=1) as engine:
        through_engine = engine.embed(sample_chunks)
    assert check_int8_quality(embedder.embed_ids(ids), through_engine).accepted


def test_x86_without_vnni_is_told_apart(monkeypatch):
    """ONNX Runtime's u8×s8 kernel saturates without VNNI; those CPUs get u8×u8 weights."""
    import platform

    from worker.embed_onnx import x86_without_vnni

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert x86_without_vnni("processor: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert not x86_without_vnni("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert not x86_without_vnni("flags\t\t: fpu avx2 avx_vnni\n")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert not x86_without_vnni("flags\t\t: fp asimd\n")
