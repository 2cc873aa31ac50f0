"""Retrieval quality: recall@k, MRR@10 and nDCG@10 per mode and grouping, on the sample stream and
the harder set.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/retrieval.py [--k 3] [--json /tmp/bench_retrieval.json]

For each query set whose stream folder and query file exist (``examples/stream`` +
``examples/queries.json``; ``examples/hard`` + ``examples/queries-hard.json``): a fresh local
LanceDB store in a temporary folder, the bindings, chunking and model of ``configs/local.yaml``
(the real model), the stream fed as ``memory-worker reindex`` feeds it (``FileSource`` → validate
→ prepare → write; closed, so compacted with every row in the indices, as ``reindex`` leaves a
store), then ``worker.evaluate.run_eval`` over vector / keyword / hybrid × document / chunk on
the local sink. Prints one markdown table, then, per set, every query where hybrid
(document-level) ranks its documents worse than vector, with what hybrid returned.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from worker.config import WorkerConfig, parse_config  # noqa: E402
from worker.documents import Binding  # noqa: E402
from worker.evaluate import MODES, EvalReport, load_queries, run_eval  # noqa: E402

SETS = {"sample": ("examples/stream", "examples/queries.json"),
        "hard": ("examples/hard", "examples/queries-hard.json")}
GROUPS = ("document", "chunk")


def bench_config(root: Path) -> WorkerConfig:
    """configs/local.yaml with its state and store moved under ``root``."""
    data = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    data["state_dir"] = str(root / "state")
    data["sinks"] = {"local": {"path": str(root / "lancedb")}}
    data.setdefault("models_dir", str(REPO / "models"))
    return parse_config(data, file=REPO / "configs" / "local.yaml", env=dict(os.environ))


def stream_files(folder: Path, collection: str) -> list[Path]:
    """``<name>.jsonl`` / ``<name>.json`` for collection ``<tenant>/<name>``, as examples/stream names them."""
    name = collection.rsplit("/", 1)[-1]
    return [p for p in (folder / f"{name}.jsonl", folder / f"{name}.json") if p.is_file()]


def index_and_eval(name: str, stream: Path, queries_file: Path, k: int) -> tuple[EvalReport, dict[str, Any]]:
    from worker.runtime import build_retriever, build_runtime
    from worker.sources.files import FileSource

    with tempfile.TemporaryDirectory(prefix=f"bench-retrieval-{name}-") as tmp:
        config = bench_config(Path(tmp))
        queries = load_queries(queries_file, {b.collection: Binding(b).source for b in config.bindings})
        rt = build_runtime(config, dict(os.environ))
        try:
            started = time.perf_counter()
            fed = {"documents": 0, "dead_lettered": 0, "chunks": 0}
            for binding in config.bindings:
                paths = stream_files(stream, binding.collection)
                if not paths:
                    print(f"note: {name}: no stream file for {binding.collection} in {stream}", file=sys.stderr)
                    continue

                def feed(collection: str, raws: list[Any], origin: str) -> None:
                    docs, bad = rt.pipeline.validate(collection, raws)
                    fed["documents"] += len(raws)
                    fed["dead_lettered"] += bad
                    fed["chunks"] += rt.pipeline.apply(docs).chunks

                FileSource(binding.collection, paths,
                           on_unreadable=lambda problem: print(f"warning: {problem}", file=sys.stderr)).run(feed)
            fed["index_s"] = round(time.perf_counter() - started, 1)
        finally:
            rt.close()  # as reindex ends: the store compacted, new rows folded into the indices
        retriever = build_retriever(config, dict(os.environ), sink="local", embedder=rt.embedder)
        try:
            report = run_eval(retriever, queries, ["local"], list(MODES), list(GROUPS), k)
        finally:
            for sink in retriever.sinks.values():
                sink.close()
    return report, fed


def markdown_table(reports: dict[str, EvalReport]) -> str:
    k = next(iter(reports.values())).k
    lines = [f"| set | group | mode | recall@{k} | MRR@10 | nDCG@10 | queries |",
             "|---|---|---|---|---|---|---|"]
    for name, report in reports.items():
        for run in report.runs:
            s = run.scores
            mode = run.mode if run.mode_ran == run.mode else f"{run.mode} (ran {run.mode_ran})"
            lines.append(f"| {name} | {run.group} | {mode} | {s.recall:.3f} | {s.mrr:.3f} | {s.ndcg:.3f} | {s.queries} |")
    return "\n".join(lines)


def hybrid_losses(report: EvalReport, group: str = "document") -> list[str]:
    """Queries where hybrid's recall@k or reciprocal rank is below vector's, with hybrid's top 3."""
    runs = {r.mode: r for r in report.runs if r.group == group}
    if "vector" not in runs or "hybrid" not in runs:
        return []
    vector = {q.id: q for q in runs["vector"].per_query}
    lines = []
    for h in runs["hybrid"].per_query:
        v = vector[h.id]
        if (h.recall, h.reciprocal_rank) >= (v.recall, v.reciprocal_rank):
            continue
        lines.append(f"- `{h.id}`: vector ranks {v.ranks}, hybrid ranks {h.ranks}")
        for mode in ("hybrid", "vector"):
            shown = ", ".join(f"`{got.doc_id}` {got.score:.4f} ({got.title[:40]})" for got in runs[mode].top[h.id])
            lines.append(f"  - {mode}: {shown}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--sets", nargs="*", choices=list(SETS), default=list(SETS))
    parser.add_argument("--json", type=Path, help="also write the full reports here")
    args = parser.parse_args()

    reports: dict[str, EvalReport] = {}
    indexing: dict[str, dict[str, Any]] = {}
    for name in args.sets:
        stream, queries = (REPO / p for p in SETS[name])
        if not stream.is_dir() or not queries.is_file():
            print(f"note: set {name} skipped: {stream} or {queries} does not exist", file=sys.stderr)
            continue
        reports[name], indexing[name] = index_and_eval(name, stream, queries, args.k)
        print(f"indexed {name}: {indexing[name]}", file=sys.stderr)
    if not reports:
        print("error: no query set found", file=sys.stderr)
        return 2
    print(markdown_table(reports))
    for name, report in reports.items():
        losses = hybrid_losses(report)
        count = sum(line.startswith("- ") for line in losses)
        print(f"\n{name}: hybrid below vector (document level) on {count} queries")
        print("\n".join(losses))
        for sink, docs in report.unknown_documents.items():
            print(f"warning: {name}: sink {sink} lacks relevant documents {docs}")
    if args.json:
        args.json.write_text(json.dumps({"reports": {n: r.as_json() for n, r in reports.items()},
                                         "indexing": indexing}, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
