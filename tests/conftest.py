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
        "embedding": {"device": "cpu", "max_wait_ms": 5},
        "server": {"webhook_token": "hook-secret", "query_token": "query-secret"},
        "sinks": {"local": {"path": str(tmp_path / "lancedb")}},
    }
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


def load_stream(collection: str) -> list[dict]:
    import orjson

    path = COLLECTIONS[collection]
    if path.suffix == ".jsonl":
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return orjson.loads(path.read_bytes())
