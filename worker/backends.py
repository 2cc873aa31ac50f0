"""Which model backend embeds passages on this host, and why (``embedding.backend``).

::

    torch     the loaded sentence-transformers model (float32 on CPU, the spec's fp16/bf16 on
              CUDA).
    openvino  int8 through OpenVINO (worker/embed_openvino.py): static quantization first, int8
              weights only if that fails the quality gate; fp32 torch if both fail.
    onnx      int8 through ONNX Runtime (dynamic quantization); fp32 torch if it fails the gate.
    auto      (the default) on CPU: openvino when it is installed, allowed by the model's spec
              and passing the gate, else torch. On CUDA/MPS, or with several devices: torch.

The quality gate: every int8 candidate embeds :data:`INT8_CALIBRATION_CHUNKS` chunks of the
sample stream, and is used only if its cosine to float32 is ≥ 0.99 on average and ≥ 0.97 for
every chunk (:func:`worker.embed.check_int8_quality`). It runs on every start, before the
engine stores a vector: the cached model may come from another machine or another version.
A refusal is logged as a warning and the worker runs fp32 torch, which is slower but the
reference. A package missing for an explicitly configured int8 backend is a misconfiguration
(:class:`ModelError`); under ``auto`` it is a reason, logged and shown by ``check``.

Static quantization's statistics come from other chunks of the same stream
(``int8_calibration_chunks(..., held_out=True)``), so the gate measures on chunks the
quantizer never saw.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.batch import plan_batches
from worker.chunk import Chunker
from worker.config import BindingConfig, EmbeddingConfig
from worker.documents import Binding
from worker.embed import (INT8_MIN_COSINE, INT8_MIN_MEAN_COSINE, Embedder, Int8Quality,
                          check_int8_quality)
from worker.errors import ConfigError, ModelError
from worker.records import Chunk

log = logging.getLogger(__name__)

#: Chunks of the sample stream the quality gate compares against float32.
INT8_CALIBRATION_CHUNKS = 96
#: Chunks whose activations set static quantization's ranges; none of them is in the gate's.
INT8_QUANTIZATION_CHUNKS = 32
#: The gate embeds in batches of this many padded tokens (the engine's CPU default).
GATE_BATCH_TOKENS = 2048

_STREAM_PRESETS = {"gong-calls-enriched.jsonl": "gong_call",
                   "slack-messages-enriched.jsonl": "slack_message",
                   "github-enriched.json": "github_document"}


def _stream_chunks(chunker: Chunker) -> list[list[list[Chunk]]]:
    """Per collection of ``examples/stream``, per document, its chunks."""
    import orjson

    from worker.modelspec import default_models_dir

    stream = default_models_dir().parent / "examples" / "stream"
    collections = []
    for name, preset in _STREAM_PRESETS.items():
        path = stream / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        raws = orjson.loads(data) if name.endswith(".json") else [orjson.loads(x) for x in data.splitlines() if x.strip()]
        binding = Binding(BindingConfig(collection=name, preset=preset))
        collections.append([list(cd.chunks) for cd in chunker.chunk([binding.parse(r) for r in raws])])
    if not any(collections):
        raise ConfigError(f"the int8 backends are checked against float32 on the sample stream, "
                          f"but {stream} has none; use embedding.backend: torch")
    return collections


def _evenly(items: Sequence[Chunk], n: int) -> list[Chunk]:
    step = max(1, len(items) // n) if n else 1
    return list(items[::step][:n])


def int8_calibration_chunks(chunker: Chunker, *, held_out: bool = False) -> list[Chunk]:
    """Chunks from the sample Estuary stream in ``examples/stream`` (the repo's, or ./examples).

    ``held_out=False``: the gate's :data:`INT8_CALIBRATION_CHUNKS` (the first four chunks of
    every document, evenly spaced). ``held_out=True``: :data:`INT8_QUANTIZATION_CHUNKS` other
    chunks, taken evenly from each collection in turn, for static quantization's statistics.
    """
    collections = _stream_chunks(chunker)
    pool = [c for docs in collections for chunks in docs for c in chunks[:4]]
    gate = _evenly(pool, INT8_CALIBRATION_CHUNKS)
    if not held_out:
        return gate
    seen = {(c.doc_id, c.index) for c in gate}
    rest = [[c for chunks in docs for c in chunks if (c.doc_id, c.index) not in seen] for docs in collections]
    rest = [r for r in rest if r]
    share = -(-INT8_QUANTIZATION_CHUNKS // max(1, len(rest)))
    picked = [_evenly(r, share) for r in rest]
    out = [c for i in range(share) for p in picked if i < len(p) for c in [p[i]]]
    return out[:INT8_QUANTIZATION_CHUNKS]


def embed_in_batches(backend: Any, ids: Sequence[Sequence[int]]) -> np.ndarray:  # noqa: ANN401
    """``ids`` embedded in length-sorted batches of :data:`GATE_BATCH_TOKENS`, in input order."""
    out = np.empty((len(ids), backend.dimensions), dtype=np.float32)
    for batch in plan_batches([len(i) for i in ids], GATE_BATCH_TOKENS):
        out[batch] = backend.embed_ids([ids[i] for i in batch])
    return out


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """What embeds passages, what was asked for, and why (for the log, metrics and ``check``)."""

    requested: str  # the config's embedding.backend
    backend: str  # torch | onnx | openvino
    precision: str  # float32 / float16 / bfloat16, or int8-static / int8-weights / int8-dynamic
    reason: str
    model: Any  # the backend object the engine runs  # noqa: ANN401
    quality: Int8Quality | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"requested": self.requested, "backend": self.backend,
                               "precision": self.precision, "reason": self.reason}
        if self.quality is not None:
            out["gate"] = {"chunks": self.quality.chunks, "mean_cosine": round(self.quality.mean_cosine, 4),
                           "min_cosine": round(self.quality.min_cosine, 4)}
        return out


def _figures(q: Int8Quality) -> str:
    return (f"mean cosine {q.mean_cosine:.4f} (≥ {INT8_MIN_MEAN_COSINE}), min {q.min_cosine:.4f} "
            f"(≥ {INT8_MIN_COSINE}) over {q.chunks} chunks")


def choose_backend(config: EmbeddingConfig, embedder: Embedder, chunker: Chunker, state: Path
                   ) -> BackendChoice:
    """Resolve ``config.backend`` on this host; int8 only after it passed the quality gate.

    Quantized models are cached under ``state`` (``onnx/``, ``openvino/``), so only the first
    start quantizes; every start runs the gate.
    """
    requested = config.backend

    def torch(reason: str) -> BackendChoice:
        return BackendChoice(requested, "torch", embedder.dtype, reason, embedder)

    if requested == "torch":
        return torch("configured (embedding.backend: torch)")
    if requested == "auto":
        from worker.embed_openvino import openvino_available

        if embedder.device != "cpu":
            return torch(f"auto on {embedder.device}: the spec's {embedder.dtype}; "
                         "the int8 backends are CPU only")
        if len(config.devices) > 1:
            return torch("auto with several embedding.devices: one torch engine per device")
        if "openvino" not in embedder.spec.int8_backends:
            return torch(f"auto: model {embedder.spec.id} does not allow openvino (int8_backends)")
        if not openvino_available():
            return torch("auto: openvino is not installed (pip install 'ai-memory-worker[int8]')")
    name = "openvino" if requested == "auto" else requested
    try:
        gate = [c.token_ids for c in int8_calibration_chunks(chunker)]
    except ConfigError as exc:  # no sample stream (an image without examples/): nothing to gate on
        if requested != "auto":
            raise
        log.warning("no sample stream for the int8 quality gate; embedding with torch", extra={"error": str(exc)})
        return torch(f"auto: int8 is only used after its quality gate, which needs the sample stream: {exc}")
    candidates = _candidates(name, config, embedder, chunker, state)
    reference: np.ndarray | None = None  # float32 vectors of the gate's chunks, once built
    refused = []
    for precision, build in candidates:
        try:
            backend = build()
        except Exception as exc:  # noqa: BLE001 - under auto any build failure means torch
            if requested != "auto":
                if isinstance(exc, ModelError):
                    raise
                raise ModelError(f"embedding.backend {name}: building the int8 model failed: {exc}") from exc
            log.warning("int8 backend could not be built; embedding with torch",
                        extra={"backend": name, "precision": precision, "error": str(exc)})
            return torch(f"auto: building {name} {precision} failed ({type(exc).__name__}: {exc})")
        if reference is None:
            reference = embed_in_batches(embedder, gate)
        quality = check_int8_quality(reference, embed_in_batches(backend, gate), raise_if_refused=False)
        fields = {"backend": name, "precision": precision, "chunks": quality.chunks,
                  "mean_cosine": round(quality.mean_cosine, 4), "min_cosine": round(quality.min_cosine, 4)}
        if quality.accepted:
            log.info("int8 backend accepted", extra=fields)
            why = "auto on cpu: fastest backend that passes the gate" if requested == "auto" else "configured"
            return BackendChoice(requested, name, precision, f"{why}; {precision} passed the quality gate: "
                                 f"{_figures(quality)}", backend, quality)
        log.warning("int8 backend refused by the quality gate", extra=fields)
        refused.append(f"{precision}: {_figures(quality)}")
    log.warning("no int8 model passed the quality gate; embedding with float32 torch",
                extra={"backend": name, "refused": len(refused)})
    choice = torch(f"{name} int8 refused by the quality gate ({'; '.join(refused)}); running {embedder.dtype} torch")
    return BackendChoice(choice.requested, choice.backend, choice.precision, choice.reason, choice.model,
                         quality)


def _candidates(name: str, config: EmbeddingConfig, embedder: Embedder, chunker: Chunker, state: Path
                ) -> list[tuple[str, Callable[[], Any]]]:
    """The int8 models to try, in order, each built only when its turn comes."""
    if name == "onnx":
        from worker.embed_onnx import OnnxInt8Embedder

        return [("int8-dynamic", lambda: OnnxInt8Embedder.build(embedder, state / "onnx",
                                                                 cpu_threads=config.cpu_threads))]
    from worker.embed_openvino import QUANTIZATIONS, OpenVinoEmbedder

    def build(quantization: str) -> Callable[[], Any]:
        def run() -> Any:  # noqa: ANN401
            calibration = [c.token_ids for c in int8_calibration_chunks(chunker, held_out=True)] \
                if quantization == "static" else []
            return OpenVinoEmbedder.build(embedder, state / "openvino", onnx_directory=state / "onnx",
                                          calibration=calibration, quantization=quantization,  # type: ignore[arg-type]
                                          cpu_threads=config.cpu_threads)
        return run

    return [(f"int8-{q}", build(q)) for q in QUANTIZATIONS]
