"""Backfills on Ray Data, for a rebuild too big for one host (``--engine ray``).

::

    read      store export: JSON lines (.jsonl[.gz]) or Parquet (collection, document) | Estuary
              fragments, one gzipped JSON-lines file per task (committed_documents: no ACKs,
              no rolled-back transactions)                                    CPU tasks
    screen    Preparer.parse (quality, parse, masking); dead letters and document-store rows
              collected for the driver                                        CPU tasks
    newest    fragments only: groupby(doc_id) shuffle, the newest _meta.uuid clock wins
    prepare   Preparer.prepare per batch_docs: stale/unchanged guard against the ledger
              (LedgerReader), chunking with the model's tokenizer, vectors deferred   CPU tasks
    embed     EmbedStage: one model per actor (num_gpus each), each unique chunk of a call
              embedded once through the engine                                actor pool
    write     dead letters, document store, every SinkWriter and its ledger   the driver

With ``num_gpus=0`` the CPU stages have the embed actors' resource shape and Ray Data fuses them
into the actors (each then screens, chunks and embeds its batches, as one in-process worker);
with GPUs they stay separate CPU tasks feeding the GPU actors.

The stages are the in-process ones (``Preparer``, ``SinkWriter``, ``merge_outcomes``, built by
``worker.runtime``), so ids, texts, metadata and ledger rows are those of ``reindex`` over the
same documents, and either path resumes the other's work.

**Single writer.** Every SQLite file (ledger, dead letters, document store) and every sink write
belongs to the driver, one record at a time: the version guard and the ledger row after a
confirmed write are per key and serial, as in-process. Workers only read the ledger, through one
actor on the driver's node. A key appears once per run (one row per key in an export; fragments
go through the newest-per-key shuffle), so per-key order does not matter.

**Failures.** A map task that raises a :class:`TransientError` is retried in place (``_RETRIES``
times, jittered backoff: this run's ``DataContext``); a crashed task is resubmitted and a dead
embed actor restarted with its task retried (Ray Data's defaults, which are unbounded). Nothing
is written before a record reaches the driver, so a retry duplicates nothing; a rerun skips what
the ledger holds (stale or unchanged: no model call, no write). A run that still fails raises the
:class:`FatalError` named in the worker's traceback, else :class:`TransientError`: rerun it.

**Hazards.** Workers get bindings, chunking, embedding and privacy settings (the pseudonym
secret too: use a trusted cluster), never sink settings. Every node needs this package and the
model weights. The embedding cache is not used.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import pickle
import uuid as uuidlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import orjson
import pyarrow as pa

from worker.chunk import Chunker
from worker.config import BindingConfig, EmbeddingConfig, WorkerConfig
from worker.docstore import StoreWrite
from worker.documents import Binding, version_of
from worker.embed import Embedder, available_cores
from worker.engine import EmbeddingEngine
from worker.errors import ConfigError, ModelError, SinkMismatch, TransientError, WorkerError
from worker.ledger import Ledger
from worker.modelspec import ModelSpec, load_spec
from worker.pipeline import merge_outcomes
from worker.prepare import Preparer, newest_versions
from worker.records import ApplyStats, FlowDocument, PreparedRecord, StoredDocument
from worker.runtime import build_backends, build_runtime
from worker.screen import Screen

log = logging.getLogger(__name__)

_RETRIES = 3  # attempts after the first, per map task, on a TransientError
# Gazette message flags, the 10 low bits of a v1 UUID's clock sequence
# (estuary/flow crates/proto-gazette/src/uuid.rs: Flags, sequence()).
_CONTINUE_TXN, _ACK_TXN = 0x1, 0x2
_STAGE_SCHEMA = pa.schema([("doc_id", pa.string()), ("version", pa.int64()),
                           ("superseded", pa.int64()), ("item", pa.binary())])


@dataclass(frozen=True, slots=True)
class StageConfig:
    """What the workers need, and no sink settings (``embedding`` is read as WorkerConfig's)."""

    run: str  # this backfill's id: per-process caches are keyed by it
    bindings: tuple[BindingConfig, ...]
    embedding: EmbeddingConfig
    spec: ModelSpec
    chunker: Chunker  # the driver runtime's (the model's tokenizer): CPU workers load no model
    ledger_keys: Mapping[str, str]  # sink -> ledger key, as the in-process preparer has them
    secret: bytes | None  # privacy.pseudonym_secret
    redact_dead_letters: bool
    store_mode: str | None  # the document store's mode, None when it is not written
    allow_download: bool
    state_dir: str  # absolute: int8 backends cache their model here


@dataclass(slots=True)
class Screened:
    """Screening's output: one valid document (and its store row), or a batch's dead letters."""

    document: FlowDocument | None = None
    store: StoreWrite | None = None
    dead: list[tuple] = field(default_factory=list)


@dataclass(slots=True)
class Prepared:
    """One prepare pass: the record (vectors filled by EmbedStage) and what the driver writes."""

    record: PreparedRecord
    stats: ApplyStats
    dead: list[tuple]
    stored: list[StoreWrite]


# -- reading -----------------------------------------------------------------------------------

def committed_documents(lines: Iterator[bytes]) -> Iterator[tuple[Any, str | None]]:
    """The documents of one journal fragment that a read-committed reader sees, in order:
    ``(document, None)``, or ``(None, reason)`` for an unreadable line.

    ACK documents (``{"_meta": {"uuid": …, "ack": true}}``, flag ACK_TXN; the template is in
    estuary/flow crates/validation/src/collection.rs) are dropped. A CONTINUE_TXN document waits
    for its producer's next ACK: it is committed if its clock is at most the ACK's, and rolled
    back otherwise (a rollback ACK repeats the last committed clock). Documents still waiting at
    the end of the file are kept: their ACK is in the next fragment.
    """
    pending: dict[int, list[tuple[int, Any]]] = {}  # producer -> (clock, document) waiting
    for n, line in enumerate(lines, 1):
        try:
            doc = orjson.loads(line) if line.strip() else None
        except orjson.JSONDecodeError as exc:
            yield None, f"line {n}: invalid JSON ({exc})"
            continue
        meta = doc.get("_meta") if isinstance(doc, dict) else None
        try:
            u = uuidlib.UUID(str(meta["uuid"]))  # type: ignore[index]
            flags = u.clock_seq & 0x3FF if u.version == 1 else 0
        except (TypeError, KeyError, ValueError):
            u, flags = None, 0
        if flags & _ACK_TXN or isinstance(meta, dict) and meta.get("ack") is True:
            if u is not None:
                yield from ((d, None) for clock, d in pending.pop(u.node, []) if clock <= version_of(u))
        elif u is not None and flags & _CONTINUE_TXN:
            pending.setdefault(u.node, []).append((version_of(u), doc))
        elif doc is not None:
            yield doc, None  # OUTSIDE_TXN, or not a Flow document (screening dead-letters it)
    yield from ((d, None) for held in pending.values() for _, d in held)


def _raw_rows(batch: pa.Table, fmt: str, collection: str | None) -> Iterator[tuple[str, Any, str | None]]:
    """``(collection, document, problem)`` per input document of a read batch."""
    cols = batch.to_pydict()
    if fmt == "fragments":
        for data, path in zip(cols["bytes"], cols["path"]):
            for doc, problem in committed_documents(
                    # Arrow decompresses by the file's extension; a gzip fragment without one:
                    iter((gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).splitlines())):
                yield cast(str, collection), doc, problem and f"{path}: {problem}"
        return
    texts = cols["text"] if "text" in cols else cols["document"]
    paths = cols.get("path", [None] * len(texts))
    for i, (text, path) in enumerate(zip(texts, paths)):
        try:
            if "text" in cols:
                line = orjson.loads(text)
                coll, doc = line["collection"], line["document"]
                if not isinstance(coll, str):
                    raise TypeError("collection is not a string")
            else:
                coll, doc = cols["collection"][i], orjson.loads(text)
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            yield collection or "", None, f"{path or 'parquet'}: not a store export row ({exc})"
            continue
        if collection is None or coll == collection:
            yield coll, doc, None


# -- the CPU stages (Ray tasks) ----------------------------------------------------------------

class _Collected:
    """Stands in for the dead-letter and document stores on a worker: the driver writes them."""

    def __init__(self, mode: str | None = None) -> None:
        self.mode = mode
        self.rows: list[Any] = []

    def add_many(self, rows: Sequence[Any]) -> None:
        self.rows.extend(rows)

    def put_many(self, writes: Sequence[StoreWrite]) -> int:
        self.rows.extend(writes)
        return len(writes)


class _DeferredVectors:
    """The preparer's engine on a CPU worker: placeholders, so the record's ``vectors`` keys say
    which chunks need one (EmbedStage computes them)."""

    def embed(self, chunks: Sequence[Any]) -> list[None]:
        return [None] * len(chunks)


class LedgerReader:
    """A Ray actor on the driver's node: the ledger, read-only, for the workers' guard."""

    def __init__(self, path: str) -> None:
        self._ledger = Ledger(Path(path))

    def get(self, key: str, doc_ids: list[str]) -> dict[str, StoredDocument]:
        return self._ledger.get(key, doc_ids)


@dataclass(frozen=True, slots=True)
class _LedgerClient:
    """The ledger as the preparer reads it (``get``), from a worker through LedgerReader."""

    actor: Any  # a Ray actor handle

    def get(self, key: str, doc_ids: Sequence[str]) -> dict[str, StoredDocument]:
        import ray

        return ray.get(self.actor.get.remote(key, list(doc_ids)))


_PARTS: dict[str, tuple[dict[str, Binding], Screen]] = {}  # per worker process and run


def _preparer(cfg: StageConfig, ledger: Any, dead: _Collected, store: _Collected | None  # noqa: ANN401
              ) -> Preparer:
    """The in-process preparer over collectors; bindings and screen are built once per worker
    process (Ray reuses processes) as ``build_runtime`` builds them."""
    if cfg.run not in _PARTS:
        bindings = {b.collection: Binding(b) for b in cfg.bindings}
        _PARTS.clear()
        _PARTS[cfg.run] = bindings, Screen(bindings, secret=cfg.secret,
                                           redact_dead_letters=cfg.redact_dead_letters)
    bindings, screen = _PARTS[cfg.run]
    return Preparer(bindings=bindings, chunker=cfg.chunker, engine=cast(EmbeddingEngine, _DeferredVectors()),
                    ledger=cast(Ledger, _LedgerClient(ledger)), ledger_keys=cfg.ledger_keys,
                    dead_letters=cast(Any, dead), screen=screen, docstore=cast(Any, store))


def screen_batch(batch: pa.Table, *, cfg: StageConfig, fmt: str, collection: str | None) -> pa.Table:
    """Read batch → one row per valid document (and one carrying the batch's dead letters)."""
    dead, store = _Collected(), _Collected(cfg.store_mode) if cfg.store_mode else None
    preparer = _preparer(cfg, None, dead, store)
    groups: dict[str, list[Any]] = {}
    for coll, doc, problem in _raw_rows(batch, fmt, collection):
        if problem is not None:
            dead.rows.append((coll, None, "read", problem, None))
        else:
            groups.setdefault(coll, []).append(doc)
    docs = [d for coll, raws in groups.items() for d in preparer.parse(coll, raws)[0]]
    stored = {(w.doc_id, w.version): w for w in (store.rows if store else [])}
    rows = [(d.doc_id, d.version, 0, pickle.dumps(Screened(d, stored.get((d.doc_id, d.version)))))
            for d in docs]
    if dead.rows:
        rows.append(("", 0, 0, pickle.dumps(Screened(dead=dead.rows))))
    return pa.Table.from_pylist([dict(zip(_STAGE_SCHEMA.names, r)) for r in rows], schema=_STAGE_SCHEMA)


def newest_of_key(group: pa.Table) -> pa.Table:
    """One key's rows → its newest version (``newest_versions``); dead-letter rows pass."""
    if group.num_rows == 1 or group["doc_id"][0].as_py() == "":
        return group
    items = [pickle.loads(b) for b in group["item"].to_pylist()]
    winner = newest_versions([it.document for it in items])[0]
    row = group.slice(next(i for i, it in enumerate(items) if it.document is winner), 1)
    return row.set_column(2, "superseded", pa.array([group.num_rows - 1], pa.int64()))


def prepare_batch(batch: pa.Table, *, cfg: StageConfig, ledger: Any) -> pa.Table:  # noqa: ANN401
    """Up to ``batch_docs`` documents → one :class:`Prepared` (vectors still missing)."""
    stats = ApplyStats(skipped_stale=sum(batch["superseded"].to_pylist()))
    docs, dead, stored = [], [], []
    for blob in batch["item"].to_pylist():
        item: Screened = pickle.loads(blob)
        dead.extend(item.dead)
        if item.document is not None:
            docs.append(item.document)
        if item.store is not None:
            stored.append(item.store)
    record = _preparer(cfg, ledger, _Collected(), None).prepare(docs, stats) if docs \
        else PreparedRecord([], {})
    return pa.table({"prepared": pa.array([pickle.dumps(Prepared(record, stats, dead, stored))], pa.binary())})


# -- the embed stage (Ray actors) --------------------------------------------------------------

class EmbedStage:
    """One model per actor (``num_gpus`` of a GPU, or the CPU), built as ``worker.runtime``
    builds the in-process one; fills the vectors each prepared record lacks."""

    def __init__(self, cfg: StageConfig, device: str) -> None:
        env = {"MEMORY_WORKER_ALLOW_DOWNLOAD": "1"} if cfg.allow_download else {}
        embedder = Embedder(cfg.spec, device=device, cpu_threads=cfg.embedding.cpu_threads, env=env)
        # One caller with its whole batch in hand: waiting for company only adds latency.
        actor_cfg = dataclasses.replace(cfg, embedding=cfg.embedding.model_copy(
            update={"device": device, "devices": (), "max_wait_ms": 0}))
        _, backends = build_backends(cast(WorkerConfig, actor_cfg), embedder, cfg.chunker, env,
                                     Path(cfg.state_dir))
        from worker.engine_pool import build_engine

        self.engine = build_engine(actor_cfg.embedding, backends, max_seq_tokens=cfg.spec.max_seq_tokens)

    def __call__(self, batch: pa.Table) -> pa.Table:
        prepared: list[Prepared] = [pickle.loads(b) for b in batch["prepared"].to_pylist()]
        need = {c.content_hash: c for p in prepared for cd in p.record.documents for c in cd.chunks
                if c.content_hash in p.record.vectors}
        vectors = self.engine.embed(list(need.values())) if need else []
        by_hash = dict(zip(need, vectors))
        for p in prepared:
            p.record.vectors = {h: by_hash[h] for h in p.record.vectors}
        return pa.table({"prepared": pa.array([pickle.dumps(p) for p in prepared], pa.binary())})


# -- the driver --------------------------------------------------------------------------------

def _transient_names(kind: type = TransientError) -> list[str]:
    return [kind.__name__, *(n for sub in kind.__subclasses__() for n in _transient_names(sub))]


def _failure(exc: Exception) -> WorkerError:
    """A Ray failure in the error tree (Ray passes a worker's exception on as text only)."""
    for kind in (ModelError, SinkMismatch, ConfigError):  # retrying cannot help
        line = next((ln for ln in str(exc).splitlines() if f"{kind.__name__}: " in ln), None)
        if line is not None:
            return kind(f"ray backfill stopped on a worker: {line.strip()}")
    return TransientError(f"ray backfill failed ({type(exc).__name__}); what was written is kept, "
                          f"rerun it to resume: {str(exc).strip().splitlines()[-1][:500]}")


def _stages(ray: Any, paths: list[str], cfg: StageConfig, ledger: Any, *, fmt: str,  # noqa: ANN401
            collection: str | None, actors: int, num_gpus: float, batch_docs: int) -> Any:  # noqa: ANN401
    """read → screen → (newest) → prepare → embed, as one lazy dataset of :class:`Prepared`."""
    if fmt == "fragments":
        reads = [ray.data.read_binary_files(paths, include_paths=True)]
    else:
        parquet = [p for p in paths if p.endswith(".parquet") or ("://" not in p and Path(p).is_dir())]
        lines = [p for p in paths if p not in parquet]
        reads = ([ray.data.read_parquet(parquet, columns=["collection", "document"])] if parquet else []) \
            + ([ray.data.read_text(lines, include_paths=True)] if lines else [])
    screen = {"cfg": cfg, "fmt": fmt, "collection": collection}
    screened = [r.map_batches(screen_batch, batch_format="pyarrow", fn_kwargs=screen,
                              batch_size=1 if fmt == "fragments" else 256) for r in reads]
    ds = screened[0].union(*screened[1:]) if len(screened) > 1 else screened[0]
    if fmt == "fragments":
        cpus = int(ray.cluster_resources().get("CPU", 1))
        ds = ds.groupby("doc_id", num_partitions=min(200, max(2, 2 * cpus))).map_groups(
            newest_of_key, batch_format="pyarrow")
    ds = ds.map_batches(prepare_batch, batch_format="pyarrow", batch_size=batch_docs,
                        fn_kwargs={"cfg": cfg, "ledger": ledger})
    return ds.map_batches(EmbedStage, batch_format="pyarrow", batch_size=1, num_cpus=1,
                          num_gpus=num_gpus or None,
                          fn_constructor_kwargs={"cfg": cfg, "device": "cuda" if num_gpus else "cpu"},
                          compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=2))


def _run(ray: Any, config: WorkerConfig, env: Mapping[str, str], paths: list[str], *, fmt: str,  # noqa: ANN401
         collection: str | None, actors: int, num_gpus: float, batch_docs: int, progress: bool,
         generation: Any = None) -> ApplyStats:  # noqa: ANN401
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    spec = load_spec(config.model, models_dir=config.models_dir, env=env)
    # The driver's model only serves a sink whose ledger disagrees with it (SinkWriter).
    driver = Embedder(spec, device="cpu", cpu_threads=config.embedding.cpu_threads, env=env)
    rt = build_runtime(config.model_copy(update={"embedding": config.embedding.model_copy(
        update={"backend": "torch", "device": "cpu", "devices": ()})}), env, embedder=driver,
        store_documents=fmt == "fragments", generation=generation)
    secret = config.privacy.pseudonym_secret
    cfg = StageConfig(uuidlib.uuid4().hex, config.bindings, config.embedding, spec,
                      rt.chunker, dict(rt.preparer.ledger_keys),
                      secret.get_secret_value().encode() if secret is not None else None,
                      config.deadletters.redact, rt.docstore.mode if rt.docstore else None,
                      env.get("MEMORY_WORKER_ALLOW_DOWNLOAD") == "1", str(config.state_dir))
    ledger = ray.remote(LedgerReader).options(  # build_runtime's ledger file, on this node
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False),
    ).remote(str(Path(config.state_dir) / f"ledger-{spec.id}.sqlite"))
    # This run's context: bounded, jittered in-task retries of transient errors. Crashed tasks
    # and actors are retried and restarted by Ray Data's defaults.
    ctx = ray.data.DataContext.get_current().copy()
    ctx.retried_map_errors, ctx.max_map_retries = _transient_names(), _RETRIES
    ctx.enable_progress_bars = progress
    total = ApplyStats()
    try:
        with ray.data.DataContext.current(ctx):
            ds = _stages(ray, paths, cfg, ledger, fmt=fmt, collection=collection, actors=actors,
                         num_gpus=num_gpus, batch_docs=batch_docs)
            for row in ds.iter_rows():  # the one writer
                p: Prepared = pickle.loads(row["prepared"])
                rt.dead_letters.add_many(p.dead)
                if p.stored and rt.docstore is not None:
                    rt.docstore.put_many(p.stored)  # before the sinks, as the preparer does
                outcomes = {n: w.write(p.record) for n, w in rt.writers.items()} if p.record.documents else {}
                merge_outcomes(p.stats, outcomes).dead_lettered += len(p.dead)
                total.add(p.stats)
    except ray.exceptions.RayError as exc:
        raise _failure(exc) from exc
    finally:
        rt.close()
        ray.kill(ledger)
    return total


def ray_backfill(config: WorkerConfig, env: Mapping[str, str], inputs: Sequence[str | Path], *,
                 fmt: Literal["store", "fragments"], collection: str | None = None,
                 address: str | None = None, actors: int = 1, num_gpus: float = 0.0,
                 batch_docs: int = 64, progress: bool = False, generation: Any = None) -> ApplyStats:  # noqa: ANN401
    """Backfill ``config``'s sinks from a store export or Estuary fragments on Ray Data.

    ``fmt="store"``: JSON lines (``.jsonl``, ``.jsonl.gz``) ``{"collection", "document"}`` or
    Parquet (files or directories) with ``collection`` and ``document`` (JSON text); with
    ``collection``, only that collection's rows. The document store is not written (it is the
    source). ``fmt="fragments"``: fragment files or prefixes (hive layout) of ``collection``;
    screened documents also go to the document store, as ``reindex`` does.
    ``address=None``: a local Ray on this host's cores (or the Ray already initialized).
    ``generation``: the recorded generation ``config`` is already pointed at (its targets are
    not resolved again); None: ``config`` is resolved as ``reindex`` resolves it.
    Returns the counts of one ``Pipeline.apply`` over everything; ``dead_lettered`` also counts
    unreadable and invalid documents (all in the dead-letter store).
    """
    import ray

    if fmt == "fragments" and (collection is None or config.binding(collection) is None):
        raise ConfigError(f"fragments need collection= naming a bound collection (got {collection!r}; "
                          f"bound: {', '.join(b.collection for b in config.bindings)})")
    if fmt not in ("store", "fragments") or actors < 1 or batch_docs < 1 or num_gpus < 0 or not inputs:
        raise ConfigError(f"ray_backfill needs inputs, fmt store|fragments (got {fmt!r}), actors "
                          f"({actors}) and batch_docs ({batch_docs}) ≥ 1 and num_gpus ({num_gpus}) ≥ 0")
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=None if address else available_cores(),
                 include_dashboard=False, log_to_driver=False)
    try:
        if num_gpus and (gpus := ray.cluster_resources().get("GPU", 0.0)) < num_gpus:
            raise ConfigError(f"num_gpus={num_gpus} per actor, but the Ray cluster has {gpus:g} GPUs")
        # Workers do not share the driver's cwd: local paths become absolute (URIs stay).
        paths = [str(p) if "://" in str(p) else str(Path(p).resolve()) for p in inputs]
        total = _run(ray, config.model_copy(update={"state_dir": Path(config.state_dir).resolve()}), env,
                     paths, fmt=fmt, collection=collection, actors=actors, num_gpus=num_gpus,
                     batch_docs=batch_docs, progress=progress, generation=generation)
    finally:
        if started:
            ray.shutdown()
    log.info("ray backfill done", extra={"documents": total.documents, "written": total.written,
                                         "chunks": total.chunks, "tokens": total.tokens})
    return total
