"""Embedding model specs: one YAML file per model in ``models/``.

A spec says where the weights come from (an installed package, a local directory, or a hub name
that is only used when downloads are explicitly allowed), the vector size, the model's max
sequence, normalization, the query/passage prompts and the dtype per device kind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from worker.config import Strict, read_yaml, validate_document
from worker.errors import ConfigError

DType = Literal["float32", "float16", "bfloat16"]


class ModelSource(Strict):
    #: An importable package that ships the weights (``get_model_path()`` or ``MODEL_DIR``).
    package: str | None = None
    #: A local directory in sentence-transformers layout.
    directory: Path | None = None
    #: A hub repository id; used only if the directory is missing and downloads are allowed.
    hub: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if not (self.package or self.directory or self.hub):
            raise ValueError("load needs at least one of package, directory, hub")
        return self


class Prompts(Strict):
    query: str = ""
    passage: str = ""


class DTypes(Strict):
    cpu: Literal["float32"] = "float32"  # never half precision on CPU: it is emulated and slow
    cuda: DType = "float16"
    mps: DType = "float32"


class ModelSpec(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    load: ModelSource
    dimensions: int = Field(ge=1, le=20000)
    max_seq_tokens: int = Field(ge=16)
    normalize: bool = True
    similarity: Literal["cosine", "dotproduct"] = "cosine"
    prompts: Prompts = Prompts()
    dtype: DTypes = DTypes()
    int8_backends: tuple[Literal["onnx", "openvino"], ...] = ()
    #: Override the weights' own pooling (``cls``, ``mean``, ``max``): another vector space
    #: from the same weights. None keeps what the model ships with.
    pooling: Literal["cls", "mean", "max"] | None = None

    @property
    def fingerprint(self) -> str:
        """Changes whenever anything that affects a vector changes (cache and ledger key)."""
        raw = f"{self.id}|{self.dimensions}|{self.max_seq_tokens}|{self.normalize}|{self.prompts.passage}"
        if self.pooling is not None:  # appended only when set: existing caches keep their keys
            raw += f"|pooling={self.pooling}"
        return f"{self.id}@{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def default_models_dir() -> Path:
    """``./models`` if present, else the ``models/`` folder beside the installed package."""
    cwd = Path("models")
    if cwd.is_dir():
        return cwd
    return Path(__file__).resolve().parent.parent / "models"


def load_spec(name_or_path: str, *, models_dir: Path | None, env: Mapping[str, str]) -> ModelSpec:
    """Load ``models/<name>.yaml`` (or a path to a spec file)."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        file = candidate
    else:
        file = (models_dir or default_models_dir()) / f"{name_or_path}.yaml"
    if not file.is_file():
        known = sorted(p.stem for p in (models_dir or default_models_dir()).glob("*.yaml"))
        raise ConfigError(f"model {name_or_path!r}: no spec at {file} (known: {', '.join(known)})")
    return validate_document(ModelSpec, read_yaml(file), file=file, env=env)
