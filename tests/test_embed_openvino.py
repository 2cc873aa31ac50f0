"""The OpenVINO int8 backend (worker/embed_openvino.py) against the real float32 model.

The model is quantized once per session (``openvino_state`` in conftest.py, ~30 s on two
cores); every test here reuses that IR.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import REPO
from worker.backends import embed_in_batches, int8_calibration_chunks
from worker.embed import check_int8_quality
from worker.engine import EmbeddingEngine
from worker.errors import ModelError


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def longest_chunks(chunker, n: int = 12) -> list:
    """The longest chunks of the sample stream (full 256-token windows, code and transcripts)."""
    from conftest import load_stream
    from test_embed import PRESETS
    from worker.config import BindingConfig
    from worker.documents import Binding

    chunks = []
    for collection, preset in PRESETS.items():
        binding = Binding(BindingConfig(collection=collection, preset=preset))
        chunks += [c for cd in chunker.chunk([binding.parse(r) for r in load_stream(collection)])
                   for c in cd.chunks]
    return sorted(chunks, key=lambda c: (-c.n_tokens, c.doc_id, c.index))[:n]


def test_openvino_vectors_meet_the_quality_gate_on_sample_stream_chunks(openvino_state, embedder, chunker):
    from worker.embed_openvino import OpenVinoEmbedder

    choice = openvino_state.choice
    assert choice.backend == "openvino" and isinstance(choice.model, OpenVinoEmbedder)
    assert choice.precision == "int8-static"
    assert choice.quality.chunks == 96 and choice.quality.accepted
    # Really int8: float32 run through another runtime would agree to ~1e-6.
    assert choice.quality.mean_cosine < 0.9995
    # Chunks the gate does not hold (it takes the first four of each document): the longest
    # windows of the stream, code and transcripts, compared here independently of the gate.
    longest = [c.token_ids for c in longest_chunks(chunker)]
    assert max(len(i) for i in longest) == 256
    reference = embed_in_batches(embedder, longest)
    quality = check_int8_quality(reference, choice.model.embed_ids(longest))
    assert quality.accepted and quality.mean_cosine < 0.9995


def test_a_chunk_embedded_alone_equals_it_embedded_in_a_padded_batch(openvino_state, chunker):
    model = openvino_state.choice.model
    chunks = int8_calibration_chunks(chunker)[::8]
    assert len({c.n_tokens for c in chunks}) > 3  # the batch pads
    batch = model.embed_ids([c.token_ids for c in chunks])
    alone = np.stack([model.embed_ids([c.token_ids])[0] for c in chunks])
    assert batch.shape == (len(chunks), 384) and batch.dtype == np.float32
    assert cosines(alone, batch).min() >= 0.999  # static scales: no dependence on the batch
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


def test_through_the_engine_vectors_come_back_in_order(openvino_state, embedder, chunker):
    model = openvino_state.choice.model
    chunks = list(reversed(int8_calibration_chunks(chunker)[::3]))
    with EmbeddingEngine(model, max_batch_tokens=2048, max_wait_ms=1) as engine:
        vectors = engine.embed(chunks, use_cache=False)
        assert engine.stats.batches > 1
    assert check_int8_quality(embed_in_batches(embedder, [c.token_ids for c in chunks]), vectors).accepted


def test_the_cached_ir_is_loaded_on_a_second_build_not_quantized_again(openvino_state, embedder, chunker):
    from worker.embed_openvino import OpenVinoEmbedder

    first = openvino_state.choice.model
    assert first.quantized_now  # the session fixture did quantize
    xml = first.model_xml
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    mtimes = (xml.stat().st_mtime_ns, xml.with_suffix(".bin").stat().st_mtime_ns)
    state = openvino_state.state
    calibration = [c.token_ids for c in int8_calibration_chunks(chunker, held_out=True)]
    again = OpenVinoEmbedder.build(embedder, state / "openvino", onnx_directory=state / "onnx",
                                   calibration=calibration)
    assert again.model_xml == xml and not again.quantized_now
    assert (xml.stat().st_mtime_ns, xml.with_suffix(".bin").stat().st_mtime_ns) == mtimes
    assert not list(xml.parent.parent.glob("*.partial-*"))
    # Another calibration sample is another model: a different key, not the cached IR.
    from worker.embed_openvino import ir_dir

    assert ir_dir(embedder, state / "openvino", "static", calibration[:-1]) != xml.parent
    assert ir_dir(embedder, state / "openvino", "weights", []) != xml.parent


def test_a_spec_that_does_not_allow_openvino_is_refused(embedder, tmp_path):
    from worker.embed_openvino import OpenVinoEmbedder

    class OnnxOnly:
        spec = embedder.spec.model_copy(update={"int8_backends": ("onnx",)})
        device, dtype = "cpu", "float32"

    with pytest.raises(ModelError, match="does not allow the openvino"):
        OpenVinoEmbedder.build(OnnxOnly(), tmp_path, onnx_directory=tmp_path, calibration=[[101, 102]])  # type: ignore[arg-type]


NICE_SCRIPT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    sys.path[:0] = [{repo!r}, {tests!r}]
    from worker import priority
    from worker.backends import int8_calibration_chunks
    from worker.embed_openvino import OpenVinoEmbedder
    from worker.engine import EmbeddingEngine
    from worker.runtime import build_chunker, load_model
    from conftest import make_config

    config = make_config(Path({tmp!r}))
    spec, embedder = load_model(config, {{}})
    chunker = build_chunker(config, spec, embedder)
    chunks = int8_calibration_chunks(chunker)
    calibration = [c.token_ids for c in int8_calibration_chunks(chunker, held_out=True)]
    embedder.embed_ids([chunks[0].token_ids])
    priority.set_background_nice(10)  # what build_service does before anything starts
    before = set(os.listdir("/proc/self/task"))
    model = OpenVinoEmbedder.build(embedder, Path({state!r}) / "openvino",
                                   onnx_directory=Path({state!r}) / "onnx", calibration=calibration)
    assert not model.quantized_now
    model.embed_ids([c.token_ids for c in chunks[:8]])  # the gate runs on the calling thread
    with EmbeddingEngine(model, max_batch_tokens=2048, max_wait_ms=1) as engine:
        engine.embed(chunks)
    threads = []
    for t in (int(t) for t in os.listdir("/proc/self/task") if t not in before):
        try:  # a thread may end between the listing and the reads (the engine's, stopping)
            threads.append((Path(f"/proc/self/task/{{t}}/comm").read_text().strip(), priority.thread_nice(t)))
        except FileNotFoundError:
            continue
    print("THREADS", sorted(threads))
    print("NICE", sorted(nice for _, nice in threads))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux only")
def test_openvino_threads_run_at_the_background_priority(openvino_state, tmp_path):
    """OpenVINO's worker threads keep the nice value of the thread that started them; the
    webhook's accept latency under load depends on them not outranking it."""
    script = NICE_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), tmp=str(tmp_path),
                                state=str(openvino_state.state))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    nice = [int(n) for n in proc.stdout.split("NICE", 1)[1].strip(" []\n").split(",")]
    assert len(nice) >= 2  # the model's threads, the engine's
    assert min(nice) >= 10, proc.stdout
