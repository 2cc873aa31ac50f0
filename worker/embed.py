"""The embedding model backends, fed with ready token ids; never tokenize passages themselves.

:class:`Embedder` owns one sentence-transformers model on one device. It takes the chunker's token
ids, pads them into one tensor and runs the model's forward pass (Transformer → Pooling →
Normalize, exactly the modules ``SentenceTransformer.encode`` runs). Queries are tokenized here
with the query prompt.

* CPU: float32 always (half precision is emulated there and ~100x slower), intra-op threads =
  the cores this process may use.
* CUDA: the spec's fp16/bf16, FlashAttention-2 when ``flash_attn`` is installed (transformers then
  unpads the batch), else SDPA; inputs are built in pinned host memory by :meth:`prepare` (on the
  engine's collator thread) and copied without blocking by :meth:`embed_prepared`.

The optional CPU int8 backends are built from this float32 model: ONNX Runtime in
``worker/embed_onnx.py``, OpenVINO in ``worker/embed_openvino.py``. Which backend runs is decided
in ``worker/backends.py``, and an int8 one only after :func:`check_int8_quality` accepts it
against float32 on real chunks.

Only the engine's inference thread calls ``embed_prepared``/``embed_ids``; backends are not
thread-safe. ``prepare`` is pure and may run on another thread.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.errors import ModelError
from worker.modelspec import ModelSpec

log = logging.getLogger(__name__)

#: The quality bar an int8 backend must meet against float32 (cosine per chunk).
INT8_MIN_MEAN_COSINE = 0.99
INT8_MIN_COSINE = 0.97


def pick_device(requested: str, *, cuda_available: bool, mps_available: bool) -> str:
    """``auto`` → cuda, then mps, then cpu; an explicit device is checked, not silently changed."""
    if requested == "auto":
        return "cuda" if cuda_available else "mps" if mps_available else "cpu"
    if requested.startswith("cuda") and not cuda_available:
        raise ModelError(f"embedding.device is {requested!r} but CUDA is not available; "
                         "use 'auto' or 'cpu'")
    if requested == "mps" and not mps_available:
        raise ModelError("embedding.device is 'mps' but MPS is not available; use 'auto' or 'cpu'")
    return requested


def dtype_for(spec: ModelSpec, device: str) -> str:
    """The spec's dtype for this kind of device; CPU is always float32."""
    kind = device.split(":")[0]
    if kind == "cuda":
        return spec.dtype.cuda
    if kind == "mps":
        return spec.dtype.mps
    return "float32"


def attention_for(device: str, dtype: str, *, flash_available: bool) -> str:
    """FlashAttention-2 (unpadded varlen kernels) on CUDA in half precision when installed, else
    SDPA (PyTorch's fused kernels; on CPU too)."""
    if device.startswith("cuda") and dtype in ("float16", "bfloat16") and flash_available:
        return "flash_attention_2"
    return "sdpa"


def available_cores() -> int:
    """Cores this process may run on (affinity/cgroup aware where the OS says)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_threads_for(requested: int | None, cores: int | None) -> int:
    """Intra-op threads for CPU inference: all cores.

    The other stages (chunking, spool, sinks) mostly wait on I/O or hold the GIL briefly; on two
    cores, giving the model both measured faster than leaving one free (bench/README.md).
    """
    if requested:
        return requested
    return max(1, cores or 1)


def set_pooling(model: Any, mode: str, model_id: str) -> None:  # noqa: ANN401
    """Replace the pooling of a loaded sentence-transformers model (every backend exports the
    whole module chain, so ONNX and OpenVINO follow)."""
    pools = [m for m in model if type(m).__name__ == "Pooling"]
    if len(pools) != 1:
        raise ModelError(f"model {model_id}: pooling: {mode} needs exactly one Pooling module, "
                         f"found {len(pools)}")
    pools[0].pooling_mode = mode


def resolve_weights(spec: ModelSpec, *, allow_download: bool) -> str:
    """Where to load the weights from: installed package, then local directory, then hub."""
    if spec.load.package:
        try:
            module = __import__(spec.load.package)
        except ImportError as exc:
            if not (spec.load.directory or spec.load.hub):
                raise ModelError(f"model {spec.id}: package {spec.load.package!r} is not "
                                 f"installed (pip install {spec.load.package.replace('_', '-')})") from exc
        else:
            getter = getattr(module, "get_model_path", None)
            path = Path(getter()) if getter else Path(getattr(module, "MODEL_DIR"))
            if path.is_dir():
                return str(path)
    if spec.load.directory and Path(spec.load.directory).is_dir():
        return str(spec.load.directory)
    if spec.load.hub and allow_download:
        return spec.load.hub
    where = [f"directory {spec.load.directory}"] if spec.load.directory else []
    raise ModelError(f"model {spec.id}: weights not found ({', '.join(where) or 'no local source'}). "
                     f"Download {spec.load.hub or 'them'} into that directory at build time "
                     "(see Dockerfile.gpu), or set MEMORY_WORKER_ALLOW_DOWNLOAD=1 where a network exists.")


@dataclass(frozen=True, slots=True)
class TokenizerInfo:
    cls_id: int
    sep_id: int
    pad_id: int
    passage_prompt_ids: tuple[int, ...]
    query_prompt_ids: tuple[int, ...]


def padded_arrays(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64 ``[n, longest]``) for a batch of id lists."""
    n = len(batch)
    width = max(len(ids) for ids in batch)
    input_ids = np.full((n, width), pad_id, dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return input_ids, mask


class Embedder:
    """One sentence-transformers model on one device (torch)."""

    def __init__(self, spec: ModelSpec, *, device: str = "auto", cpu_threads: int | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        env = env or {}
        allow_download = env.get("MEMORY_WORKER_ALLOW_DOWNLOAD") == "1"
        if not allow_download:  # never reach a hub at run time unless explicitly allowed
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()

        self.spec = spec
        self.device = pick_device(device, cuda_available=torch.cuda.is_available(),
                                  mps_available=bool(getattr(torch.backends, "mps", None))
                                  and torch.backends.mps.is_available())
        self.dtype = dtype_for(spec, self.device)
        if self.device == "cpu":
            torch.set_num_threads(cpu_threads_for(cpu_threads, available_cores()))
        weights = resolve_weights(spec, allow_download=allow_download)
        self.attention = attention_for(self.device, self.dtype,
                                       flash_available=importlib.util.find_spec("flash_attn") is not None)
        model_kwargs = {"torch_dtype": getattr(torch, self.dtype), "attn_implementation": self.attention}
        try:
            self.model = SentenceTransformer(weights, device=self.device, model_kwargs=model_kwargs,
                                             local_files_only=not allow_download)
        except Exception as exc:  # noqa: BLE001 - any load failure is a ModelError for the caller
            raise ModelError(f"model {spec.id}: cannot load from {weights}: {exc}") from exc
        self.model.eval()
        self.model.max_seq_length = spec.max_seq_tokens
        if spec.pooling is not None:
            set_pooling(self.model, spec.pooling, spec.id)
        dim = self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") \
            else self.model.get_sentence_embedding_dimension()
        if dim != spec.dimensions:
            raise ModelError(f"model {spec.id}: spec says {spec.dimensions} dimensions, "
                             f"the weights give {dim}")
        self._torch = torch
        from tokenizers import Tokenizer

        # A private copy: the shipped tokenizer.json may pad/truncate to a fixed length.
        self.tokenizer = Tokenizer.from_str(self.model.tokenizer.backend_tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        hf = self.model.tokenizer

        def prompt_ids(prompt: str) -> tuple[int, ...]:
            return tuple(hf(prompt, add_special_tokens=False)["input_ids"]) if prompt else ()

        self.info = TokenizerInfo(hf.cls_token_id, hf.sep_token_id, hf.pad_token_id or 0,
                                  prompt_ids(spec.prompts.passage), prompt_ids(spec.prompts.query))
        self.pin_memory = self.device.startswith("cuda")
        log.info("model loaded", extra={"model": spec.id, "device": self.device, "dtype": self.dtype,
                                        "attention": self.attention})

    @property
    def dimensions(self) -> int:
        return self.spec.dimensions

    def prepare(self, batch: Sequence[Sequence[int]]) -> dict[str, Any]:
        """Padded input tensors for ``batch``; pinned host memory on CUDA. Safe on any thread."""
        torch = self._torch
        input_ids, mask = padded_arrays(batch, self.info.pad_id)
        tensors = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask),
                   "token_type_ids": torch.zeros(input_ids.shape, dtype=torch.int64)}
        if self.pin_memory:  # page-locked, so the copy to the GPU can overlap the previous batch
            tensors = {k: v.pin_memory() for k, v in tensors.items()}
        return tensors

    def embed_prepared(self, tensors: dict[str, Any]) -> np.ndarray:
        """Run the model on :meth:`prepare`'s output. Returns float32 ``[n, dim]``.

        Raises the device's out-of-memory error unchanged; the engine halves its budget.
        """
        torch = self._torch
        if self.device != "cpu":
            tensors = {k: v.to(self.device, non_blocking=self.pin_memory) for k, v in tensors.items()}
        with torch.inference_mode():
            out = self.model(tensors)["sentence_embedding"]
            if self.spec.normalize:
                out = torch.nn.functional.normalize(out.float(), p=2, dim=1)
            return out.float().cpu().numpy()

    def embed_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Embed pre-tokenized inputs (special tokens included). Returns float32 ``[n, dim]``."""
        return self.embed_prepared(self.prepare(batch))

    def release_memory(self) -> None:
        """After an out-of-memory error: hand cached device blocks back before retrying."""
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()

    def query_ids(self, text: str) -> tuple[int, ...]:
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        room = self.spec.max_seq_tokens - 2 - len(self.info.query_prompt_ids)
        return (self.info.cls_id, *self.info.query_prompt_ids, *enc.ids[:room], self.info.sep_id)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_ids([self.query_ids(text)])[0]


# -- optional int8 CPU backend -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Int8Quality:
    """Cosine of int8 against float32 vectors of the same chunks."""

    chunks: int
    mean_cosine: float
    min_cosine: float

    @property
    def accepted(self) -> bool:
        return self.mean_cosine >= INT8_MIN_MEAN_COSINE and self.min_cosine >= INT8_MIN_COSINE


def check_int8_quality(reference: np.ndarray, candidate: np.ndarray, *, raise_if_refused: bool = True
                       ) -> Int8Quality:
    """Compare int8 vectors with float32 ones (same chunks, same order).

    Raises :class:`ModelError` (unless told not to) when the mean cosine is below
    ``INT8_MIN_MEAN_COSINE`` or any chunk is below ``INT8_MIN_COSINE``: the worker then refuses
    the backend rather than store vectors that drift from the queries' float32 space.
    """
    if reference.shape != candidate.shape or not len(reference):
        raise ModelError(f"int8 check needs two equal, non-empty sets of vectors "
                         f"(got {reference.shape} and {candidate.shape})")
    a = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    b = candidate / np.linalg.norm(candidate, axis=1, keepdims=True)
    cos = np.sum(a * b, axis=1)
    quality = Int8Quality(len(cos), float(cos.mean()), float(cos.min()))
    if raise_if_refused and not quality.accepted:
        raise ModelError(f"int8 backend refused: cosine to float32 mean {quality.mean_cosine:.4f} "
                         f"(needs ≥ {INT8_MIN_MEAN_COSINE}), min {quality.min_cosine:.4f} (needs ≥ "
                         f"{INT8_MIN_COSINE}) over {quality.chunks} chunks; use backend: torch")
    return quality
