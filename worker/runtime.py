"""The composition root: config → model spec → embedder → engine → chunker → sinks → pipeline.

Every other module receives what it needs as arguments; only this module (and the CLI that calls
it) knows the whole shape. ``env`` is passed in explicitly; nothing reads the environment on
its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from worker.cache import EmbeddingCache
from worker.chunk import Chunker
from worker.config import WorkerConfig
from worker.deadletter import DeadLetterStore
from worker.documents import Binding
from worker.embed import Embedder
from worker.engine import EmbeddingEngine
from worker.errors import ConfigError
from worker.ledger import Ledger
from worker.metrics import Metrics
from worker.modelspec import ModelSpec, load_spec
from worker.pipeline import Pipeline
from worker.sinks.base import Sink

log = logging.getLogger(__name__)


def check_cross_fields(config: WorkerConfig, spec: ModelSpec) -> None:
    """Checks that need both the config and the model spec, with how to fix each."""
    if config.chunking.max_tokens > spec.max_seq_tokens:
        raise ConfigError(f"chunking.max_tokens {config.chunking.max_tokens} is above model "
                          f"{spec.id}'s max sequence {spec.max_seq_tokens}; lower it to at most "
                          f"{spec.max_seq_tokens}")
    if config.embedding.max_batch_tokens < spec.max_seq_tokens:
        raise ConfigError(f"embedding.max_batch_tokens {config.embedding.max_batch_tokens} is below "
                          f"model {spec.id}'s max sequence {spec.max_seq_tokens}; raise it to at "
                          f"least {spec.max_seq_tokens} (16384 or more is typical)")


def build_sinks(config: WorkerConfig, *, only: str | None = None, dead_letters: DeadLetterStore | None = None
                ) -> dict[str, Sink]:
    sinks: dict[str, Sink] = {}
    names = config.sinks.names() if only is None else [only]
    for name in names:
        cfg = getattr(config.sinks, name, None)
        if cfg is None:
            raise ConfigError(f"sink {name!r} is not configured (sinks.{name})")
        if name == "local":
            from worker.sinks.local import LocalSink
            sinks[name] = LocalSink(cfg.path, cfg.table)
        elif name == "pinecone":
            from worker.sinks.pinecone import PineconeSink
            sinks[name] = PineconeSink(cfg, config.retry)
        elif name == "weaviate":
            from worker.sinks.weaviate import WeaviateSink
            sinks[name] = WeaviateSink(cfg, config.retry)
    return sinks


@dataclass
class Runtime:
    config: WorkerConfig
    spec: ModelSpec
    embedder: Embedder
    engine: EmbeddingEngine
    chunker: Chunker
    sinks: dict[str, Sink]
    ledger: Ledger
    dead_letters: DeadLetterStore
    cache: EmbeddingCache | None
    pipeline: Pipeline
    bindings: dict[str, Binding] = field(default_factory=dict)

    def close(self) -> None:
        self.engine.stop()
        for sink in self.sinks.values():
            try:
                sink.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.exception("sink close failed", extra={"sink": getattr(sink, "name", "?")})
        self.ledger.close()
        self.dead_letters.close()
        if self.cache is not None:
            self.cache.close()


def load_model(config: WorkerConfig, env: Mapping[str, str]) -> tuple[ModelSpec, Embedder]:
    spec = load_spec(config.model, models_dir=config.models_dir, env=env)
    check_cross_fields(config, spec)
    embedder = Embedder(spec, device=config.embedding.device, cpu_threads=config.embedding.cpu_threads,
                        env=env)
    return spec, embedder


def build_runtime(config: WorkerConfig, env: Mapping[str, str] | None = None, *,
                  sink: str | None = None, embedder: Embedder | None = None,
                  ensure_sinks: bool = True, metrics: Metrics | None = None) -> Runtime:
    env = dict(os.environ) if env is None else env
    if embedder is None:
        spec, embedder = load_model(config, env)
    else:
        spec = embedder.spec
        check_cross_fields(config, spec)
    state = Path(config.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    cache = None
    if config.embedding.cache_max_entries:
        cache = EmbeddingCache(state / "embeddings.sqlite", fingerprint=spec.fingerprint,
                               dimensions=spec.dimensions,
                               max_entries=config.embedding.cache_max_entries)
    engine = EmbeddingEngine(embedder, max_batch_tokens=config.embedding.max_batch_tokens,
                             max_wait_ms=config.embedding.max_wait_ms, cache=cache,
                             on_batch=metrics.on_batch if metrics else None).start()
    chunker = Chunker(embedder.tokenizer, max_tokens=config.chunking.max_tokens,
                      overlap_tokens=config.chunking.overlap_tokens,
                      model_max_tokens=spec.max_seq_tokens, cls_id=embedder.info.cls_id,
                      sep_id=embedder.info.sep_id, prompt_ids=embedder.info.passage_prompt_ids)
    dead_letters = DeadLetterStore(state / "dead_letters.sqlite")
    sinks = build_sinks(config, only=sink, dead_letters=dead_letters)
    if ensure_sinks:
        for s in sinks.values():
            s.ensure(spec.dimensions, spec.similarity)
    ledger = Ledger(state / f"ledger-{spec.id}.sqlite")
    bindings = {b.collection: Binding(b) for b in config.bindings}
    pipeline = Pipeline(bindings=bindings, chunker=chunker, engine=engine, sinks=sinks,
                        ledger=ledger, dead_letters=dead_letters,
                        on_visible=metrics.observe_visible if metrics else None,
                        verify_with_sink=config.sources.dekaf is not None)
    return Runtime(config, spec, embedder, engine, chunker, sinks, ledger, dead_letters, cache,
                   pipeline, bindings)
