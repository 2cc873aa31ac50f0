"""Local store at scale: query latency and recall of the embedded LanceDB sink, flat vs ANN.

    .venv/bin/python bench/local_query.py --rows 100000 1000000 [--queries 200] [--dims 384]

For each row count, in a temporary folder:

- **Data.** Synthetic normalized vectors with cluster structure: a two-level Gaussian mixture
  (``--centers`` topics with Zipf-like sizes, ``--subclusters`` sub-topics each), so that near
  neighbours exist and an IVF index has something to find; uniformly random high-dimensional
  vectors would be an unrealistic worst case. Metadata: ``source`` (slack 60 %, gong 30 %,
  github 10 %), ``labels`` (a ``string[]`` field: ``bug`` 25 %, ``docs`` 20 %, ``security``
  1 %) and ``published_at`` (uniform over two years), all independent of the vectors: the hard
  case for an IVF index, since a filter's nearest rows are spread over every partition.
- **Load.** Rows go in batches of 100k straight into the sink's table with ``table.add``, in the
  sink's own Arrow schema (``sink.upsert``'s ``merge_insert`` joins on ``id`` and would dominate
  the run at 1M rows; the rows are the same). ``maintain()`` then builds the full-text index.
- **Queries.** Dataset vectors plus noise (``--query-noise``), so near neighbours exist.
  ``LocalSink.search``, mode vector, k=10, one query at a time, ``--warmup`` queries untimed.
- **Truth.** Exact cosine top 10 per query and filter by numpy over the same vectors and
  metadata ("flat" in the recall column). Flat search through the sink (no ANN index) is timed
  on the first ``--flat-queries`` queries only (seconds each at 1M rows), and its answers are
  checked against the numpy truth.
- **ANN.** The sink is reopened with ``ann_min_rows`` at the row count and ``maintain()`` builds
  the index (timed). Every ``--nprobes`` × ``--refine`` setting runs all queries; recall@10 is
  the share of the true top 10 that comes back (of the true answer's size when a filter matches
  fewer rows). Then scalar indices are built on the filter columns (BITMAP ``source``,
  LABEL_LIST ``labels``, BTREE ``published_at``; by the bench, on the table: the sink does not
  build them) and the same settings run again, since without them every prefilter scans its
  columns over the whole table.

Filters matching at most ``ann_exact_max_rows`` rows take the sink's exact path (the "path"
column). Prints one markdown table (``--json`` writes the raw numbers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from worker.fields import FieldSpec  # noqa: E402
from worker.records import Condition, QueryFilter, SinkQuery  # noqa: E402
from worker.sinks.local import LocalSink, LocalSinkConfig  # noqa: E402

K = 10
BATCH_ROWS = 100_000
T0 = 1_700_000_000.0
YEAR_S = 365 * 86400.0
SOURCES = ("slack", "gong", "github")
LABELS = ("bug", "docs", "security")
LABEL_SHARE = np.array([0.25, 0.2, 0.01])
FIELDS = {"labels": FieldSpec("labels", "string[]")}


@dataclass(frozen=True, slots=True)
class Rows:
    """Vectors and the metadata the filters look at, in table order."""

    vectors: np.ndarray  # (n, dims) float32, normalized
    source: np.ndarray  # (n,) index into SOURCES
    labels: np.ndarray  # (n, len(LABELS)) bool
    published_at: np.ndarray  # (n,) unix seconds


SECURITY = Condition("labels", "string[]", "eq", "security")
#: name → (filter, the same filter over Rows)
FILTERS: dict[str, tuple[QueryFilter, Callable[[Rows], np.ndarray]]] = {
    "none": (QueryFilter(), lambda r: np.ones(len(r.source), bool)),
    "broad: published_at ≥ t0+1y (50 %)": (QueryFilter(published_after=T0 + YEAR_S),
                                           lambda r: r.published_at >= T0 + YEAR_S),
    "selective: source = github (10 %)": (QueryFilter(source="github"), lambda r: r.source == 2),
    "narrow: labels ∋ security (1 %)": (QueryFilter(where=(SECURITY,)), lambda r: r.labels[:, 2]),
    "very narrow: security ∧ github (0.1 %)": (QueryFilter(source="github", where=(SECURITY,)),
                                              lambda r: r.labels[:, 2] & (r.source == 2)),
}


@dataclass(frozen=True, slots=True)
class Mixture:
    """The two-level Gaussian mixture the vectors are drawn from."""

    subtopics: np.ndarray  # (centers * subclusters, dims)
    weights: np.ndarray  # topic probabilities
    subclusters: int
    point_spread: float


def mixture(dims: int, centers: int, subclusters: int, seed: int) -> Mixture:
    rng = np.random.default_rng(seed)
    topics = unit(rng.standard_normal((centers, dims)))
    # sub-topics around their topic (cos ≈ 0.75), points around their sub-topic (cos ≈ 0.9)
    noise = rng.standard_normal((centers, subclusters, dims)) * (0.9 / np.sqrt(dims))
    subtopics = unit((topics[:, None, :] + noise).reshape(-1, dims))
    weights = 1.0 / np.arange(1, centers + 1) ** 0.5
    return Mixture(subtopics, weights / weights.sum(), subclusters, 0.5)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def draw(mix: Mixture, n: int, rng: np.random.Generator) -> Rows:
    dims = mix.subtopics.shape[1]
    topic = rng.choice(len(mix.weights), size=n, p=mix.weights)
    sub = topic * mix.subclusters + rng.integers(0, mix.subclusters, size=n)
    noise = rng.standard_normal((n, dims), dtype=np.float32) * np.float32(mix.point_spread / np.sqrt(dims))
    return Rows(unit(mix.subtopics[sub] + noise),
                np.searchsorted(np.array([0.6, 0.9]), rng.random(n), side="right"),
                rng.random((n, len(LABELS))) < LABEL_SHARE, T0 + rng.random(n) * 2 * YEAR_S)


def arrow_rows(schema: pa.Schema, start: int, rows: Rows) -> pa.Table:
    """Rows in the sink's schema; ids ``bench:doc-<i/10>#<i%10>``."""
    n, dims = rows.vectors.shape
    idx = np.arange(start, start + n)
    doc = [f"bench:doc-{i // 10}" for i in idx]
    labels = [[LABELS[j] for j in np.flatnonzero(flags)] for flags in rows.labels]
    columns: dict[str, pa.Array] = {
        "id": pa.array([f"{d}#{i % 10}" for d, i in zip(doc, idx)]),
        "uuid": pa.array([f"u{i}" for i in idx]),
        "doc_id": pa.array(doc),
        "source": pa.array([SOURCES[s] for s in rows.source]),
        "collection": pa.array(["bench/docs"] * n),
        "content_hash": pa.array([f"{i:016x}" for i in idx]),
        "text_hash": pa.array(["t"] * n), "meta_hash": pa.array(["m"] * n),
        "version": pa.array([f"{1:020d}"] * n), "title": pa.array(["Bench"] * n),
        "url": pa.array([""] * n),
        "text": pa.array([f"chunk {i % 10} of document {i // 10}" for i in idx]),
        "chunk_index": pa.array(idx % 10, pa.int32()),
        "chunk_count": pa.array(np.full(n, 10), pa.int32()),
        "published_at": pa.array(rows.published_at),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(rows.vectors.reshape(-1)), dims),
        "labels": pa.array(labels, pa.list_(pa.string())),
    }
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def row_id(i: int) -> str:
    return f"bench:doc-{i // 10}#{i % 10}"


def open_sink(path: Path, dims: int, cfg: LocalSinkConfig) -> LocalSink:
    sink = LocalSink(path, cfg.table, ann=cfg)
    sink.declare_fields(FIELDS)
    sink.ensure(dims, "cosine")
    return sink


@dataclass(slots=True)
class Run:
    rows: int
    method: str
    filter: str
    matched: int
    path: str  # "flat", "index" or "exact"
    p50_ms: float
    p95_ms: float
    recall_at_10: float
    short_answers: int  # queries answered with fewer results than the truth has


def measure(sink: LocalSink, warm: np.ndarray, queries: np.ndarray,
            where: QueryFilter) -> tuple[list[float], list[list[str]]]:
    """Latency (ms) and result ids of each query, one at a time, after ``warm`` untimed ones."""
    for q in warm:
        sink.search(SinkQuery(k=K, where=where, vector=q))
    times, answers = [], []
    for q in queries:
        started = time.perf_counter()
        hits = sink.search(SinkQuery(k=K, where=where, vector=q)).hits
        times.append((time.perf_counter() - started) * 1000)
        answers.append([h.id for h in hits])
    return times, answers


def exact_top(vectors: np.ndarray, queries: np.ndarray, mask: np.ndarray) -> list[list[str]]:
    """The true cosine top K per query among the rows ``mask`` keeps."""
    keep = np.flatnonzero(mask)
    out: list[list[str]] = []
    for start in range(0, len(queries), 50):
        scores = queries[start:start + 50] @ vectors[keep].T
        k = min(K, len(keep))
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k else np.empty((len(scores), 0), int)
        for row, cand in zip(scores, part):
            out.append([row_id(int(keep[c])) for c in cand[np.argsort(-row[cand], kind="stable")]])
    return out


def recall(got: list[list[str]], truth: list[list[str]]) -> tuple[float, int]:
    found = sum(len(set(a) & set(t)) for a, t in zip(got, truth))
    wanted = sum(len(t) for t in truth)
    return (found / wanted if wanted else 1.0), sum(len(a) < len(t) for a, t in zip(got, truth))


def pct(times: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(times), p))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def create_scalar_indices(sink: LocalSink) -> None:
    table = sink._tbl()
    table.create_scalar_index("source", index_type="BITMAP", replace=True)
    table.create_scalar_index("labels", index_type="LABEL_LIST", replace=True)
    table.create_scalar_index("published_at", index_type="BTREE", replace=True)


def bench_rows(rows: int, args: argparse.Namespace, root: Path) -> tuple[list[Run], dict[str, float]]:
    path = root / f"rows-{rows}"
    rng = np.random.default_rng(args.seed)
    mix = mixture(args.dims, args.centers, args.subclusters, args.seed)
    sink = open_sink(path, args.dims, LocalSinkConfig(path=path, ann_min_rows=max(1000, rows * 10)))
    started = time.perf_counter()
    table = sink._tbl()  # the bench loads in bulk; see the module docstring
    parts = []
    for start in range(0, rows, BATCH_ROWS):
        part = draw(mix, min(BATCH_ROWS, rows - start), rng)
        table.add(arrow_rows(table.schema, start, part))
        parts.append(part)
    data = Rows(*(np.concatenate([getattr(p, f) for p in parts])
                  for f in ("vectors", "source", "labels", "published_at")))
    del parts
    builds = {"load_s": time.perf_counter() - started}
    started = time.perf_counter()
    sink.maintain()  # below ann_min_rows: the full-text index only
    builds["fts_s"] = time.perf_counter() - started
    assert not sink.index_state()["ann"]
    picks = rng.choice(rows, size=args.queries + args.warmup, replace=False)
    noise = rng.standard_normal((len(picks), args.dims), dtype=np.float32)
    all_queries = unit(data.vectors[picks] + noise * np.float32(args.query_noise / np.sqrt(args.dims)))
    warm, queries = all_queries[:args.warmup], all_queries[args.warmup:]
    masks = {name: keep(data) for name, (_, keep) in FILTERS.items()}
    started = time.perf_counter()
    truth = {name: exact_top(data.vectors, queries, mask) for name, mask in masks.items()}
    log(f"[{rows:,}] loaded in {builds['load_s']:.0f} s, FTS {builds['fts_s']:.0f} s, "
        f"truth {time.perf_counter() - started:.0f} s")

    runs: list[Run] = []
    flat_n = min(args.flat_queries, len(queries))
    for name, (where, _) in FILTERS.items() if flat_n else ():
        times, answers = measure(sink, warm[:2], queries[:flat_n], where)
        r, short = recall(answers, truth[name][:flat_n])
        runs.append(Run(rows, "flat (no index)", name, int(masks[name].sum()), "flat",
                        pct(times, 50), pct(times, 95), r, short))
        log(f"[{rows:,}] {runs[-1]}")
    sink.close()

    exact_max = LocalSinkConfig().ann_exact_max_rows
    for index in args.indexes:
        cfg = LocalSinkConfig(path=path, ann_min_rows=max(1000, rows), ann_index=index)
        sink = open_sink(path, args.dims, cfg)
        started = time.perf_counter()
        sink.maintain()
        builds[index] = time.perf_counter() - started
        state = sink.index_state()
        assert state["ann"] and state["ann_index"] == index, state
        log(f"[{rows:,}] {index} built in {builds[index]:.0f} s")
        for scalar in (False, True):
            if scalar:
                started = time.perf_counter()
                create_scalar_indices(sink)
                builds["scalar_s"] = time.perf_counter() - started
            for nprobes in args.nprobes:
                for refine in args.refine:
                    tuned = cfg.model_copy(update={"ann_nprobes": nprobes,
                                                   "ann_refine_factor": refine or None})
                    sink = open_sink(path, args.dims, tuned)
                    method = (f"{index} nprobes={nprobes} refine={refine or '-'}"
                              + (" + scalar indices" if scalar else ""))
                    for name, (where, _) in FILTERS.items():
                        times, answers = measure(sink, warm, queries, where)
                        matched = int(masks[name].sum())
                        path_used = "exact" if name != "none" and matched <= exact_max else "index"
                        r, short = recall(answers, truth[name])
                        runs.append(Run(rows, method, name, matched, path_used, pct(times, 50),
                                        pct(times, 95), r, short))
                        log(f"[{rows:,}] {runs[-1]}")
        # (each reopened sink shares the table; nothing to close but the last)
        sink.close()
    shutil.rmtree(path, ignore_errors=True)
    return runs, builds


def markdown(runs: list[Run], builds: dict[int, dict[str, float]]) -> str:
    lines = ["| rows | search | filter | rows matched | path | p50 ms | p95 ms | recall@10 vs flat "
             "| short answers |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.rows:,} | {r.method} | {r.filter} | {r.matched:,} | {r.path} | "
                     f"{r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.recall_at_10:.3f} | {r.short_answers} |")
    names = sorted({k for b in builds.values() for k in b if k not in ("load_s", "fts_s", "scalar_s")})
    lines += ["", "| rows | load (table.add) s | FTS build s | "
              + " | ".join(f"{n} build s" for n in names) + " | scalar indices s |",
              "|---" * (4 + len(names)) + "|"]
    for rows, b in builds.items():
        ann = [f"{b[n]:.0f}" if n in b else "—" for n in names]
        lines.append(f"| {rows:,} | {b['load_s']:.0f} | {b['fts_s']:.0f} | " + " | ".join(ann)
                     + f" | {b.get('scalar_s', 0):.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--flat-queries", type=int, default=10,
                    help="queries timed for flat search (no index), seconds each at 1M rows")
    ap.add_argument("--dims", type=int, default=384)
    ap.add_argument("--centers", type=int, default=300)
    ap.add_argument("--subclusters", type=int, default=30)
    ap.add_argument("--query-noise", type=float, default=0.3,
                    help="norm of the noise added to a dataset vector to make a query")
    default = LocalSinkConfig()
    ap.add_argument("--indexes", nargs="+", default=[default.ann_index],
                    choices=["IVF_HNSW_SQ", "IVF_PQ", "IVF_SQ", "IVF_FLAT"])
    ap.add_argument("--nprobes", type=int, nargs="+", default=[default.ann_nprobes])
    ap.add_argument("--refine", type=int, nargs="+", default=[default.ann_refine_factor or 0],
                    help="refine_factor values (0 = none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    runs: list[Run] = []
    builds: dict[int, dict[str, float]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        for rows in args.rows:
            got, builds[rows] = bench_rows(rows, args, Path(tmp))
            runs += got
    print(markdown(runs, builds))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"runs": [asdict(r) for r in runs], "builds": builds}, indent=1))


if __name__ == "__main__":
    main()
