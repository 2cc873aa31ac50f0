"""The model exported to ONNX, and the ONNX Runtime int8 CPU backend.

:func:`export_onnx` writes the float32 model as ONNX once (torch's dynamo exporter, no hub
download); both int8 backends start from that file. :class:`OnnxInt8Embedder` quantizes its
weights to int8 per channel (dynamic quantization) and runs it with ONNX Runtime. Needs the
optional packages ``onnx``, ``onnxruntime`` and ``onnxscript`` (the ``int8`` extra).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worker.embed import Embedder, available_cores, cpu_threads_for, padded_arrays
from worker.errors import ModelError

log = logging.getLogger(__name__)


class _SentenceEmbedding:  # torch.nn.Module built lazily (torch is imported lazily)
    @staticmethod
    def build(model: Any) -> Any:
        import torch

        class SentenceEmbedding(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001, ANN202
                features = {"input_ids": input_ids, "attention_mask": attention_mask,
                            "token_type_ids": token_type_ids}
                return self.model(features)["sentence_embedding"]

        return SentenceEmbedding().eval()


def onnx_model_dir(reference: Embedder, directory: Path) -> Path:
    """Where the model's ONNX files live under ``directory``: one folder per spec fingerprint."""
    return Path(directory) / reference.spec.fingerprint.replace("@", "-")


def export_onnx(reference: Embedder, directory: Path) -> Path:
    """The float32 model as ONNX (``model-fp32.onnx``), exported once with torch's dynamo
    exporter; later calls return the existing file. Shared by both int8 backends.

    Batch and sequence are dynamic dimensions (the engine pads each batch to its own longest
    row). Attention is exported in its eager form (MatMul → mask Add → Softmax → MatMul):
    OpenVINO fuses that pattern into one attention kernel, while the SDPA export wraps the
    softmax in IsNaN/Select ops that block the fusion (int8 ~30% faster on the bench machine).
    The file is written under a temporary name and renamed: a crash mid-export leaves no file
    that a restart would take for a complete one.
    """
    if reference.device != "cpu" or reference.dtype != "float32":
        raise ModelError("the int8 backends are exported from a float32 CPU model")
    fp32_path = onnx_model_dir(reference, directory) / "model-fp32.onnx"
    if fp32_path.is_file():
        return fp32_path
    try:
        import onnxscript  # noqa: F401 - torch's dynamo exporter needs it
        import torch
    except ImportError as exc:
        raise ModelError("exporting to ONNX needs onnx and onnxscript: "
                         "pip install 'ai-memory-worker[int8]'") from exc
    fp32_path.parent.mkdir(parents=True, exist_ok=True)
    module = _SentenceEmbedding.build(reference.model)
    example = reference.prepare([[reference.info.cls_id, 2000, 2001, reference.info.sep_id]] * 2)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    names = ("input_ids", "attention_mask", "token_type_ids")
    partial = fp32_path.with_name(f"model-fp32.{os.getpid()}.onnx.partial")
    log.info("exporting model to onnx", extra={"model": reference.spec.id, "path": str(fp32_path)})
    transformer = getattr(reference.model[0], "auto_model", None)
    attention = getattr(getattr(transformer, "config", None), "_attn_implementation", None)
    if attention is not None:  # restored below: the loaded model keeps running SDPA in torch
        transformer.set_attn_implementation("eager")
    try:
        torch.onnx.export(module, tuple(example[n] for n in names), str(partial),
                          input_names=list(names), output_names=["sentence_embedding"],
                          dynamic_shapes={n: {0: batch, 1: seq} for n in names},
                          dynamo=True, external_data=False, verbose=False)
    finally:
        if attention is not None:
            transformer.set_attn_implementation(attention)
    partial.replace(fp32_path)
    return fp32_path


def x86_without_vnni(cpuinfo: str | None = None) -> bool:
    """Whether this is an x86 CPU with no VNNI (AVX512-VNNI, AVX-VNNI or AMX) instructions."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False  # not Linux: ONNX Runtime's own dispatch decides
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                  if line.startswith("flags")), [])
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


class OnnxInt8Embedder:
    """ONNX Runtime, int8 weights (dynamic, per-channel quantization), CPU only.

    Built from a loaded float32 :class:`Embedder` by :meth:`build`: export to ONNX with torch's
    exporter, quantize with ``onnxruntime.quantization``; both files are kept in ``directory``
    (keyed by the spec's fingerprint), so a restart only loads them. Needs the optional packages
    ``onnx``, ``onnxruntime`` and ``onnxscript`` (the ``int8`` extra); sentence-transformers' own
    ``backend="onnx"`` needs ``optimum``, which pins transformers below 5.
    """

    dtype = "int8"
    device = "cpu"

    def __init__(self, model_path: Path, *, reference: Embedder, cpu_threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelError("backend onnx needs onnxruntime: pip install 'ai-memory-worker[int8]'") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_threads_for(cpu_threads, available_cores())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: chunking and sink writes share these cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.model_path = model_path
        self.spec = reference.spec
        self.info = reference.info
        self.tokenizer = reference.tokenizer
        self.query_ids = reference.query_ids

    @classmethod
    def build(cls, reference: Embedder, directory: Path, *, cpu_threads: int | None = None
              ) -> OnnxInt8Embedder:
        if reference.device != "cpu" or reference.dtype != "float32":
            raise ModelError("the int8 backend is exported from a float32 CPU model")
        if "onnx" not in reference.spec.int8_backends:
            raise ModelError(f"model {reference.spec.id} does not allow the onnx int8 backend "
                             "(int8_backends in its spec)")
        int8_path = onnx_model_dir(reference, directory) / "model-int8.onnx"
        if not int8_path.is_file():
            try:
                from onnxruntime.quantization import QuantType, quantize_dynamic
            except ImportError as exc:
                raise ModelError("backend onnx needs onnx, onnxruntime and onnxscript: "
                                 "pip install 'ai-memory-worker[int8]'") from exc
            fp32_path = export_onnx(reference, directory)
            # Written under a temporary name first: a crash mid-write must not leave a file that
            # a restart would load as if it were complete.
            partial = int8_path.with_name("model-int8.onnx.partial")
            # MatMuls only: quantizing the embedding Gathers costs cosine for no speed. On x86
            # without VNNI, ONNX Runtime's u8×s8 kernel (VPMADDUBSW) saturates its int16 pair
            # sums; its documentation advises u8×u8 weights there (no saturation, full 8 bits:
            # on 96 sample chunks mean cosine 0.9929 vs s8's 0.9927 and 7-bit s8's 0.9904).
            weights = QuantType.QUInt8 if x86_without_vnni() else QuantType.QInt8
            quantize_dynamic(str(fp32_path), str(partial), per_channel=True,
                             op_types_to_quantize=["MatMul"], weight_type=weights)
            partial.replace(int8_path)
        return cls(int8_path, reference=reference, cpu_threads=cpu_threads)

    @property
    def dimensions(self) -> int:
        return self.spec.dimensions

    def prepare(self, batch: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        input_ids, mask = padded_arrays(batch, self.info.pad_id)
        return {"input_ids": input_ids, "attention_mask": mask,
                "token_type_ids": np.zeros_like(input_ids)}

    def embed_prepared(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        out = self._session.run(None, feed)[0].astype(np.float32, copy=False)
        if self.spec.normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def embed_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        return self.embed_prepared(self.prepare(batch))

    def release_memory(self) -> None:
        pass

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_ids([self.query_ids(text)])[0]
