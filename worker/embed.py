"""The embedding model backend: sentence-transformers on torch, fed with ready token ids.

:class:`Embedder` owns one model on one device. It never tokenizes passages itself: it takes the
chunker's token ids, pads them into one tensor and runs the model's forward pass (Transformer →
Pooling → Normalize, exactly the modules ``SentenceTransformer.encode`` runs). Queries are
tokenized here with the query prompt.

Only the engine's inference thread calls :meth:`Embedder.embed_ids`; it is not thread-safe.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.errors import ModelError
from worker.modelspec import ModelSpec

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


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


def cpu_threads_for(requested: int | None, cores: int | None) -> int:
    """Intra-op threads for CPU inference: all cores (the other stages mostly wait on I/O)."""
    if requested:
        return requested
    return max(1, cores or 1)


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


class Embedder:
    """One sentence-transformers model on one device."""

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
            torch.set_num_threads(cpu_threads_for(cpu_threads, os.cpu_count()))
        weights = resolve_weights(spec, allow_download=allow_download)
        model_kwargs = {"torch_dtype": getattr(torch, self.dtype)}
        if self.device.startswith("cuda"):
            model_kwargs["attn_implementation"] = "sdpa"
        try:
            self.model = SentenceTransformer(weights, device=self.device, model_kwargs=model_kwargs,
                                             local_files_only=not allow_download)
        except Exception as exc:  # noqa: BLE001 - any load failure is a ModelError for the caller
            raise ModelError(f"model {spec.id}: cannot load from {weights}: {exc}") from exc
        self.model.eval()
        self.model.max_seq_length = spec.max_seq_tokens
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
        self._pin = self.device.startswith("cuda")

    @property
    def dimensions(self) -> int:
        return self.spec.dimensions

    def embed_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Embed pre-tokenized inputs (special tokens included). Returns float32 [n, dim].

        Raises the device's out-of-memory error unchanged; the engine halves its budget.
        """
        torch = self._torch
        n = len(batch)
        width = max(len(ids) for ids in batch)
        input_ids = np.full((n, width), self.info.pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        tensors = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask),
                   "token_type_ids": torch.zeros((n, width), dtype=torch.int64)}
        if self._pin:
            tensors = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in tensors.items()}
        elif self.device != "cpu":
            tensors = {k: v.to(self.device) for k, v in tensors.items()}
        with torch.inference_mode():
            out = self.model(tensors)["sentence_embedding"]
            if self.spec.normalize:
                out = torch.nn.functional.normalize(out.float(), p=2, dim=1)
            return out.float().cpu().numpy()

    def query_ids(self, text: str) -> tuple[int, ...]:
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        room = self.spec.max_seq_tokens - 2 - len(self.info.query_prompt_ids)
        return (self.info.cls_id, *self.info.query_prompt_ids, *enc.ids[:room], self.info.sep_id)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_ids([self.query_ids(text)])[0]
