"""The composition root: every component is built here, and only here.

::

    build_runtime:  config → model spec → embedder → engine (+ cache) → chunker → sinks (registry)
                    → ledger, dead letters → Preparer → SinkWriter per sink → Pipeline
    build_service:  + spool → prepared store → intake → PrepareLoop, SinkLoop per sink
                    → sources (webhook through the HTTP app, Dekaf) → Service (the HTTP shell)

Every other module receives what it needs as arguments; ``service.py``, ``cli.py`` and
``sources/`` only use what this module builds. ``env`` is passed in explicitly; nothing reads
the environment on its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.backends import BackendChoice, choose_backend
from worker.cache import EmbeddingCache
from worker.chunk import Chunker
from worker.config import WorkerConfig
from worker.deadletter import DeadLetterStore
from worker.docstore import DocumentStore, open_store
from worker.documents import Binding
from worker.embed import Embedder
from worker.engine import EmbeddingEngine
from worker.engine_pool import EnginePool, build_engine
from worker.errors import ConfigError
from worker.generation import Generation, generation_of
from worker.ledger import Ledger
from worker.metrics import Metrics
from worker.migration import Registry, open_registry, resolve_targets
from worker.modelspec import ModelSpec, load_spec
from worker.pipeline import Pipeline
from worker.prepare import Preparer
from worker.prepared import PreparedStore
from worker.retrieve import Retriever, engine_query_embedder
from worker.screen import Screen
from worker.sinks.base import Sink
from worker.sinks.registry import SINKS
from worker.sinks.timed import TimedSink
from worker.write import SinkWriter, ledger_key

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


def build_sinks(config: WorkerConfig, *, only: str | None = None,
                metrics: Metrics | None = None) -> dict[str, Sink]:
    """The configured sinks (or just ``only``), built through the sink registry."""
    sinks: dict[str, Sink] = {}
    catalog = config.field_catalog()
    names = config.sinks.names() if only is None else [only]
    for name in names:
        cfg = getattr(config.sinks, name, None)
        if name not in SINKS or cfg is None:
            raise ConfigError(f"sink {name!r} is not configured (sinks.{name})")
        built = SINKS[name].build(cfg, config.retry, on_retry=metrics.on_retry(name) if metrics else None)
        built.declare_fields(catalog.metadata)
        sinks[name] = TimedSink(built, metrics.on_sink_call(name)) if metrics else built
    return sinks


def build_chunker(config: WorkerConfig, spec: ModelSpec, embedder: Embedder) -> Chunker:
    return Chunker(embedder.tokenizer, max_tokens=config.chunking.max_tokens,
                   overlap_tokens=config.chunking.overlap_tokens, model_max_tokens=spec.max_seq_tokens,
                   cls_id=embedder.info.cls_id, sep_id=embedder.info.sep_id,
                   prompt_ids=embedder.info.passage_prompt_ids)


def build_backends(config: WorkerConfig, embedder: Embedder, chunker: Chunker,
                   env: Mapping[str, str], state: Path) -> tuple[BackendChoice, list]:
    """The backend choice (worker/backends.py) and one model backend per engine: the int8 one,
    or torch on each configured device."""
    choice = choose_backend(config.embedding, embedder, chunker, state)
    if choice.model is not embedder:
        return choice, [choice.model]
    # embedding.devices: the first is the loaded embedder's, one more engine per further device.
    return choice, [embedder, *(Embedder(embedder.spec, device=d, cpu_threads=config.embedding.cpu_threads,
                                         env=env) for d in config.embedding.devices[1:])]


@dataclass
class Runtime:
    config: WorkerConfig
    spec: ModelSpec
    embedder: Embedder
    engine: EmbeddingEngine | EnginePool
    chunker: Chunker
    sinks: dict[str, Sink]
    ledger: Ledger
    dead_letters: DeadLetterStore
    cache: EmbeddingCache | None
    preparer: Preparer
    writers: dict[str, SinkWriter]
    pipeline: Pipeline
    screen: Screen
    bindings: dict[str, Binding] = field(default_factory=dict)
    backend: BackendChoice | None = None
    generation: Generation | None = None
    registry: Registry | None = None
    docstore: DocumentStore | None = None

    def retriever(self) -> Retriever:
        """Queries over these sinks, embedded through the engine (priority over ingest)."""
        return Retriever(embed_query=engine_query_embedder(self.embedder, self.engine), sinks=self.sinks,
                         catalog=self.config.field_catalog(), screen=self.screen,
                         sources={c: b.source for c, b in self.bindings.items()},
                         generation=self.generation.id if self.generation is not None else None)

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
        for store in (self.docstore, self.registry):
            if store is not None:
                store.close()


def load_model(config: WorkerConfig, env: Mapping[str, str]) -> tuple[ModelSpec, Embedder]:
    spec = load_spec(config.model, models_dir=config.models_dir, env=env)
    check_cross_fields(config, spec)
    device = config.embedding.devices[0] if config.embedding.devices else config.embedding.device
    embedder = Embedder(spec, device=device, cpu_threads=config.embedding.cpu_threads, env=env)
    return spec, embedder


def build_runtime(config: WorkerConfig, env: Mapping[str, str] | None = None, *,
                  sink: str | None = None, embedder: Embedder | None = None,
                  ensure_sinks: bool = True, metrics: Metrics | None = None,
                  prepared: PreparedStore | None = None, watch_drift: bool = False,
                  resolve: bool = True, store_documents: bool = True,
                  generation: Generation | None = None) -> Runtime:
    """The stages: model, engine, chunker, sinks, preparer, writers, and the direct pipeline.

    ``prepared`` (the service's store) lets the preparer see what lagging sinks will hold;
    without it (``reindex``, tests) prepare → write runs straight through :class:`Pipeline`.
    ``resolve``: point the sinks at the config's index generation (worker/migration.py); off
    for a config already pointed there. ``generation``: the recorded generation a config
    already pointed at its targets belongs to (no resolving, no :meth:`Registry.identify`).
    ``store_documents``: screened documents go to the
    document store (off for a generation fed *from* the store).
    """
    env = dict(os.environ) if env is None else env
    if embedder is None:
        spec, embedder = load_model(config, env)
    else:
        spec = embedder.spec
        check_cross_fields(config, spec)
    state = Path(config.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    registry = open_registry(state)
    if generation is None:
        generation = generation_of(config, spec)
        if resolve:
            config, generation = resolve_targets(registry, config, generation)
        else:
            generation = registry.identify(generation)
    docstore = open_store(state, config.documents.store) if store_documents else None
    cache = None
    if config.embedding.cache_max_entries:
        cache = EmbeddingCache(state / "embeddings.sqlite", fingerprint=spec.fingerprint,
                               dimensions=spec.dimensions,
                               max_entries=config.embedding.cache_max_entries)
    chunker = build_chunker(config, spec, embedder)
    choice, backends = build_backends(config, embedder, chunker, env, state)
    engine = build_engine(config.embedding, backends, max_seq_tokens=spec.max_seq_tokens, cache=cache,
                          on_batch=metrics.on_batch if metrics else None)
    dead_letters = DeadLetterStore(state / "dead_letters.sqlite")
    sinks = build_sinks(config, only=sink, metrics=metrics)
    if ensure_sinks:
        for s in sinks.values():
            s.ensure(spec.dimensions, spec.similarity)
    ledger = Ledger(state / f"ledger-{spec.id}.sqlite")
    bindings, screen = build_screen(config, redact_dead_letters=config.deadletters.redact,
                                    watch_drift=watch_drift,
                                    on_checked=metrics.on_checked if metrics else None)
    if metrics is not None:
        from worker import __version__

        metrics.watch_screen(screen)
        metrics.watch_engine(lambda: engine.stats, cache)
        devices = list(config.embedding.devices) or [embedder.device]
        metrics.watch_gpu(devices)
        metrics.declare(collections=list(bindings), sinks=list(sinks),
                        sources=[kind for kind, _ in config.sources.kafka_sources()])
        metrics.set_build(version=__version__, model=spec.id, backend=choice.backend,
                          device=",".join(devices))
    # Several workers may share the sinks (a Kafka consumer group): guard against the sink too.
    shared = bool(config.sources.kafka_sources())
    writers = {name: SinkWriter(name, s, ledger=ledger, dead_letters=dead_letters, engine=engine,
                                verify_with_sink=shared,
                                on_visible=metrics.observe_visible if metrics else None)
               for name, s in sinks.items()}
    preparer = Preparer(bindings=bindings, chunker=chunker, engine=engine, ledger=ledger,
                        ledger_keys={name: ledger_key(name, s) for name, s in sinks.items()},
                        dead_letters=dead_letters, screen=screen,
                        pending=prepared.pending if prepared is not None else None,
                        cursors=prepared.cursors if prepared is not None else None,
                        on_dead_letter=(lambda stage, n: metrics.documents_dead_lettered.labels(stage).inc(n))
                        if metrics else None, docstore=docstore)
    pipeline = Pipeline(preparer, writers)
    return Runtime(config, spec, embedder, engine, chunker, sinks, ledger, dead_letters, cache,
                   preparer, writers, pipeline, screen, bindings, choice, generation, registry, docstore)


def generation_config(registry: Registry, gen_id: str, env: Mapping[str, str]) -> WorkerConfig:
    """A recorded generation's config (its YAML, expanded with ``env``), pointed at its targets."""
    from worker.config import load_config_text
    from worker.generation import targeted

    row = registry.generation(gen_id)
    if row is None or row.dropped_at is not None:
        raise ConfigError(f"index generation {gen_id} is not known in {registry.path} (or was dropped)")
    try:
        config = load_config_text(row.config_yaml, file=row.config_path, env=env)
    except ConfigError as exc:
        raise ConfigError(f"generation {gen_id}'s recorded config ({row.config_path}) no longer "
                          f"loads: {exc}") from None
    return targeted(config, row.targets)


def build_generation_runtime(registry: Registry, gen_id: str, env: Mapping[str, str], *,
                             metrics: Metrics | None = None) -> Runtime:
    """The runtime of a recorded generation, fed from the document store (not writing it)."""
    from worker.generation import compatible

    config = generation_config(registry, gen_id, env)
    row = registry.generation(gen_id)
    assert row is not None  # generation_config checked
    spec = load_spec(config.model, models_dir=config.models_dir, env=env)
    own = generation_of(config, spec)
    if own.id != gen_id and not compatible(row.parts, own.parts):
        raise ConfigError(f"generation {gen_id}'s recorded config now gives generation {own.id} "
                          "(the model package or a policy changed under it); roll back that change")
    return build_runtime(config, env, store_documents=False,
                         generation=Generation(row.id, row.fingerprint, row.parts))


def serving_config(config: WorkerConfig, env: Mapping[str, str]) -> tuple[WorkerConfig, str | None]:
    """What a query reads: the serving generation's config and targets, and its id (``config``
    itself and no id on a state directory with no registry yet; ``config`` pointed at the
    serving targets when it is the serving generation's)."""
    path = Path(config.state_dir) / "generations.sqlite"
    if not path.exists():
        return config, None
    registry = open_registry(Path(config.state_dir))
    try:
        serving = registry.serving()
        if serving is None:
            return config, None
        spec = load_spec(config.model, models_dir=config.models_dir, env=env)
        if registry.identify(generation_of(config, spec)).id == serving:
            from worker.generation import targeted

            return targeted(config, registry.generation(serving).targets), serving  # type: ignore[union-attr]
        return generation_config(registry, serving, env), serving
    finally:
        registry.close()


def build_retriever(config: WorkerConfig, env: Mapping[str, str] | None = None, *,
                    sink: str | None = None, embedder: Embedder | None = None) -> Retriever:
    """What ``query``, ``eval`` and ``mcp`` need: the model, the sinks (not ensured: a query
    never creates an index) and the bindings' screen for masking queries. No engine thread.
    It reads the *serving* generation (worker/migration.py), whatever ``config``'s is."""
    env = dict(os.environ) if env is None else env
    served, generation = serving_config(config, env)
    if served is not config:
        if served.model != config.model:
            embedder = None
        config = served
    if embedder is None:
        _, embedder = load_model(config, env)
    return retriever_for(config, embedder, sink=sink, generation=generation)


def build_screen(config: WorkerConfig, **options: Any) -> tuple[dict[str, Binding], Screen]:  # noqa: ANN401
    """``config``'s bindings and its screen (validation, quality rules, privacy masking)."""
    bindings = {b.collection: Binding(b) for b in config.bindings}
    secret = config.privacy.pseudonym_secret
    return bindings, Screen(bindings, secret=secret.get_secret_value().encode() if secret is not None else None,
                            **options)


def retriever_for(config: WorkerConfig, embedder: Embedder, *, sink: str | None = None,
                  generation: str | None = None) -> Retriever:
    """Queries over ``config``'s sinks (not ensured), embedded by ``embedder`` directly."""
    bindings, screen = build_screen(config)
    return Retriever(embed_query=embedder.embed_query, sinks=build_sinks(config, only=sink),
                     catalog=config.field_catalog(), screen=screen,
                     sources={c: b.source for c, b in bindings.items()}, generation=generation)


def build_service(config: WorkerConfig, env: Mapping[str, str] | None = None, *,
                  metrics: Metrics | None = None, embedder: Embedder | None = None,
                  source_options: Mapping[str, Mapping[str, Any]] | None = None):  # noqa: ANN201
    """Everything ``memory-worker run`` needs, wired: returns the :class:`worker.service.Service`.

    Sinks are not checked here: each sink loop runs ``ensure`` itself, so a misconfigured sink
    is parked (and reported) while the others deliver. ``source_options[kind]`` go to that
    Kafka source (a schema-registry client or a consumer factory, for tests).
    """
    from worker.delivery import PrepareLoop, SinkLoop
    from worker.intake import Intake
    from worker.service import Service
    from worker.spool import Spool

    from worker import priority

    metrics = metrics or Metrics()
    priority.set_background_nice(config.server.background_nice)  # before any loop thread starts
    state = Path(config.state_dir)
    spool = Spool(state / "spool.sqlite", max_bytes=config.spool.max_bytes,
                  checkpoint_interval_s=config.spool.checkpoint_interval_s)
    spec = embedder.spec if embedder is not None else load_spec(config.model, models_dir=config.models_dir,
                                                                  env=env or {})
    prepared = PreparedStore(spool, sinks=config.sinks.names(), max_bytes=config.prepared.max_bytes,
                             dimensions=spec.dimensions)
    rt = build_runtime(config, env, embedder=embedder, ensure_sinks=False, metrics=metrics,
                       prepared=prepared, watch_drift=True)
    adopt_prepared(rt, prepared)
    intake = Intake(bindings=rt.bindings, spool=spool, dead_letters=rt.dead_letters, metrics=metrics,
                    max_depth=config.server.max_json_depth, redact=rt.screen.dead_letter_raw)
    prepare_loop = PrepareLoop(spool=spool, prepared=prepared, preparer=rt.preparer, retry=config.retry,
                               batch_entries=config.spool.batch_entries,
                               poll_interval_s=config.spool.poll_interval_s, metrics=metrics)
    loops = {name: SinkLoop(writer, prepared=prepared, retry=config.retry,
                            poll_interval_s=config.spool.poll_interval_s, dimensions=rt.spec.dimensions,
                            metric=rt.spec.similarity, metrics=metrics)
             for name, writer in rt.writers.items()}
    sources = []
    kafka_sources = config.sources.kafka_sources()
    if kafka_sources:  # pull sources, into the same spool; the broker is their durable log
        from worker.sources.kafka import ORIGIN_PREFIX, KafkaSource

        dropped = prepared.purge(ORIGIN_PREFIX) + spool.purge(ORIGIN_PREFIX)
        if dropped:
            log.info("kafka data left by the last run dropped; the broker replays it from the "
                     "committed offsets", extra={"entries_and_records": dropped})

        def drop(origin: str) -> int:
            return prepared.purge(origin) + spool.purge(origin)

        for kind, cfg in kafka_sources:
            options = dict(source_options.get(kind, {})) if source_options else {}
            codec = build_codec(kind, cfg, rt.bindings, registry=options.pop("registry", None))
            sources.append(KafkaSource(kind, cfg, codec=codec, intake=intake, dead_letters=rt.dead_letters,
                                       delivered_seq=prepared.delivered_spool_seq, drop=drop,
                                       metrics=metrics, single_consumer=kind == "dekaf", **options))
    from worker.serving import ServedGenerations

    generations = ServedGenerations(rt, registry=rt.registry, store=rt.docstore,
                                    build_other=lambda gen: build_generation_runtime(rt.registry, gen, env or {}),
                                    retry=config.retry, poll_interval_s=config.spool.poll_interval_s)
    return Service(rt, metrics=metrics, spool=spool, prepared=prepared, intake=intake,
                   prepare_loop=prepare_loop, loops=loops, sources=sources, generations=generations)


def adopt_prepared(rt: Runtime, prepared: PreparedStore) -> None:
    """The prepared store holds one generation's records. After a restart on another
    generation's config, records the sinks have not confirmed would carry the old vectors into
    the new targets: they are dropped, and the old generation's store follower is rewound to
    the oldest of their documents, so it re-applies them (and everything since) itself."""
    registry, gen = rt.registry, rt.generation
    if registry is None or gen is None:
        return
    held = registry.pointer("prepared")
    if held is not None and held != gen.id:
        if registry.cursor(held) is None and rt.docstore is not None:
            # It was the primary: everything stored so far reached its sinks, except what the
            # undelivered records below carry (rewound to) and entries still spooled (stored
            # again, with new change numbers, when this primary prepares them).
            registry.set_cursor(held, rt.docstore.head())
        doc_ids = prepared.undelivered_doc_ids()
        if doc_ids:
            if rt.docstore is None:
                raise ConfigError(f"the prepared store holds {len(doc_ids)} undelivered documents of "
                                  f"generation {held}; start once more on that generation's config to "
                                  "deliver them (documents.store is off, so they cannot be re-applied)")
            low = rt.docstore.min_seq(doc_ids)
            current = registry.cursor(held)
            rewound = (low - 1) if low is not None else rt.docstore.head()
            registry.set_cursor(held, min(rewound, current if current is not None else rewound))
            dropped = prepared.drop_all()
            registry.note("restart", f"primary {held} → {gen.id}: {dropped} prepared records of {held} "
                                     f"dropped; its follower re-applies from store change {rewound}")
    if held != gen.id:
        # A generation fed from the store until now: its store follower's cursor says what it
        # has; the changes after it are applied by a catch-up follower (serving.py).
        registry.set_pointer("prepared", gen.id)


def build_codec(kind: str, cfg: Any, bindings: Mapping[str, Binding], *, registry: Any = None) -> Any:  # noqa: ANN401
    """The message decoder of a Kafka source (``dekaf`` or ``kafka``)."""
    from worker.sources.codecs import DekafCodec, MaterializeKafkaCodec
    from worker.sources.kafka_client import schema_registry

    registry = registry if registry is not None else schema_registry(cfg)
    if kind == "dekaf":
        return DekafCodec(cfg, bindings, registry)
    return MaterializeKafkaCodec(cfg, bindings, registry)


def build_replay(config: WorkerConfig, env: Mapping[str, str], kind: str, *, sink: str | None = None,
                 registry: Any = None) -> tuple[Runtime, Any, Any]:  # noqa: ANN401
    """``reindex --from-dekaf | --from-kafka``: the runtime, the source's config and its codec."""
    rt = build_runtime(config, env, sink=sink)
    cfg = getattr(config.sources, kind)
    return rt, cfg, build_codec(kind, cfg, rt.bindings, registry=registry)
