"""The OpenVINO int8 CPU backend: the shipped weights, quantized offline with NNCF.

Build, once per model spec, OpenVINO/NNCF version, quantization and calibration sample::

    float32 Embedder → export_onnx (the same file the onnx backend uses) → Core.read_model
      → nncf.quantize (static int8 weights and activations, ModelType.TRANSFORMER, statistics
        from sample-stream chunks)           quantization="static"
      or nncf.compress_weights (int8 weights, float activations; no calibration)
                                             quantization="weights"
      → ov.save_model → <directory>/<key>/model.xml + model.bin

A restart finds the IR and only compiles it; nothing is downloaded (``optimum-intel`` is not
used). Whether the result may be used is not decided here: the caller runs the quality gate
(:func:`worker.embed.check_int8_quality`) on every start, before the first vector is stored.

Run: the IR compiled for CPU with ``PERFORMANCE_HINT: LATENCY`` (one stream whose threads
share each batch) and dynamic batch and sequence dimensions: the engine pads each batch to its
own longest row. On the 2-core bench machine LATENCY beat THROUGHPUT (one single-thread stream
per core, the batch split between them) in wall and CPU time, once attention was fused (see
:func:`worker.embed_onnx.export_onnx`); bench/README.md has the figures. Activations are quantized
with fixed scales, so a chunk's vector does not depend on the rest of its batch beyond float
rounding.

Hazards:

* OpenVINO starts its worker threads when a model is first compiled or run, and they keep the
  nice value of the thread that started them. Build and compile therefore run on a thread that
  first lowers itself to the background priority (:mod:`worker.priority`), so the model's
  threads never outrank the webhook's.
* NNCF ships telemetry that is on unless opted out; ``NNCF_CI`` is set before it is imported,
  which turns it into a stub (no events are sent).
* A crash mid-save leaves only a ``*.partial-<pid>`` folder, never a half-written ``model.xml``
  that a restart would load.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np

from worker import priority
from worker.embed import Embedder, available_cores, cpu_threads_for, padded_arrays
from worker.embed_onnx import export_onnx
from worker.errors import ModelError

log = logging.getLogger(__name__)

Quantization = Literal["static", "weights"]
#: Tried in this order by the caller; the first that passes the quality gate is used.
QUANTIZATIONS: tuple[Quantization, ...] = ("static", "weights")
#: LATENCY measured faster than THROUGHPUT on the 2-core bench machine (bench/README.md).
PERFORMANCE_HINT = "LATENCY"

T = TypeVar("T")


def openvino_available() -> bool:
    """Whether the packages this backend needs (the ``int8`` extra) are importable."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf", "onnx", "onnxscript"))


#: Tokens per row of the warm-up batch that starts the CPU plugin's threads.
WARM_UP_TOKENS = 128


def _on_background_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` on a fresh thread at the background priority and return its result (or raise
    its exception): threads OpenVINO starts inside ``fn`` inherit that priority."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        priority.background()
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run, name="openvino-build")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _release(version: str) -> str:
    """``2026.4.1`` of ``2026.4.1-22982-e213a147257-releases/2026/4``."""
    match = re.match(r"[0-9][0-9.]*", version)
    return match.group().rstrip(".") if match else re.sub(r"[^A-Za-z0-9.]+", "_", version)[:40]


def calibration_digest(calibration: Sequence[Sequence[int]]) -> str:
    """Short digest of the calibration token ids: a different sample is a different IR."""
    h = hashlib.sha256()
    for ids in calibration:
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:12]


def ir_dir(reference: Embedder, directory: Path, quantization: Quantization,
           calibration: Sequence[Sequence[int]]) -> Path:
    """Where one quantized IR lives: keyed by the spec's fingerprint, the OpenVINO and NNCF
    versions, the quantization and (static only) the calibration sample."""
    import nncf
    import openvino as ov

    versions = f"openvino-{_release(ov.__version__)}-nncf-{_release(nncf.__version__)}"
    leaf = "weights" if quantization == "weights" else f"static-{calibration_digest(calibration)}"
    return Path(directory) / reference.spec.fingerprint.replace("@", "-") / versions / leaf


class OpenVinoEmbedder:
    """OpenVINO Runtime on CPU, int8 (NNCF). See the module docstring."""

    dtype = "int8"
    device = "cpu"

    def __init__(self, model_xml: Path, *, reference: Embedder, quantization: Quantization,
                 cpu_threads: int | None = None, performance_hint: str = PERFORMANCE_HINT,
                 quantized_now: bool = False) -> None:
        import openvino as ov

        self.model_xml = Path(model_xml)
        self.quantization = quantization
        self.performance_hint = performance_hint
        #: True when this process quantized the model; False when the cached IR was loaded.
        self.quantized_now = quantized_now
        self.spec = reference.spec
        self.info = reference.info
        self.tokenizer = reference.tokenizer
        self.query_ids = reference.query_ids
        threads = cpu_threads_for(cpu_threads, available_cores())
        self._compiled = ov.Core().compile_model(str(model_xml), "CPU", {
            "PERFORMANCE_HINT": performance_hint, "INFERENCE_NUM_THREADS": threads})
        self._request = self._compiled.create_infer_request()
        # The first inferences start the CPU plugin's worker threads: run them here, on the
        # build's background-priority thread, so that they inherit that priority. A tiny input
        # may start only some of them (the thread pool grows with demand, launched from the
        # thread that asks); a full batch asks for them all.
        info = reference.info
        self._request.infer(self.prepare([[info.cls_id, info.sep_id]]))
        filler = [info.cls_id] + [info.sep_id] * (WARM_UP_TOKENS - 2) + [info.sep_id]
        self._request.infer(self.prepare([filler] * max(8, 2 * threads)))

    @classmethod
    def build(cls, reference: Embedder, directory: Path, *, onnx_directory: Path,
              calibration: Sequence[Sequence[int]], quantization: Quantization = "static",
              cpu_threads: int | None = None, performance_hint: str = PERFORMANCE_HINT
              ) -> OpenVinoEmbedder:
        """The cached IR for this key, quantized first if it is not there yet.

        ``calibration``: token ids of sample-stream chunks (special tokens included) whose
        activations set the static quantization's ranges; each is fed as its own batch, so the
        statistics see real tokens only. Raises :class:`ModelError` when the packages are
        missing or the spec does not allow this backend.
        """
        if reference.device != "cpu" or reference.dtype != "float32":
            raise ModelError("the int8 backend is exported from a float32 CPU model")
        if "openvino" not in reference.spec.int8_backends:
            raise ModelError(f"model {reference.spec.id} does not allow the openvino int8 backend "
                             "(int8_backends in its spec)")
        if not openvino_available():
            raise ModelError("backend openvino needs openvino, nncf, onnx and onnxscript: "
                             "pip install 'ai-memory-worker[int8]'")
        if quantization == "static" and not calibration:
            raise ModelError("static int8 quantization needs calibration chunks")
        os.environ.setdefault("NNCF_CI", "1")  # NNCF's telemetry stub: see the module docstring

        def build_on_background_thread() -> OpenVinoEmbedder:
            target = ir_dir(reference, directory, quantization, calibration)  # imports openvino
            xml = target / "model.xml"
            quantized_now = False
            if not xml.is_file():
                _quantize(reference, onnx_directory, target, quantization, calibration)
                quantized_now = True
            return cls(xml, reference=reference, quantization=quantization, cpu_threads=cpu_threads,
                       performance_hint=performance_hint, quantized_now=quantized_now)

        return _on_background_thread(build_on_background_thread)

    @property
    def dimensions(self) -> int:
        return self.spec.dimensions

    def prepare(self, batch: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """Padded inputs for ``batch``. Pure; safe on the collator thread."""
        input_ids, mask = padded_arrays(batch, self.info.pad_id)
        return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}

    def embed_prepared(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Run the model on :meth:`prepare`'s output. Returns float32 ``[n, dim]``."""
        out = np.array(self._request.infer(feed)[0], dtype=np.float32)  # a copy: the request reuses its buffer
        if self.spec.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def embed_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        return self.embed_prepared(self.prepare(batch))

    def release_memory(self) -> None:
        pass

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_ids([self.query_ids(text)])[0]


def _quantize(reference: Embedder, onnx_directory: Path, target: Path, quantization: Quantization,
              calibration: Sequence[Sequence[int]]) -> None:
    """Export (if needed), quantize and save the IR to ``target`` through a partial folder."""
    import nncf
    import openvino as ov

    # NNCF logs INFO lines to stdout through its own handler: keep the worker's log clean. Only
    # the logger's level: nncf.set_log_level would also change handlers it does not own.
    logging.getLogger("nncf").setLevel(logging.WARNING)
    onnx_path = export_onnx(reference, onnx_directory)
    started = time.perf_counter()
    model = ov.Core().read_model(str(onnx_path))
    if quantization == "static":
        def feed(ids: Sequence[int]) -> dict[str, np.ndarray]:
            input_ids, mask = padded_arrays([ids], reference.info.pad_id)
            return {"input_ids": input_ids, "attention_mask": mask,
                    "token_type_ids": np.zeros_like(input_ids)}

        model = nncf.quantize(model, nncf.Dataset([feed(ids) for ids in calibration]),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
    else:
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    ov.save_model(model, str(partial / "model.xml"), compress_to_fp16=False)
    try:
        partial.rename(target)
    except OSError:  # another process saved the same key first: theirs is as good as ours
        shutil.rmtree(partial, ignore_errors=True)
        if not (target / "model.xml").is_file():
            raise
    log.info("int8 model quantized", extra={"model": reference.spec.id, "quantization": quantization,
                                            "calibration_chunks": len(calibration) if quantization == "static" else 0,
                                            "seconds": round(time.perf_counter() - started, 1),
                                            "path": str(target)})
