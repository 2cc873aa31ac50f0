"""Retrieval quality on a labelled query file: ``memory-worker eval``.

::

    query file --parse_queries--> QuerySet (relevant documents and grades per query)
        --for each (sink, group, mode): Retriever.search, max(k, 10) results per query-->
        ranked doc ids --score_results--> QueryScore --mean--> RunReport --> EvalReport
        (a text table, or ``--json``)

The metrics, per query, over the ranking of *documents* a run returned (its results' ``doc_id``
in rank order, duplicates removed; with ``group: chunk`` several chunks of one document collapse
into its first rank). ``rel`` are the query's documents with a grade > 0:

* **recall@k**: ``|rel ∩ docs of the top k results| / |rel|``. With ``group: chunk`` the top k
  results are k *chunks*, so chunk-level recall@k is "found within the first k chunks".
* **MRR@10**: ``1 / rank`` of the first relevant document among the docs of the top 10 results;
  0 when none is there.
* **nDCG@10**: ``DCG / IDCG`` with linear gain (the grade itself, not ``2^g - 1``) and a
  ``log2(rank + 1)`` discount, ``DCG = Σ grade(d_r) / log2(r + 1)`` over the docs of the top 10
  results, ``IDCG`` the same over the grades sorted best first (at most 10).

Each is averaged over the queries of a run (and of each ``kind``). A run asks for max(k, 10)
results so that one search serves all three. A query's ``filter`` is applied as ``POST /query``
applies it. A *miss* is a query with recall@k < 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.errors import FatalError
from worker.filters import FilterInvalid, parse_filter
from worker.ids import chunk_id, document_id
from worker.query import parse_request
from worker.retrieve import FETCH_BATCH, Retriever

log = logging.getLogger(__name__)

#: The depth of MRR and nDCG (and of the rank shown for a miss).
DEPTH = 10
#: Results of each miss shown ("what was returned instead").
MISS_RESULTS = 3
MODES = ("vector", "keyword", "hybrid")


class QueryFileInvalid(FatalError):
    """The query file cannot be read or does not fit the format; the message names the query."""


# -- the query file ------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuerySpec(_Strict):
    """One labelled query, as the file spells it."""

    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    relevant: list[str] | dict[str, float]
    filter: dict[str, Any] = Field(default_factory=dict)
    kind: str | None = None
    note: str | None = None


class LegacyQuerySpec(_Strict):
    """The first shape of ``examples/queries.json``: ``query`` + ``collection`` + ``key``."""

    query: str = Field(min_length=1)
    collection: str
    key: list[str | int]
    doc_id_hint: str | None = None
    id: str | None = None
    filter: dict[str, Any] = Field(default_factory=dict)
    kind: str | None = None
    note: str | None = None


class QueryFileSpec(_Strict):
    name: str | None = None
    description: str | None = None
    queries: list[dict[str, Any]]


@dataclass(frozen=True)
class EvalQuery:
    id: str
    text: str
    grades: dict[str, float]  # doc_id -> grade; binary lists give 1.0
    filter: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None
    note: str | None = None

    @property
    def relevant(self) -> set[str]:
        return {doc for doc, grade in self.grades.items() if grade > 0}


@dataclass(frozen=True)
class QuerySet:
    name: str
    description: str
    queries: list[EvalQuery]


def load_queries(path: Path, sources: Mapping[str, str]) -> QuerySet:
    """Read a query file; ``sources`` (collection → source) resolve legacy ``collection`` + ``key``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise QueryFileInvalid(f"{path}: cannot read the query file: {exc}") from None
    return parse_queries(data, sources, default_name=Path(path).stem)


def parse_queries(data: Any, sources: Mapping[str, str], *, default_name: str = "queries") -> QuerySet:  # noqa: ANN401
    """The three accepted shapes (``{"queries": [...]}``, a bare list, legacy entries) → QuerySet."""
    if isinstance(data, list):
        data = {"queries": data}
    try:
        spec = QueryFileSpec.model_validate(data)
    except ValidationError as exc:
        raise QueryFileInvalid(f"query file: {_errors(exc)}") from None
    queries: list[EvalQuery] = []
    for n, raw in enumerate(spec.queries, 1):
        query = _parse_query(raw, n, sources)
        if any(q.id == query.id for q in queries):
            raise QueryFileInvalid(f"query {query.id!r}: the id is used twice")
        queries.append(query)
    if not queries:
        raise QueryFileInvalid("query file: no queries")
    return QuerySet(name=spec.name or default_name, description=spec.description or "", queries=queries)


def _parse_query(raw: Mapping[str, Any], n: int, sources: Mapping[str, str]) -> EvalQuery:
    name = repr(raw.get("id")) if isinstance(raw.get("id"), str) else f"#{n}"
    try:
        if "text" not in raw and "query" in raw:
            legacy = LegacyQuerySpec.model_validate(raw)
            name = repr(legacy.id or f"q{n}")
            if legacy.collection not in sources:
                raise QueryFileInvalid(f"query {name}: collection {legacy.collection!r} has no binding "
                                       f"in the config (known: {', '.join(sources)})")
            doc = document_id(sources[legacy.collection], tuple(str(k) for k in legacy.key))
            query = EvalQuery(id=legacy.id or f"q{n}", text=legacy.query, grades={doc: 1.0},
                              filter=legacy.filter, kind=legacy.kind,
                              note=legacy.note or legacy.doc_id_hint)
        else:
            spec = QuerySpec.model_validate(raw)
            grades = ({doc: 1.0 for doc in spec.relevant} if isinstance(spec.relevant, list)
                      else dict(spec.relevant))
            query = EvalQuery(id=spec.id, text=spec.text, grades=grades, filter=spec.filter,
                              kind=spec.kind, note=spec.note)
    except ValidationError as exc:
        raise QueryFileInvalid(f"query {name}: {_errors(exc)}") from None
    if any(not math.isfinite(g) or g < 0 for g in query.grades.values()):
        raise QueryFileInvalid(f"query {name}: relevance grades must be finite numbers >= 0")
    if not query.relevant:
        raise QueryFileInvalid(f"query {name}: no relevant document (a doc id with a grade > 0)")
    try:  # the filter's shape now; its fields against the bindings in run_eval
        parse_request({"text": query.text, "filter": query.filter})
    except FilterInvalid as exc:
        raise QueryFileInvalid(f"query {name}: {exc}") from None
    return query


def _errors(exc: ValidationError) -> str:
    """The first few problems, each with where it is (``relevant``, ``queries.2``, ...)."""
    return "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ())) or 'body'}: {err.get('msg', 'invalid')}"
                     for err in exc.errors()[:3])


# -- the metrics (pure) --------------------------------------------------------------------------

def documents_in_order(doc_ids: Iterable[str]) -> list[str]:
    """Result doc ids in rank order, each document at its first rank."""
    return list(dict.fromkeys(doc_ids))


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """The fraction of ``relevant`` among the first ``k`` of ``ranked`` (distinct doc ids)."""
    if not relevant:
        raise ValueError("recall of a query without relevant documents")
    return len(set(ranked[:k]) & set(relevant)) / len(set(relevant))


def reciprocal_rank(ranked: Sequence[str], relevant: Collection[str], depth: int = DEPTH) -> float:
    """``1 / rank`` of the first relevant document within ``depth``; 0 when none."""
    for rank, doc in enumerate(ranked[:depth], 1):
        if doc in relevant:
            return 1.0 / rank
    return 0.0


def ndcg(ranked: Sequence[str], grades: Mapping[str, float], depth: int = DEPTH) -> float:
    """nDCG@depth with linear gain (the grade) and a ``log2(rank + 1)`` discount."""
    def dcg(gains: Iterable[float]) -> float:
        return sum(g / math.log2(rank + 1) for rank, g in enumerate(gains, 1))

    ideal = dcg(sorted((g for g in grades.values() if g > 0), reverse=True)[:depth])
    if ideal == 0:
        raise ValueError("nDCG of a query without relevant documents")
    return dcg(max(grades.get(doc, 0.0), 0.0) for doc in ranked[:depth]) / ideal


@dataclass(frozen=True)
class QueryScore:
    id: str
    recall: float
    reciprocal_rank: float
    ndcg: float
    ranks: dict[str, int | None]  # relevant doc -> its document rank within DEPTH, or None


def score_results(query: EvalQuery, result_doc_ids: Sequence[str], k: int) -> QueryScore:
    """One query's metrics from its results' doc ids (documents or chunks, best first)."""
    at_k = documents_in_order(result_doc_ids[:k])
    at_depth = documents_in_order(result_doc_ids[:max(k, DEPTH)])
    shown = at_depth[:DEPTH]
    return QueryScore(id=query.id, recall=recall_at_k(at_k, query.relevant, k),
                      reciprocal_rank=reciprocal_rank(at_depth, query.relevant),
                      ndcg=ndcg(at_depth, query.grades),
                      ranks={doc: shown.index(doc) + 1 if doc in shown else None
                             for doc in sorted(query.relevant)})


@dataclass(frozen=True)
class Scores:
    recall: float
    mrr: float
    ndcg: float
    queries: int


def mean_scores(scores: Sequence[QueryScore]) -> Scores:
    n = len(scores)
    if n == 0:
        raise ValueError("no queries to average")
    return Scores(recall=sum(s.recall for s in scores) / n, mrr=sum(s.reciprocal_rank for s in scores) / n,
                  ndcg=sum(s.ndcg for s in scores) / n, queries=n)


# -- runs ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Returned:
    doc_id: str
    title: str
    score: float


@dataclass(frozen=True)
class Miss:
    id: str
    text: str
    kind: str | None
    ranks: dict[str, int | None]  # each relevant doc -> rank within DEPTH, None: not there
    returned: list[Returned]      # the first MISS_RESULTS results


@dataclass
class RunReport:
    sink: str
    group: str
    mode: str
    mode_ran: str  # a sink that cannot run the asked mode says so in warnings
    scores: Scores
    by_kind: dict[str, Scores]
    miss_count: int
    misses: list[Miss]
    per_query: list[QueryScore]
    top: dict[str, list[Returned]]  # query id -> its first MISS_RESULTS results
    ms_per_query: float
    warnings: list[str] = field(default_factory=list)


@dataclass
class EvalReport:
    name: str
    description: str
    k: int
    depth: int
    runs: list[RunReport]
    unknown_documents: dict[str, list[str]]  # sink -> relevant doc ids the sink does not hold

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def run_eval(retriever: Retriever, queries: QuerySet, sinks: Sequence[str], modes: Sequence[str],
             groups: Sequence[str], k: int, *, max_misses: int = 20) -> EvalReport:
    """Every query through every (sink, group, mode); read-only. Unknown filter fields are a
    :class:`QueryFileInvalid` before anything runs."""
    for q in queries.queries:
        try:
            parse_filter(parse_request({"text": q.text, "filter": q.filter}).filter_dict(), retriever.catalog)
        except FilterInvalid as exc:
            raise QueryFileInvalid(f"query {q.id!r}: {exc}") from None
    unknown = {sink: missing_documents(retriever, sink, {d for q in queries.queries for d in q.relevant})
               for sink in sinks}
    for sink in sinks:  # untimed: the first query loads the model's kernels and the keyword index
        retriever.search(parse_request({"text": queries.queries[0].text, "k": 1, "sink": sink}))
    runs = [_run(retriever, queries, sink, group, mode, k, max_misses)
            for sink in sinks for group in groups for mode in modes]
    return EvalReport(name=queries.name, description=queries.description, k=k, depth=DEPTH,
                      runs=runs, unknown_documents={s: d for s, d in unknown.items() if d})


def missing_documents(retriever: Retriever, sink: str, doc_ids: Iterable[str]) -> list[str]:
    """Relevant documents the sink does not hold (no chunk 0): stale labels, or a store not
    (fully) indexed. One fetch by deterministic id per ``FETCH_BATCH`` documents."""
    wanted = sorted(set(doc_ids))
    held: set[str] = set()
    for start in range(0, len(wanted), FETCH_BATCH):
        ids = [chunk_id(d, 0) for d in wanted[start:start + FETCH_BATCH]]
        held.update(retriever.sinks[sink].fetch_chunks(ids))
    return [d for d in wanted if chunk_id(d, 0) not in held]


def _run(retriever: Retriever, queries: QuerySet, sink: str, group: str, mode: str, k: int,
         max_misses: int) -> RunReport:
    scores: list[QueryScore] = []
    misses: list[Miss] = []
    top: dict[str, list[Returned]] = {}
    warnings: set[str] = set()
    modes_ran: set[str] = set()
    started = time.perf_counter()
    for q in queries.queries:
        req = parse_request({"text": q.text, "k": max(k, DEPTH), "sink": sink, "mode": mode,
                             "group": group, "filter": q.filter})
        response = retriever.search(req)
        modes_ran.add(response.mode)
        warnings.update(response.warnings)
        results = list(response.results)
        score = score_results(q, [r.doc_id for r in results], k)
        scores.append(score)
        top[q.id] = [Returned(r.doc_id, r.title, r.score) for r in results[:MISS_RESULTS]]
        if score.recall < 1.0:
            misses.append(Miss(id=q.id, text=q.text, kind=q.kind, ranks=score.ranks, returned=top[q.id]))
    elapsed_ms = (time.perf_counter() - started) * 1000
    kinds = sorted({q.kind for q in queries.queries if q.kind is not None})
    by_kind = {kind: mean_scores([s for s, q in zip(scores, queries.queries) if q.kind == kind])
               for kind in kinds}
    report = RunReport(sink=sink, group=group, mode=mode, mode_ran="/".join(sorted(modes_ran)),
                       scores=mean_scores(scores), by_kind=by_kind, miss_count=len(misses),
                       misses=misses[:max_misses], per_query=scores, top=top,
                       ms_per_query=round(elapsed_ms / len(queries.queries), 2), warnings=sorted(warnings))
    log.info("eval run done", extra={"sink": sink, "group": group, "mode": mode,
                                     "recall": round(report.scores.recall, 4), "misses": len(misses)})
    return report


# -- the text report -----------------------------------------------------------------------------

def format_report(report: EvalReport) -> str:
    k = report.k
    lines = [f"{report.name}: {report.runs[0].scores.queries if report.runs else 0} queries, "
             f"recall@{k}, MRR@{report.depth}, nDCG@{report.depth}"]
    header = (f"{'sink':<9} {'group':<9} {'mode':<8} {f'recall@{k}':>9} {'MRR@10':>7} {'nDCG@10':>8} "
              f"{'queries':>7} {'misses':>6} {'ms/query':>9}")
    lines += [header, "-" * len(header)]
    for r in report.runs:
        s = r.scores
        ran = "" if r.mode_ran == r.mode else f"  (ran as {r.mode_ran})"
        lines.append(f"{r.sink:<9} {r.group:<9} {r.mode:<8} {s.recall:>9.3f} {s.mrr:>7.3f} {s.ndcg:>8.3f} "
                     f"{s.queries:>7} {r.miss_count:>6} {r.ms_per_query:>9.1f}{ran}")
    if any(r.by_kind for r in report.runs):
        lines += ["", "by kind:", f"{'sink':<9} {'group':<9} {'mode':<8} {'kind':<18} {f'recall@{k}':>9} "
                  f"{'MRR@10':>7} {'nDCG@10':>8} {'queries':>7}"]
        for r in report.runs:
            for kind, s in r.by_kind.items():
                lines.append(f"{r.sink:<9} {r.group:<9} {r.mode:<8} {kind:<18} {s.recall:>9.3f} "
                             f"{s.mrr:>7.3f} {s.ndcg:>8.3f} {s.queries:>7}")
    for sink, docs in report.unknown_documents.items():
        lines += ["", f"warning: sink {sink} holds none of these relevant documents: {', '.join(docs)}"]
    for r in report.runs:
        for warning in r.warnings:
            lines.append(f"warning: {r.sink} {r.group} {r.mode}: {warning}")
        if not r.misses:
            continue
        more = f", first {len(r.misses)} of {r.miss_count}" if r.miss_count > len(r.misses) else ""
        lines += ["", f"misses, {r.sink} {r.group} {r.mode}{more}:"]
        for m in r.misses:
            kind = f" [{m.kind}]" if m.kind else ""
            lines.append(f"  {m.id}{kind}: {m.text}")
            for doc, rank in m.ranks.items():
                lines.append(f"    wanted {doc}: {f'rank {rank}' if rank else f'not in the top {report.depth}'}")
            for n, got in enumerate(m.returned, 1):
                lines.append(f"    {n}. {got.score:.4f}  {got.doc_id}  {got.title[:60]}")
    return "\n".join(lines)


# -- the command ---------------------------------------------------------------------------------

def cmd_eval(args: argparse.Namespace) -> int:
    """``memory-worker eval``: 0 whatever the scores (it measures), 2 on a bad query file or flags."""
    from worker.config import load_config
    from worker.documents import Binding
    from worker.runtime import build_retriever

    env = dict(os.environ)  # the CLI shell, like worker.cli
    config = load_config(Path(args.config), env)
    if not 1 <= args.k <= 100:
        print(f"error: --k {args.k}: must be 1 to 100", file=sys.stderr)
        return 2
    configured = config.sinks.names()
    sinks = list(dict.fromkeys(args.sink or configured))
    unconfigured = [s for s in sinks if s not in configured]
    if unconfigured:
        print(f"error: sink {', '.join(unconfigured)} is not configured in {args.config} "
              f"(configured: {', '.join(configured)})", file=sys.stderr)
        return 2
    try:
        queries = load_queries(Path(args.queries), {b.collection: Binding(b).source for b in config.bindings})
    except QueryFileInvalid as exc:
        print(f"error: {args.queries}: {exc}", file=sys.stderr)
        return 2
    retriever = build_retriever(config, env, sink=sinks[0] if len(sinks) == 1 else None)
    try:
        report = run_eval(retriever, queries, sinks, list(dict.fromkeys(args.mode or MODES)),
                          list(dict.fromkeys(args.group or ["document"])), args.k,
                          max_misses=max(0, args.misses))
    except QueryFileInvalid as exc:
        print(f"error: {args.queries}: {exc}", file=sys.stderr)
        return 2
    finally:
        for sink in retriever.sinks.values():
            sink.close()
    if args.json:
        print(json.dumps(report.as_json(), ensure_ascii=False, indent=2))
    else:
        print(format_report(report))
    return 0
