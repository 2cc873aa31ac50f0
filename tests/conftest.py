"""Shared fixtures. The real MiniLM model is loaded once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
STREAM = REPO / "examples" / "stream"
COLLECTIONS = {
    "sophia-ai/gong-calls-enriched": STREAM / "gong-calls-enriched.jsonl",
    "sophia-ai/slack-messages-enriched": STREAM / "slack-messages-enriched.jsonl",
    "sophia-ai/github-enriched": STREAM / "github-enriched.json",
}


@pytest.fixture(scope="session")
def spec():
    from worker.modelspec import load_spec

    return load_spec("all-minilm-l6-v2", models_dir=REPO / "models", env={})


@pytest.fixture(scope="session")
def embedder(spec):
    from worker.embed import Embedder

    return Embedder(spec, device="cpu", env={})


@pytest.fixture(scope="session")
def chunker(embedder, spec):
    from worker.chunk import Chunker

    return Chunker(embedder.tokenizer, max_tokens=256, overlap_tokens=32,
                   model_max_tokens=spec.max_seq_tokens, cls_id=embedder.info.cls_id,
                   sep_id=embedder.info.sep_id, prompt_ids=embedder.info.passage_prompt_ids)


def make_config(tmp_path: Path, **overrides):
    """A local-store config rooted in ``tmp_path`` (override any top-level section)."""
    from worker.config import parse_config

    data = {
        "model": "all-minilm-l6-v2",
        "models_dir": str(REPO / "models"),
        "state_dir": str(tmp_path / "state"),
        "bindings": [
            {"collection": "sophia-ai/gong-calls-enriched", "preset": "gong_call"},
            {"collection": "sophia-ai/slack-messages-enriched", "preset": "slack_message"},
            {"collection": "sophia-ai/github-enriched", "preset": "github_document"},
        ],
        "embedding": {"device": "cpu", "max_wait_ms": 5, "backend": "torch"},
        "server": {"webhook_token": "hook-secret", "query_token": "query-secret"},
        "sinks": {"local": {"path": str(tmp_path / "lancedb")}},
    }
    if "embedding" in overrides:  # torch unless a test asks for another backend: the default
        # (auto) quantizes per state dir; tests/test_backends.py covers it
        overrides = {**overrides, "embedding": {"backend": "torch", **overrides["embedding"]}}
    data.update(overrides)
    return parse_config(data, file=Path("test.yaml"), env={})


@pytest.fixture
def runtime_factory(tmp_path, embedder):
    """Build runtimes that share the session's model; all are closed at teardown."""
    from worker.runtime import build_runtime

    built = []

    def factory(config=None, **kwargs):
        rt = build_runtime(config or make_config(tmp_path), {}, embedder=embedder, **kwargs)
        built.append(rt)
        return rt

    yield factory
    for rt in built:
        rt.close()


@pytest.fixture
def service_factory(tmp_path, embedder):
    """Build services (``memory-worker run`` minus HTTP) that share the session's model; all
    are drained and closed at teardown. ``service_factory(config=None, **build_service_kwargs)``."""
    from worker.metrics import Metrics
    from worker.runtime import build_service

    built = []

    def factory(config=None, **kwargs):
        kwargs.setdefault("metrics", Metrics())
        service = build_service(config or make_config(tmp_path), {}, embedder=embedder, **kwargs)
        built.append(service)
        return service

    yield factory
    for service in built:
        service.drain(30)
        service.close()


def load_stream(collection: str) -> list[dict]:
    import orjson

    path = COLLECTIONS[collection]
    if path.suffix == ".jsonl":
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return orjson.loads(path.read_bytes())


# -- Flow message UUIDs ------------------------------------------------------------------------

_GREGORIAN_TO_UNIX_TICKS = 0x01B21DD213814000


def flow_uuid(unix_s: float, counter: int = 0, flags: int = 0) -> str:
    """A v1 UUID laid out like Gazette's: timestamp = publish time, clock_seq = counter << 10 | flags.

    Built from the layout in shared/reference/estuary.md, not from worker code, so tests that
    decode it check the worker against the spec.
    """
    import uuid

    ticks = round(unix_s * 10_000_000) + _GREGORIAN_TO_UNIX_TICKS
    clock_seq = (counter << 10) | flags
    return str(uuid.UUID(fields=(ticks & 0xFFFFFFFF, (ticks >> 32) & 0xFFFF,
                                 ((ticks >> 48) & 0x0FFF) | 0x1000,
                                 0x80 | (clock_seq >> 8), clock_seq & 0xFF, 0x0242AC120002)))


# -- the sample stream, indexed once -----------------------------------------------------------

DELIVERY_GROUP = 8  # documents per pipeline.apply, like small webhook requests in delivery order


class IndexedStream:
    """The whole sample stream applied, in delivery order, into one fresh local store."""

    def __init__(self, root: Path, config, runtime, dead_lettered: int) -> None:
        self.root = root
        self.config = config
        self.runtime = runtime
        self.dead_lettered = dead_lettered

    @property
    def sink(self):
        return self.runtime.sinks["local"]

    @property
    def embedder(self):
        return self.runtime.embedder


def apply_stream(runtime, group: int = DELIVERY_GROUP) -> int:
    """Validate and apply every collection of the sample stream; returns how many were rejected."""
    rejected = 0
    for collection in COLLECTIONS:
        raws = load_stream(collection)
        for start in range(0, len(raws), group):
            docs, bad = runtime.pipeline.validate(collection, raws[start:start + group])
            rejected += bad
            runtime.pipeline.apply(docs)
    return rejected


@pytest.fixture(scope="session")
def indexed_stream(tmp_path_factory, embedder, stream_cache):
    """The sample stream applied once per session, in delivery order, into a fresh local store.

    Its state dir starts with the session's warm embedding cache (see ``stream_cache``), so this
    costs chunking and writes, not model time. Read-only for tests: query it, read its rows and
    ledger; never write to it.
    """
    from worker.runtime import build_runtime

    root = tmp_path_factory.mktemp("indexed-stream")
    config = make_config(root)
    seed_cache(stream_cache, Path(config.state_dir))
    runtime = build_runtime(config, {}, embedder=embedder)
    try:
        rejected = apply_stream(runtime)
        yield IndexedStream(root, config, runtime, rejected)
    finally:
        runtime.close()


@pytest.fixture(scope="session")
def stream_cache(tmp_path_factory, embedder, spec):
    """An embedding-cache file holding every chunk of the sample stream, computed once per session.

    Embedding the whole stream takes about a minute on two cores; tests that only need the
    vectors to be *right* (not computed in front of them) copy this file into their state dir
    with :func:`seed_cache`, which is exactly what a restarted worker finds on disk.
    """
    from worker.cache import EmbeddingCache
    from worker.documents import Binding
    from worker.config import BindingConfig
    from worker.chunk import Chunker
    from worker.engine import EmbeddingEngine

    path = tmp_path_factory.mktemp("stream-cache") / "embeddings.sqlite"
    cache = EmbeddingCache(path, fingerprint=spec.fingerprint, dimensions=spec.dimensions,
                           max_entries=1_000_000)
    chunker = Chunker(embedder.tokenizer, max_tokens=256, overlap_tokens=32,
                      model_max_tokens=spec.max_seq_tokens, cls_id=embedder.info.cls_id,
                      sep_id=embedder.info.sep_id, prompt_ids=embedder.info.passage_prompt_ids)
    presets = {"sophia-ai/gong-calls-enriched": "gong_call",
               "sophia-ai/slack-messages-enriched": "slack_message",
               "sophia-ai/github-enriched": "github_document"}
    with EmbeddingEngine(embedder, max_batch_tokens=16384, max_wait_ms=5, cache=cache) as engine:
        for collection, preset in presets.items():
            binding = Binding(BindingConfig(collection=collection, preset=preset))
            docs = [binding.parse(raw) for raw in load_stream(collection)]
            chunks = [c for cd in chunker.chunk(docs) for c in cd.chunks]
            engine.embed(chunks)
    cache.close()
    return path


def seed_cache(stream_cache: Path, state_dir: Path) -> None:
    """Copy the session's warm embedding cache into a worker state dir (before it starts)."""
    import shutil

    state_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(stream_cache, state_dir / "embeddings.sqlite")


@pytest.fixture(scope="session")
def openvino_state(tmp_path_factory, embedder, chunker):
    """A worker state dir whose ``onnx/`` and ``openvino/`` hold the OpenVINO int8 model (and the
    ONNX export it came from), quantized and accepted by the quality gate once per session.
    ``openvino_state.choice`` is that build's :class:`worker.backends.BackendChoice`; tests copy
    the models into their own state dir with :func:`copy_int8_models`, as a restart finds them."""
    for module in ("openvino", "nncf", "onnx", "onnxscript"):
        pytest.importorskip(module, reason="the int8 extra is not installed")
    from types import SimpleNamespace

    from worker.backends import choose_backend
    from worker.config import EmbeddingConfig

    state = tmp_path_factory.mktemp("openvino") / "state"
    choice = choose_backend(EmbeddingConfig(backend="openvino"), embedder, chunker, state)
    return SimpleNamespace(state=state, choice=choice)


def copy_int8_models(src_state: Path, state_dir: Path) -> None:
    """Copy the quantized models (``onnx/``, ``openvino/``) into another state dir, mtimes kept."""
    import shutil

    for name in ("onnx", "openvino"):
        if (src_state / name).is_dir():
            shutil.copytree(src_state / name, state_dir / name, dirs_exist_ok=True)
