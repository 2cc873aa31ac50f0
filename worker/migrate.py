"""``memory-worker migrate``: change the model, chunking or privacy policy with no query downtime.

::

    plan --config NEW      what changes (the generation's parts) and the cost in chunks/tokens
    start --config NEW     register NEW's generation, create its targets, dual-write from now
    backfill --config NEW  apply the document store to it (here, or on Ray), resumable
    status                 phase, cursors, followers, services, the last events
    verify --queries F     retrieval quality of old and new, side by side (`eval`'s metrics)
    switch                 repoint queries (and Weaviate aliases) to the new generation
    rollback               repoint them back to the old one
    finish --after D       drop the generation that does not serve (the old one after a
                           switch; the new one before: an abort), once D has passed

The state machine is in :mod:`worker.migration`, the feeding in :mod:`worker.follow`, the
service's side in :mod:`worker.serving`. Every verb but ``plan`` may be run again after a crash
(``kill -9``) and completes what the crashed run left.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from worker.config import WorkerConfig, config_source, load_config
from worker.errors import ConfigError
from worker.generation import Generation, diff_parts, generation_of, generation_targets, target_names
from worker.migration import Migration, Registry, open_registry, owner_id

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")


def parse_duration(text: str) -> float:
    m = _DURATION.match(text.strip())
    if not m:
        raise ConfigError(f"--after {text!r}: expected a duration like 0, 90s, 30m, 6h or 7d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _env() -> dict[str, str]:
    return dict(os.environ)


def _registry(config: WorkerConfig) -> Registry:
    path = Path(config.state_dir) / "generations.sqlite"
    if not path.exists():
        raise ConfigError(f"{config.state_dir} has no generation registry yet: run the worker (or "
                          "`reindex`) on the current config once, then migrate")
    return open_registry(Path(config.state_dir))


def _store(config: WorkerConfig):  # noqa: ANN202
    from worker.docstore import DocumentStore

    path = Path(config.state_dir) / "documents.sqlite"
    if not path.exists():
        raise ConfigError(f"no document store in {config.state_dir} (documents.store: off?); a migration "
                          "dual-writes and backfills from it")
    return DocumentStore(path)


def _new_generation(config: WorkerConfig, env: Mapping[str, str],
                    registry: Registry | None = None) -> tuple[Any, Generation]:  # noqa: ANN401
    """The config's generation: a recorded one it is compatible with (``registry``), else its own."""
    from worker.modelspec import load_spec

    spec = load_spec(config.model, models_dir=config.models_dir, env=env)
    gen = generation_of(config, spec)
    return spec, registry.identify(gen) if registry is not None else gen


def _migration(registry: Registry) -> Migration:
    m = registry.migration()
    if m is None:
        raise ConfigError("no migration in progress (`memory-worker migrate start --config NEW`)")
    return m


# -- plan / start ------------------------------------------------------------------------------

def plan(config: WorkerConfig, env: Mapping[str, str]) -> dict[str, Any]:
    """What starting a migration to ``config`` would do, and what the backfill costs."""
    from worker.runtime import build_chunker, build_screen, load_model

    registry = _registry(config)
    serving = registry.serving()
    spec, gen = _new_generation(config, env, registry)
    old = registry.generation(serving) if serving else None
    out: dict[str, Any] = {"serving": serving, "new": gen.id}
    if old is not None and old.id == gen.id:
        out["changes"] = []
        out["note"] = "the config's generation is the serving one: nothing to migrate"
        return out
    out["changes"] = diff_parts(old.parts, gen.parts) if old else []
    base = next((g for g in registry.generations() if not g.targets), old)
    targets = generation_targets(config, gen, base_parts=base.parts if base else gen.parts)
    from worker.generation import targeted

    out["targets"] = target_names(targeted(config, targets))
    if "pinecone" in targets and "index" in targets["pinecone"]:
        out["notes"] = ["pinecone: the dimension or metric changes, so the new generation gets its own index"]
    store_path = Path(config.state_dir) / "documents.sqlite"
    if not store_path.exists():
        out["cost"] = None
        out["note"] = "no document store: backfill from files or Dekaf instead"
        return out
    store = _store(config)
    _, embedder = load_model(config, env)
    chunker = build_chunker(config, spec, embedder)
    bindings, screen = build_screen(config)
    docs = chunks = tokens = invalid = 0
    unique: set[str] = set()
    page: list = []

    def flush() -> None:
        nonlocal chunks, tokens
        for cd in chunker.chunk(page):
            chunks += len(cd.chunks)
            tokens += sum(c.n_tokens for c in cd.chunks)
            unique.update(c.content_hash for c in cd.chunks)
        page.clear()

    for row in store.iter_all():
        if row.deleted or row.collection not in bindings:
            continue
        screened = screen.screen(row.collection, row.document)
        if screened.document is None:
            invalid += 1
            continue
        docs += 1
        page.append(screened.document)
        if len(page) >= 256:
            flush()
    flush()
    out["cost"] = {"documents": docs, "chunks": chunks, "unique_chunks": len(unique), "tokens": tokens,
                   "invalid_under_new_config": invalid, "store": store.stats().as_json()}
    store.close()
    return out


def start(config: WorkerConfig, env: Mapping[str, str]) -> Migration:
    """Register the new generation, create its targets, begin dual-writing."""
    from worker.generation import targeted
    from worker.runtime import build_runtime

    registry = _registry(config)
    serving = registry.serving()
    spec, gen = _new_generation(config, env, registry)
    if serving == gen.id:
        raise ConfigError(f"the config's generation {gen.id} already serves: nothing to migrate")
    m = registry.migration()
    if m is not None and m.new != gen.id:
        raise ConfigError(f"a migration {m.old} → {m.new} is in phase {m.phase}; finish or roll it back first")
    store = _store(config)
    known = registry.generation(gen.id)
    if known is not None and known.dropped_at is None and m is None:
        raise ConfigError(f"generation {gen.id} exists and is not serving; finish it first")
    if known is None or known.dropped_at is not None:
        base = next((g for g in registry.generations() if not g.targets), None)
        targets = generation_targets(config, gen, base_parts=base.parts if base else gen.parts)
        path, text = config_source(config)
        registry.register(gen, config_yaml=text, config_path=path, targets=targets)
    row = registry.generation(gen.id)
    assert row is not None
    rt = build_runtime(targeted(config, row.targets), env, resolve=False, store_documents=False)
    rt.close()  # its targets exist now (ensure), with the new model's dimension
    return registry.begin(serving or gen.id, gen.id, store.head())


# -- backfill ----------------------------------------------------------------------------------

def backfill(config: WorkerConfig, env: Mapping[str, str], *, progress: bool, engine: str = "local",
             address: str | None = None, actors: int = 1, num_gpus: float = 0.0,
             wait_s: float = 3600.0) -> dict[str, Any]:
    """Apply the store to the new generation through the start head (and on, to the head).

    Holding the lease, this process does it; while the running service's follower holds it,
    this shows that follower's progress until it has passed the start head."""
    from tqdm import tqdm

    from worker.follow import LEASE_S, StoreFollower
    from worker.runtime import build_generation_runtime

    registry = _registry(config)
    m = _migration(registry)
    _, gen = _new_generation(config, env, registry)
    target = m.new if gen.id in (m.new, m.old) else None
    if target is None:
        raise ConfigError(f"the config's generation {gen.id} is not part of migration {m.old} → {m.new}")
    store = _store(config)
    owner = owner_id("backfill")
    lease = f"follow:{target}"
    bar = tqdm(total=store.head(), unit="change", disable=not progress, desc=f"backfill {target}",
               file=sys.stderr)
    rt = build_generation_runtime(registry, target, env)  # the model loads before the lease is taken
    if not registry.acquire(lease, owner, LEASE_S):
        # Someone follows already (the service, or another backfill): show its progress. Should
        # it die, its lease frees (at once for a dead process on this host) and this one goes on.
        holder = registry.lease_holder(lease)
        deadline = time.monotonic() + wait_s
        while not registry.acquire(lease, owner, LEASE_S):
            if (registry.cursor(target) or 0) >= m.start_head or time.monotonic() > deadline:
                rt.close()
                bar.close()
                return {"generation": target, "by": holder, "cursor": registry.cursor(target),
                        "head": store.head()}
            bar.n = registry.cursor(target) or 0
            bar.refresh()
            time.sleep(0.5)
    try:
        follower = StoreFollower(rt, store, registry, target, owner=owner)
        head = store.head()
        if engine == "ray":
            _ray_history(rt, store, registry, target, owner, head, env, address=address, actors=actors,
                         num_gpus=num_gpus)
        bar.n = follower.cursor()

        def show(p: Any) -> None:  # noqa: ANN401
            bar.n = p.cursor
            bar.set_postfix(chunks=p.stats.chunks, refresh=True)

        done = follower.run_to(head, on_progress=show)
        bar.close()
        return {"generation": target, "by": owner, "cursor": done.cursor, "head": head,
                "documents": done.stats.documents, "chunks": done.stats.chunks, "tokens": done.stats.tokens,
                "written": done.stats.written, "deleted": done.stats.deleted}
    finally:
        registry.release(lease, owner)
        rt.close()


def _ray_history(rt: Any, store: Any, registry: Registry, target: str, owner: str, head: int,  # noqa: ANN401
                 env: Mapping[str, str], *, address: str | None, actors: int, num_gpus: float) -> None:
    """The store through ``head`` exported and backfilled on Ray; the cursor then jumps to it."""
    import tempfile

    from worker.backfill_ray import ray_backfill
    from worker.follow import LEASE_S

    with tempfile.TemporaryDirectory(prefix="memory-worker-export-") as tmp:
        export = Path(tmp) / "documents.parquet"
        store.export(export, fmt="parquet", through=head)
        ray_backfill(rt.config, env, [export], fmt="store", address=address, actors=actors, num_gpus=num_gpus,
                     generation=rt.generation)
    registry.advance(target, head, owner=owner, lease_s=LEASE_S)


# -- switch / rollback / finish ----------------------------------------------------------------

def _point_aliases(config: WorkerConfig, env: Mapping[str, str], registry: Registry, gen_id: str) -> list[str]:
    """Repoint every configured Weaviate alias at ``gen_id``'s collection (idempotent)."""
    from worker.runtime import build_sinks, generation_config

    cfg = getattr(config.sinks, "weaviate", None)
    alias = getattr(cfg, "alias", None) if cfg is not None else None
    if not alias:
        return []
    gen_config = generation_config(registry, gen_id, env)
    sink = build_sinks(gen_config, only="weaviate")["weaviate"]
    try:
        sink.point_alias(alias, gen_config.sinks.weaviate.collection)
    finally:
        sink.close()
    return [f"weaviate alias {alias} → {gen_config.sinks.weaviate.collection}"]


def switch(config: WorkerConfig, env: Mapping[str, str], *, force: bool = False) -> Migration:
    registry = _registry(config)
    m = _migration(registry)
    if m.phase == "switched" and registry.serving() == m.new:
        return m
    cursor = registry.cursor(m.new) or 0
    if m.phase == "dual_write" and cursor < m.start_head and not force:
        raise ConfigError(f"{m.new} is backfilled through store change {cursor} of {m.start_head}: "
                          "run `migrate backfill` (or wait for the service's follower), or --force")
    registry.set_phase("switching", expect=("dual_write", "switching"), event=f"→ {m.new}")
    notes = _point_aliases(config, env, registry, m.new)
    return registry.set_phase("switched", expect=("switching",), serving=m.new,
                              event=f"queries → {m.new}" + (f"; {', '.join(notes)}" if notes else ""))


def rollback(config: WorkerConfig, env: Mapping[str, str]) -> Migration:
    registry = _registry(config)
    m = _migration(registry)
    if m.phase == "dual_write" and registry.serving() == m.old:
        raise ConfigError(f"{m.old} already serves; to abandon {m.new}, run `migrate finish --after 0`")
    if m.phase == "finishing" and m.drop_generation == m.new:
        raise ConfigError(f"{m.new} is being dropped; {m.old} serves")
    notes = _point_aliases(config, env, registry, m.old)
    return registry.set_phase("dual_write", expect=("switched", "switching", "finishing"), serving=m.old,
                              event=f"rollback: queries → {m.old}" + (f"; {', '.join(notes)}" if notes else ""))


def finish(config: WorkerConfig, env: Mapping[str, str], *, after_s: float) -> dict[str, Any]:
    registry = _registry(config)
    m = _migration(registry)
    if m.phase == "finishing":
        pass  # run again: drop now if due
    elif m.phase == "switched":
        m = registry.set_phase("finishing", expect=("switched",), finish_at=time.time() + after_s,
                               drop=m.old, event=f"drop {m.old} after {after_s:.0f} s")
    elif m.phase == "dual_write":
        m = registry.set_phase("finishing", expect=("dual_write",), finish_at=time.time() + after_s,
                               drop=m.new, event=f"abort: drop {m.new} after {after_s:.0f} s")
    else:
        raise ConfigError(f"cannot finish in phase {m.phase}: run `migrate switch` again first")
    dropped = finish_if_due(registry, config, None, env=env)
    return {"drop": m.drop_generation, "due_at": m.finish_at, "dropped": dropped}


def finish_if_due(registry: Registry, config: WorkerConfig, spec: Any, *,  # noqa: ANN401
                  env: Mapping[str, str] | None, runtimes: Mapping[str, Any] | None = None,
                  service_owner: str | None = None,
                  before_drop: Callable[[str], None] | None = None) -> bool:
    """Drop the finishing migration's other generation if its time has come. A generation a
    live service writes as its primary is never dropped (restart that service on the config of
    the generation that stays first)."""
    from worker.ledger import Ledger
    from worker.runtime import build_sinks, generation_config
    from worker.write import ledger_key

    m = registry.migration()
    if m is None or m.phase != "finishing" or m.finish_at is None or time.time() < m.finish_at:
        return False
    drop = m.drop_generation
    assert drop is not None
    users = [owner for owner, gen in registry.live_services() if gen == drop and owner != service_owner]
    if service_owner is not None and runtimes is not None and next(iter(runtimes)) == drop:
        users.append(service_owner)
    if users:
        registry.note("finish", f"waiting: {', '.join(users)} still runs {drop} as its primary")
        if runtimes is None:
            raise ConfigError(f"{drop} is the primary generation of the running service(s) {', '.join(users)}: "
                              "restart them on the config of the generation that stays, then finish again")
        return False
    if before_drop is not None:
        before_drop(drop)
    env = dict(os.environ) if env is None else env
    gen_config = generation_config(registry, drop, env)
    ledger_path = Path(gen_config.state_dir)
    for name, sink in build_sinks(gen_config).items():
        try:
            sink.drop_target()
            key = ledger_key(name, sink)
        finally:
            sink.close()
        for path in ledger_path.glob("ledger-*.sqlite"):
            ledger = Ledger(path)
            try:
                ledger.drop(key)
            finally:
                ledger.close()
    registry.end(drop)
    return True


# -- status / verify ---------------------------------------------------------------------------

def status(config: WorkerConfig) -> dict[str, Any]:
    registry = _registry(config)
    store_path = Path(config.state_dir) / "documents.sqlite"
    store = _store(config) if store_path.exists() else None
    head = store.head() if store is not None else None
    m = registry.migration()
    gens = []
    for g in registry.generations():
        gens.append({"id": g.id, "config": g.config_path, "model": g.parts["model"]["id"],
                     "chunking": g.parts["chunking"], "targets": g.targets or "configured names",
                     "cursor": registry.cursor(g.id), "lease": registry.lease_holder(f"follow:{g.id}"),
                     "dropped": g.dropped_at is not None})
    out = {"serving": registry.serving(), "generations": gens,
           "migration": None if m is None else {
               "old": m.old, "new": m.new, "phase": m.phase, "start_head": m.start_head,
               "backfilled": (registry.cursor(m.new) or 0) >= m.start_head, "drop": m.drop_generation,
               "finish_at": m.finish_at},
           "store": store.stats().as_json() if store is not None else None, "store_head": head,
           "services": [{"owner": o, "primary": g} for o, g in registry.live_services()],
           "events": [{"ts": ts, "verb": v, "detail": d} for ts, v, d in registry.events()]}
    if store is not None:
        store.close()
    return out


def verify(config: WorkerConfig, env: Mapping[str, str], queries: Path, *, k: int, sink: str | None,
           modes: list[str]) -> dict[str, Any]:
    """The same query file through the old and the new generation (`eval`'s metrics)."""
    from worker.evaluate import load_queries, run_eval
    from worker.runtime import generation_config, load_model, retriever_for

    registry = _registry(config)
    m = _migration(registry)
    out: dict[str, Any] = {"k": k}
    for role, gen_id in (("old", m.old), ("new", m.new)):
        gen_config = generation_config(registry, gen_id, env)
        _, embedder = load_model(gen_config, env)
        retriever = retriever_for(gen_config, embedder, sink=sink, generation=gen_id)
        sinks = retriever.sinks
        qs = load_queries(queries, retriever.collections)
        try:
            report = run_eval(retriever, qs, list(sinks), modes, ["document"], k, max_misses=0)
        finally:
            for s in sinks.values():
                s.close()
        out[role] = {"generation": gen_id, "runs": [
            {"sink": r.sink, "mode": r.mode, "recall": round(r.scores.recall, 4), "mrr": round(r.scores.mrr, 4),
             "ndcg": round(r.scores.ndcg, 4), "ms_per_query": round(r.ms_per_query, 1)} for r in report.runs]}
    return out


# -- the command -------------------------------------------------------------------------------

def add_parser(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:  # noqa: ANN401
    sp = sub.add_parser("migrate", help="change the model, chunking or privacy policy with no query downtime")
    config_arg(sp)
    msub = sp.add_subparsers(dest="migrate_command", required=True)

    def verb(name: str, help: str) -> argparse.ArgumentParser:  # noqa: A002
        v = msub.add_parser(name, help=help)
        v.add_argument("--config", default=argparse.SUPPRESS, help="the NEW config (same state_dir)")
        v.add_argument("--json", action="store_true")
        return v

    verb("plan", "what changes, and the backfill's cost in chunks and tokens")
    verb("start", "register the new generation, create its targets, dual-write")
    b = verb("backfill", "apply the document store to the new generation (resumable)")
    b.add_argument("--engine", choices=["local", "ray"], default="local")
    b.add_argument("--address", help="with --engine ray: the cluster (default: a local one)")
    b.add_argument("--actors", type=int, default=1, help="with --engine ray: embedding actors")
    b.add_argument("--num-gpus", type=float, default=0.0, help="with --engine ray: GPUs per actor")
    b.add_argument("--progress", action="store_true", help="progress bar even when not a TTY")
    b.add_argument("--quiet", action="store_true")
    verb("status", "phase, cursors, followers, services, recent events")
    v = verb("verify", "retrieval quality of old vs new on a labelled query file")
    v.add_argument("--queries", required=True)
    v.add_argument("--k", type=int, default=3)
    v.add_argument("--sink")
    v.add_argument("--mode", action="append", choices=["hybrid", "vector", "keyword"])
    s = verb("switch", "serve queries from the new generation")
    s.add_argument("--force", action="store_true", help="even before the backfill reached the start head")
    verb("rollback", "serve queries from the old generation again")
    f = verb("finish", "drop the generation that does not serve, after a delay")
    f.add_argument("--after", default="0", help="e.g. 0, 30m, 7d (default 0: now)")
    sp.set_defaults(func=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    env = _env()
    config = load_config(Path(args.config), env)
    verb = args.migrate_command
    if verb == "plan":
        out: Any = plan(config, env)
    elif verb == "start":
        out = _migration_json(start(config, env))
    elif verb == "backfill":
        progress = not args.quiet and (sys.stderr.isatty() or args.progress)
        out = backfill(config, env, progress=progress, engine=args.engine, address=args.address,
                       actors=args.actors, num_gpus=args.num_gpus)
    elif verb == "status":
        out = status(config)
    elif verb == "verify":
        out = verify(config, env, Path(args.queries), k=args.k, sink=args.sink,
                     modes=list(dict.fromkeys(args.mode or ["hybrid", "vector"])))
    elif verb == "switch":
        out = _migration_json(switch(config, env, force=args.force))
    elif verb == "rollback":
        out = _migration_json(rollback(config, env))
    else:
        out = finish(config, env, after_s=parse_duration(args.after))
    print(json.dumps(out, indent=None if args.json else 2, default=str, ensure_ascii=False))
    return 0


def _migration_json(m: Migration) -> dict[str, Any]:
    return {"old": m.old, "new": m.new, "phase": m.phase, "start_head": m.start_head,
            "drop": m.drop_generation, "finish_at": m.finish_at}
