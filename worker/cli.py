"""``memory-worker``: check, run, reindex, query, eval, mcp, schema, dlq, openapi, migrate.

The parser and the small commands; ``check`` is in :mod:`worker.check`, ``migrate`` in
:mod:`worker.migrate`, ``eval`` in :mod:`worker.evaluate`, ``mcp`` in :mod:`worker.mcp_server`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from worker.config import WorkerConfig, load_config
from worker.contract import QueryRequest
from worker.errors import FatalError, WorkerError
from worker.filters import FilterInvalid
from worker.query import parse_request
from worker.sinks.registry import SINKS

DEFAULT_CONFIG = "configs/local.yaml"
#: ``--config`` defaults to this variable when set (containers: /etc/memory-worker/config.yaml).
CONFIG_ENV = "MEMORY_WORKER_CONFIG"


def _env() -> dict[str, str]:
    return dict(os.environ)


def _config(args: argparse.Namespace) -> WorkerConfig:
    return load_config(Path(args.config), _env())


# -- commands ----------------------------------------------------------------------------------

def cmd_reindex(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from worker.records import ApplyStats
    from worker.runtime import build_replay, build_runtime
    from worker.sources.files import FileSource

    config = _config(args)
    progress = not args.quiet and (sys.stderr.isatty() or args.progress)
    kind = "dekaf" if args.from_dekaf else "kafka" if args.from_kafka else None
    if kind is not None:
        from worker.sources.replay import reindex_command

        if getattr(config.sources, kind) is None:
            print(f"error: --from-{kind} needs sources.{kind} in the config", file=sys.stderr)
            return 2
        rt, source_config, codec = build_replay(config, _env(), kind, sink=args.sink)
        return reindex_command(rt, kind, source_config, codec, group_id=args.group,
                               from_beginning=args.from_beginning, collection=args.collection,
                               progress=progress, as_json=args.json)
    if args.from_store or args.engine == "ray":
        return _reindex_from_store(args, config)
    if not args.collection or not args.paths:
        print("error: reindex needs --collection and at least one path (or --from-dekaf / --from-kafka)",
              file=sys.stderr)
        return 2
    if config.binding(args.collection) is None:
        known = ", ".join(b.collection for b in config.bindings)
        print(f"error: collection {args.collection!r} has no binding in {args.config} (known: {known})",
              file=sys.stderr)
        return 2
    rt = build_runtime(config, _env(), sink=args.sink)
    started, cpu_started = time.perf_counter(), time.process_time()
    stats = ApplyStats()
    rejected = 0

    def unreadable(problem: str) -> None:
        rt.dead_letters.add(args.collection, None, "read", problem, None)
        print(f"warning: {problem}", file=sys.stderr)

    source = FileSource(args.collection, [Path(p) for p in args.paths], on_unreadable=unreadable)
    try:
        bar = tqdm(total=None, unit="doc", disable=not progress, desc="reindex", file=sys.stderr)

        def feed(collection: str, raws: list[Any], origin: str) -> None:  # prepare → write, directly
            nonlocal rejected
            docs, bad = rt.pipeline.validate(collection, raws)
            rejected += bad
            stats.add(rt.pipeline.apply(docs))
            bar.update(len(raws))
            bar.set_postfix(chunks=stats.chunks, refresh=False)

        source.run(feed)
        bar.close()
    finally:
        rt.close()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    summary = {
        "documents": source.documents, "keys": stats.documents, "written": stats.written,
        "deleted": stats.deleted, "chunks": stats.chunks, "tokens": stats.tokens,
        "skipped": stats.skipped_stale + stats.unchanged, "skipped_stale": stats.skipped_stale,
        "unchanged": stats.unchanged, "empty": stats.empty,
        "dead_lettered": rejected + source.unreadable + stats.dead_lettered,
        "elapsed_s": round(elapsed, 2), "cpu_s": round(cpu, 2),  # CPU: every thread of this process
        "chunks_per_s": round(stats.chunks / elapsed, 1) if elapsed else 0.0,
        "dead_letter_store": str(rt.dead_letters.path),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def _reindex_from_store(args: argparse.Namespace, config: WorkerConfig) -> int:
    """``reindex --from-store`` (and ``--engine ray``): rebuild the config's targets from the
    local document store, with no Estuary backfill."""
    from tqdm import tqdm

    from worker.docstore import DocumentStore
    from worker.follow import rebuild_from_store
    from worker.runtime import build_runtime

    path = Path(config.state_dir) / "documents.sqlite"
    if not path.exists():
        print(f"error: no document store at {path} (documents.store: off, or nothing stored yet)", file=sys.stderr)
        return 2
    progress = not args.quiet and (sys.stderr.isatty() or args.progress)
    started = time.perf_counter()
    store = DocumentStore(path)
    rt = build_runtime(config, _env(), sink=args.sink, store_documents=False)
    try:
        if args.engine == "ray":
            import tempfile

            from worker.backfill_ray import ray_backfill

            with tempfile.TemporaryDirectory(prefix="memory-worker-export-") as tmp:
                export = Path(tmp) / "documents.parquet"
                store.export(export, fmt="parquet")
                stats = ray_backfill(rt.config, _env(), [export], fmt="store", address=args.address,
                                     actors=args.actors, num_gpus=args.num_gpus, progress=progress,
                                     generation=rt.generation)
        else:
            bar = tqdm(total=store.head(), unit="doc", disable=not progress, desc="reindex", file=sys.stderr)
            stats = rebuild_from_store(rt, store, on_page=bar.update, collection=args.collection)
            bar.close()
    finally:
        rt.close()
        store.close()
    elapsed = time.perf_counter() - started
    summary = {"from": str(path), "keys": stats.documents, "written": stats.written, "deleted": stats.deleted,
               "chunks": stats.chunks, "tokens": stats.tokens, "unchanged": stats.unchanged,
               "skipped_stale": stats.skipped_stale, "elapsed_s": round(elapsed, 2),
               "tokens_per_s": round(stats.tokens / elapsed, 1) if elapsed else 0.0}
    print(json.dumps(summary) if args.json else " ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def query_request(args: argparse.Namespace) -> QueryRequest:
    """The CLI flags → the same :class:`QueryRequest` ``POST /query`` takes."""
    flt: dict[str, Any] = {}
    if args.filter:
        try:
            flt = json.loads(args.filter)
        except ValueError as exc:
            raise FilterInvalid(f"--filter is not JSON: {exc}", field="filter") from None
    for name, value in (("source", args.source), ("collection", args.collection),
                        ("published_after", args.after), ("published_before", args.before)):
        if value is not None:
            flt[name] = value
    body = {"text": args.text, "k": args.k, "mode": args.mode, "group": args.group,
            "chunks_per_doc": args.chunks_per_doc, "context": args.context, "filter": flt,
            "sink": args.sink}
    if args.alpha is not None:
        body["alpha"] = args.alpha
    return parse_request({k: v for k, v in body.items() if v is not None})


def cmd_query(args: argparse.Namespace) -> int:
    from worker.runtime import build_retriever

    config = _config(args)
    req = query_request(args)
    retriever = build_retriever(config, _env(), sink=args.sink)
    try:
        response = retriever.search(req)
    finally:
        for sink in retriever.sinks.values():
            sink.close()
    if args.json:
        print(json.dumps(response.model_dump(mode="json", exclude_none=True), ensure_ascii=False, indent=2))
        return 0
    for warning in response.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not response.results:
        print("no results")
    for rank, r in enumerate(response.results, 1):
        print(f"{rank:>2}. {r.score:.3f}  [{r.source}] {r.title}")
        if r.url:
            print(f"    {r.url}")
        texts = [c.text for c in r.chunks] if hasattr(r, "chunks") else [r.text]
        for text in texts:
            excerpt = " ".join(text.split("\n", 1)[-1].split())[:240]
            print(f"    {excerpt}")
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from worker.contract import openapi

    print(json.dumps(openapi(), indent=2, sort_keys=True))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from worker.documents import Binding
    from worker.schema_check import check_schema

    config = _config(args)
    binding = config.binding(args.collection)
    if binding is None:
        print(f"error: collection {args.collection!r} has no binding in {args.config}", file=sys.stderr)
        return 2
    try:
        schema = json.loads(Path(args.schema).read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {args.schema}: {exc}", file=sys.stderr)
        return 2
    report = check_schema(Binding(binding), schema)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(f"{report.collection}: {'compatible' if report.compatible else 'NOT compatible'}")
        for line in report.errors:
            print(f"  error:   {line}")
        for line in report.warnings:
            print(f"  warning: {line}")
    return 0 if report.compatible else 1


def cmd_run(args: argparse.Namespace) -> int:
    from worker import logs
    from worker.runtime import build_service
    from worker.service import run_server

    config = _config(args)
    logs.setup(config.log_level, config.log_format)
    return run_server(build_service(config, _env()))


def cmd_dlq(args: argparse.Namespace) -> int:
    from worker.deadletter import DeadLetterStore

    config = _config(args)
    store = DeadLetterStore(Path(config.state_dir) / "dead_letters.sqlite")
    if args.dlq_command == "list":
        for e in store.list(collection=args.collection, limit=args.limit):
            print(json.dumps(e.summary(), ensure_ascii=False) if args.json else
                  f"{e.id:>6}  {datetime.fromtimestamp(e.created_at, timezone.utc):%Y-%m-%d %H:%M:%S}  "
                  f"{e.stage:<14} {e.collection} {e.key or '-'}  {e.reason}")
        return 0
    if args.dlq_command == "show":
        e = store.get(args.id)
        if e is None:
            print(f"error: no dead letter {args.id}", file=sys.stderr)
            return 1
        print(json.dumps({**e.summary(), "raw": e.raw}, ensure_ascii=False, indent=2))
        return 0
    if args.dlq_command == "purge":
        print(f"purged {store.purge(collection=args.collection)}")
        return 0
    # replay: back through validation and the pipeline with the current config
    from worker.runtime import build_runtime

    entries = [e for e in store.list(collection=args.collection) if e.stage == "validate"]
    rt = build_runtime(config, _env())
    replayed = still_bad = 0
    try:
        for e in entries:
            if config.binding(e.collection) is None:
                still_bad += 1
                continue
            docs, rejected = rt.pipeline.validate(e.collection, [e.raw])
            if rejected:
                still_bad += 1  # validate() filed a fresh entry with today's reason
            else:
                rt.pipeline.apply(docs)
                replayed += 1
            store.remove([e.id])
    finally:
        rt.close()
    print(f"replayed={replayed} still_invalid={still_bad}")
    return 0


# -- parser ------------------------------------------------------------------------------------

def _lazy(module: str, name: str) -> Any:  # noqa: ANN401
    import importlib

    return getattr(importlib.import_module(module), name)


def build_parser() -> argparse.ArgumentParser:
    from worker import __version__

    p = argparse.ArgumentParser(prog="memory-worker", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    default_config = os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG

    def config_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", default=default_config,
                        help=f"YAML config (default ${CONFIG_ENV}, else {DEFAULT_CONFIG}; now {default_config})")

    sp = sub.add_parser("check", help="validate the config, load the model, check every sink")
    config_arg(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=lambda a: _lazy("worker.check", "cmd_check")(a))

    sp = sub.add_parser("run", help="serve the Estuary webhook and query API, run the pipeline")
    config_arg(sp)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("reindex", help="load Estuary documents from .json/.jsonl files, or replay Dekaf")
    config_arg(sp)
    sp.add_argument("--collection", help="the Estuary collection the files hold (with --from-dekaf: "
                    "only this collection; default all of sources.dekaf.topics)")
    sp.add_argument("--from-dekaf", action="store_true",
                    help="replay the sources.dekaf topics into the configured sinks until caught up")
    sp.add_argument("--from-kafka", action="store_true",
                    help="replay the sources.kafka (materialize-kafka) topics the same way")
    sp.add_argument("--group", help="with --from-dekaf/--from-kafka: consumer group (default: a new one per run)")
    sp.add_argument("--from-beginning", action="store_true",
                    help="with --from-dekaf/--from-kafka: start at the beginning even if the group committed offsets")
    sp.add_argument("--from-store", action="store_true",
                    help="rebuild from the local document store (documents.store), no Estuary backfill")
    sp.add_argument("--engine", choices=["local", "ray"], default="local",
                    help="ray: a Ray Data backfill from the document store (the [ray] extra)")
    sp.add_argument("--address", help="with --engine ray: the Ray cluster (default: a local one)")
    sp.add_argument("--actors", type=int, default=1, help="with --engine ray: embedding actors")
    sp.add_argument("--num-gpus", type=float, default=0.0, help="with --engine ray: GPUs per actor")
    sp.add_argument("--sink", choices=list(SINKS), help="only this sink")
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.add_argument("--progress", action="store_true", help="progress bar even when not a TTY")
    sp.add_argument("paths", nargs="*")
    sp.set_defaults(func=cmd_reindex)

    sp = sub.add_parser("query", help="search, as AI Memory V2 asks it (POST /query's options)")
    config_arg(sp)
    sp.add_argument("text")
    sp.add_argument("--k", type=int, default=5, help="documents (or chunks with --group chunk)")
    sp.add_argument("--mode", choices=["hybrid", "vector", "keyword"], default="hybrid")
    sp.add_argument("--alpha", type=float, help="hybrid weight of the vector leg (default 0.5)")
    sp.add_argument("--group", choices=["document", "chunk"], default="document")
    sp.add_argument("--chunks-per-doc", type=int, default=2)
    sp.add_argument("--context", type=int, default=0, help="neighbouring chunks around the best one")
    sp.add_argument("--filter", help='JSON filter, e.g. \'{"labels": {"$in": ["bug"]}}\'')
    sp.add_argument("--source", choices=None, help="gong, slack, github, or a generic source")
    sp.add_argument("--collection")
    sp.add_argument("--after", help="published at or after (ISO 8601 or unix seconds)")
    sp.add_argument("--before", help="published before (ISO 8601 or unix seconds)")
    sp.add_argument("--sink", choices=list(SINKS))
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_query)

    sp = sub.add_parser("eval", help="retrieval quality on a labelled query file: recall@k, MRR@10, nDCG@10")
    config_arg(sp)
    sp.add_argument("--queries", required=True, help="query file (format: README, Evaluating retrieval)")
    sp.add_argument("--sink", choices=list(SINKS), action="append",
                    help="sink to evaluate (repeatable; default: every configured sink)")
    sp.add_argument("--mode", choices=["hybrid", "vector", "keyword"], action="append",
                    help="mode to evaluate (repeatable; default: all three)")
    sp.add_argument("--group", choices=["document", "chunk"], action="append",
                    help="grouping to evaluate (repeatable; default: document)")
    sp.add_argument("--k", type=int, default=3, help="the k of recall@k (default 3)")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.add_argument("--misses", type=int, default=20, help="misses to list per run (default 20)")
    sp.set_defaults(func=lambda a: _lazy("worker.evaluate", "cmd_eval")(a))

    sp = sub.add_parser("mcp", help="serve the MCP tools (search_memory, get_document, list_sources) over stdio")
    config_arg(sp)
    sp.add_argument("--sink", choices=list(SINKS), help="default sink of the tools")
    sp.set_defaults(func=lambda a: _lazy("worker.mcp_server", "cmd_mcp")(a))

    sp = sub.add_parser("openapi", help="print the query API's OpenAPI document (worker/openapi.json)")
    sp.set_defaults(func=cmd_openapi)

    sp = sub.add_parser("schema", help="check a collection's JSON schema against its binding")
    config_arg(sp)
    ssub = sp.add_subparsers(dest="schema_command", required=True)
    sc = ssub.add_parser("check", help="can the binding read this schema? (what would be dead-lettered)")
    sc.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sc.add_argument("--collection", required=True)
    sc.add_argument("--schema", required=True, help="the collection's JSON schema (flowctl / the UI)")
    sc.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_schema)

    from worker.migrate import add_parser as add_migrate

    add_migrate(sub, config_arg)

    sp = sub.add_parser("dlq", help="list, show, replay or purge dead letters")
    config_arg(sp)
    dsub = sp.add_subparsers(dest="dlq_command", required=True)
    def dlq_parser(name: str, **kw) -> argparse.ArgumentParser:  # noqa: ANN003
        d = dsub.add_parser(name, **kw)
        # `dlq list --config F` as well as `dlq --config F list`
        d.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return d

    d = dlq_parser("list")
    d.add_argument("--collection")
    d.add_argument("--limit", type=int)
    d.add_argument("--json", action="store_true")
    d = dlq_parser("show")
    d.add_argument("id", type=int)
    d = dlq_parser("replay", help="send dead letters back through validation")
    d.add_argument("--collection")
    d = dlq_parser("purge")
    d.add_argument("--collection")
    sp.set_defaults(func=cmd_dlq)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from worker import logs

    args = build_parser().parse_args(argv)
    logs.setup(os.environ.get("MEMORY_WORKER_LOG_LEVEL", "warning" if args.command != "run" else "info"))
    try:
        return args.func(args)
    except FatalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WorkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
