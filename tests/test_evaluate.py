"""``memory-worker eval`` (worker/evaluate.py): the metrics against hand-computed values, the query
file's three shapes, and one run on the sample stream indexed through the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math

import pytest

from conftest import COLLECTIONS, REPO, load_stream, seed_cache
from worker.cli import main
from worker.config import BindingConfig
from worker.documents import Binding
from worker.evaluate import (EvalQuery, QueryFileInvalid, documents_in_order, load_queries, mean_scores,
                             ndcg, parse_queries, reciprocal_rank, recall_at_k, run_eval, score_results)

PRESETS = {"sophia-ai/gong-calls-enriched": "gong_call",
           "sophia-ai/slack-messages-enriched": "slack_message",
           "sophia-ai/github-enriched": "github_document"}
SOURCES = {c: Binding(BindingConfig(collection=c, preset=p)).source for c, p in PRESETS.items()}
SAMPLE_QUERIES = REPO / "examples" / "queries.json"
CONFIG = """\
model: all-minilm-l6-v2
models_dir: {models}
state_dir: {root}/state
bindings:
  - collection: sophia-ai/gong-calls-enriched
    preset: gong_call
  - collection: sophia-ai/slack-messages-enriched
    preset: slack_message
  - collection: sophia-ai/github-enriched
    preset: github_document
embedding:
  device: cpu
  backend: torch
  max_wait_ms: 5
server:
  webhook_token: hook-secret
  query_token: query-secret
sinks:
  local:
    path: {root}/lancedb
"""


def cli(*argv: str) -> tuple[int, str, str]:
    """Run ``memory-worker <argv>`` in this process; returns (exit code, stdout, stderr)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(argv))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return rc, out.getvalue(), err.getvalue()


def query(grades: dict[str, float], qid: str = "q") -> EvalQuery:
    return EvalQuery(id=qid, text="t", grades=grades)


# -- metrics -------------------------------------------------------------------------------------

def test_recall_counts_relevant_documents_within_k():
    ranked = ["a", "b", "c", "d"]
    assert recall_at_k(ranked, {"b", "d"}, 3) == 0.5
    assert recall_at_k(ranked, {"b", "d"}, 4) == 1.0
    assert recall_at_k(ranked, {"x"}, 4) == 0.0
    with pytest.raises(ValueError):
        recall_at_k(ranked, set(), 3)


def test_reciprocal_rank_is_of_the_first_relevant_document_within_ten():
    ranked = [f"d{i}" for i in range(1, 13)]
    assert reciprocal_rank(ranked, {"d3", "d5"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(ranked, {"d1"}) == 1.0
    assert reciprocal_rank(ranked, {"d10"}) == pytest.approx(0.1)
    assert reciprocal_rank(ranked, {"d11"}) == 0.0  # rank 11 is past the depth
    assert reciprocal_rank(ranked, {"zz"}) == 0.0


def test_ndcg_uses_linear_gain_and_a_log2_discount():
    # DCG = 1/log2(2) + 3/log2(4) = 2.5; IDCG = 3/log2(2) + 1/log2(3) = 3.6309...
    assert ndcg(["b", "x", "a"], {"a": 3, "b": 1}) == pytest.approx(2.5 / (3 + 1 / math.log2(3)))
    assert ndcg(["x", "a"], {"a": 1}) == pytest.approx(1 / math.log2(3))
    assert ndcg(["a", "b"], {"a": 2, "b": 1}) == pytest.approx(1.0)
    assert ndcg(["x"] * 10 + ["a"], {"a": 1}) == 0.0  # rank 11
    assert ndcg(["a"], {"a": 1, "z": 0}) == 1.0        # a grade 0 adds nothing to the ideal


def test_chunk_results_count_each_document_once_at_its_first_rank():
    assert documents_in_order(["a", "a", "b", "a", "c"]) == ["a", "b", "c"]
    chunks = ["a", "a", "b", "a", "c"]
    within_3 = score_results(query({"b": 1}), chunks, k=3)
    assert within_3.recall == 1.0
    assert within_3.reciprocal_rank == 0.5  # b is the second *document*
    assert within_3.ranks == {"b": 2}
    within_2 = score_results(query({"b": 1}), chunks, k=2)  # the first 2 chunks are both a
    assert within_2.recall == 0.0 and within_2.reciprocal_rank == 0.5
    assert score_results(query({"c": 1}), chunks, k=3).ranks == {"c": 3}
    assert score_results(query({"z": 1}), chunks, k=3).ranks == {"z": None}


def test_scores_are_means_over_queries():
    scores = [score_results(query({"a": 1}), ["a"], 3), score_results(query({"a": 1}), ["x", "y", "a"], 3),
              score_results(query({"a": 1}), ["x"], 3)]
    mean = mean_scores(scores)
    assert mean.queries == 3
    assert mean.recall == pytest.approx(2 / 3)
    assert mean.mrr == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert mean.ndcg == pytest.approx((1 + 1 / math.log2(4) + 0) / 3)


# -- the query file ------------------------------------------------------------------------------

def test_the_documented_shape_with_list_and_graded_relevance():
    qs = parse_queries({"name": "set", "description": "d", "queries": [
        {"id": "q1", "text": "one", "relevant": ["gong:1", "gong:2"], "kind": "paraphrase"},
        {"id": "q2", "text": "two", "relevant": {"github:A": 2, "github:B": 1, "github:C": 0},
         "filter": {"source": "github"}, "note": "graded"},
    ]}, SOURCES)
    assert qs.name == "set" and qs.description == "d"
    q1, q2 = qs.queries
    assert q1.grades == {"gong:1": 1.0, "gong:2": 1.0} and q1.kind == "paraphrase"
    assert q2.grades == {"github:A": 2.0, "github:B": 1.0, "github:C": 0.0}
    assert q2.relevant == {"github:A", "github:B"}
    assert q2.filter == {"source": "github"} and q2.note == "graded"


def test_a_bare_list_of_queries_is_a_query_file():
    qs = parse_queries([{"id": "x", "text": "hello", "relevant": ["slack:C1/1.0"]}], SOURCES,
                       default_name="bare")
    assert qs.name == "bare" and [q.id for q in qs.queries] == ["x"]


def live_documents() -> set[str]:
    """Doc ids of the sample stream's live documents: the newest version of each key, not a delete."""
    newest = {}
    for collection in COLLECTIONS:
        binding = Binding(BindingConfig(collection=collection, preset=PRESETS[collection]))
        for raw in load_stream(collection):
            doc = binding.parse(raw)
            if doc.doc_id not in newest or doc.version > newest[doc.doc_id].version:
                newest[doc.doc_id] = doc
    return {d for d, doc in newest.items() if not doc.is_delete}


def test_the_legacy_sample_file_maps_every_query_to_a_live_document_of_the_stream():
    raw = json.loads(SAMPLE_QUERIES.read_text(encoding="utf-8"))
    qs = load_queries(SAMPLE_QUERIES, SOURCES)
    assert len(qs.queries) == len(raw) >= 12
    assert [q.text for q in qs.queries] == [r["query"] for r in raw]
    assert len({q.id for q in qs.queries}) == len(qs.queries)
    live = live_documents()
    for q in qs.queries:
        assert len(q.relevant) == 1 and q.relevant <= live, (q.id, q.relevant)
    # the collection prefix of each doc id is the binding's source, not the collection name
    assert {next(iter(q.relevant)).split(":")[0] for q in qs.queries} == {"gong", "slack", "github"}


@pytest.mark.parametrize("entry, words", [
    ({"query": "q", "collection": "acme/unknown", "key": ["1"]}, ["'q1'", "acme/unknown"]),
    ({"id": "lost", "text": "q"}, ["'lost'", "relevant"]),
    ({"id": "empty", "text": "q", "relevant": []}, ["'empty'", "no relevant"]),
    ({"id": "zero", "text": "q", "relevant": {"gong:1": 0}}, ["'zero'", "no relevant"]),
    ({"id": "neg", "text": "q", "relevant": {"gong:1": -1}}, ["'neg'", ">= 0"]),
    ({"id": "typo", "text": "q", "relevant": ["gong:1"], "kinds": "x"}, ["'typo'", "kinds"]),
    ({"id": "blank", "text": "", "relevant": ["gong:1"]}, ["'blank'", "text"]),
    ({"id": "badf", "text": "q", "relevant": ["gong:1"], "filter": {"source": {"$near": 1}}}, ["'badf'", "$near"]),
])
def test_a_bad_query_is_refused_by_name(entry, words):
    with pytest.raises(QueryFileInvalid) as err:
        parse_queries({"queries": [entry]}, SOURCES)
    for word in words:
        assert word in str(err.value)


def test_a_bad_file_is_refused(tmp_path):
    with pytest.raises(QueryFileInvalid, match="twice"):
        parse_queries([{"id": "a", "text": "x", "relevant": ["d"]}] * 2, SOURCES)
    with pytest.raises(QueryFileInvalid, match="no queries"):
        parse_queries({"queries": []}, SOURCES)
    with pytest.raises(QueryFileInvalid, match="querys"):
        parse_queries({"querys": []}, SOURCES)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(QueryFileInvalid, match="cannot read"):
        load_queries(bad, SOURCES)


# -- end to end on the sample stream -------------------------------------------------------------

@pytest.fixture(scope="module")
def indexed(tmp_path_factory, stream_cache):
    """A config file and a local store holding the sample stream, loaded through ``reindex``."""
    root = tmp_path_factory.mktemp("eval")
    config = root / "worker.yaml"
    config.write_text(CONFIG.format(models=REPO / "models", root=root))
    seed_cache(stream_cache, root / "state")
    for collection, path in COLLECTIONS.items():
        rc, _, err = cli("reindex", "--config", str(config), "--collection", collection, str(path))
        assert rc == 0, err
    return root, config


@pytest.fixture(scope="module")
def sample_report(indexed):
    _, config = indexed
    rc, out, err = cli("eval", "--config", str(config), "--queries", str(SAMPLE_QUERIES),
                       "--group", "document", "--group", "chunk", "--json")
    assert rc == 0, err
    return json.loads(out)


def test_eval_reports_every_mode_and_group_of_the_sink(sample_report):
    report = sample_report
    assert report["k"] == 3 and report["depth"] == 10 and report["unknown_documents"] == {}
    runs = {(r["sink"], r["group"], r["mode"]): r for r in report["runs"]}
    assert set(runs) == {("local", g, m) for g in ("document", "chunk") for m in ("vector", "keyword", "hybrid")}
    for run in runs.values():
        assert run["mode_ran"] == run["mode"]
        scores = run["scores"]
        assert scores["queries"] == len(run["per_query"]) == 17
        for name in ("recall", "mrr", "ndcg"):
            assert 0.0 <= scores[name] <= 1.0
        # the mean is over the per-query scores, and a miss is a query with recall < 1
        assert scores["recall"] == pytest.approx(sum(q["recall"] for q in run["per_query"]) / 17)
        assert run["miss_count"] == sum(q["recall"] < 1 for q in run["per_query"]) == len(run["misses"])
        assert set(run["top"]) == {q["id"] for q in run["per_query"]}
        assert all(len(top) == 3 for top in run["top"].values())
        for miss in run["misses"]:
            assert 1 <= len(miss["returned"]) <= 3
            assert set(miss["returned"][0]) == {"doc_id", "title", "score"}
            assert all(rank is None or rank > 3 for rank in miss["ranks"].values())


def test_hybrid_document_recall_on_the_sample_queries(sample_report):
    runs = {(r["group"], r["mode"]): r["scores"] for r in sample_report["runs"]}
    assert runs["document", "hybrid"]["recall"] >= 0.9
    assert runs["document", "hybrid"]["recall"] >= runs["document", "vector"]["recall"]


def test_text_report_lists_the_table_and_the_misses(indexed, tmp_path):
    _, config = indexed
    # a query whose document the filter excludes: a sure miss, with what came back instead
    queries = tmp_path / "q.json"
    queries.write_text(json.dumps({"name": "filtered", "queries": [
        {"id": "fenced", "text": "Acme countersigns the order form by Dec 15 for 12% off list", "kind": "filtered",
         "relevant": ["slack:C024BE91L/1795191606.823731"], "filter": {"source": "github"}},
        {"id": "open", "text": "Acme countersigns the order form by Dec 15 for 12% off list", "kind": "open",
         "relevant": ["slack:C024BE91L/1795191606.823731"]}]}))
    rc, out, err = cli("eval", "--config", str(config), "--queries", str(queries), "--mode", "keyword")
    assert rc == 0, err
    lines = out.splitlines()
    row = next(line for line in lines if line.startswith("local"))
    assert row.split()[:4] == ["local", "document", "keyword", "0.500"]
    assert any(line.split()[3:5] == ["filtered", "0.000"] for line in lines if line.startswith("local"))
    assert "misses, local document keyword:" in out and "fenced [filtered]" in out
    returned = [line.split()[2] for line in lines if line.strip()[:2] in ("1.", "2.", "3.")]
    assert returned and all(doc.startswith("github:") for doc in returned)


def test_bad_query_files_exit_2(indexed, tmp_path):
    _, config = indexed
    unknown_field = tmp_path / "f.json"
    unknown_field.write_text(json.dumps([{"id": "qf", "text": "x", "relevant": ["gong:1"],
                                          "filter": {"no_such_field": 1}}]))
    missing = tmp_path / "m.json"
    missing.write_text(json.dumps([{"id": "qm", "text": "x"}]))
    rc, _, err = cli("eval", "--config", str(config), "--queries", str(missing))
    assert rc == 2 and "'qm'" in err and "relevant" in err
    rc, _, err = cli("eval", "--config", str(config), "--queries", str(unknown_field), "--mode", "keyword")
    assert rc == 2 and "'qf'" in err and "no_such_field" in err
    rc, _, err = cli("eval", "--config", str(config), "--queries", str(tmp_path / "absent.json"))
    assert rc == 2 and "absent.json" in err


def test_run_eval_warns_of_relevant_documents_the_sink_lacks(indexed, embedder):
    from worker.config import load_config
    from worker.runtime import build_retriever

    _, config = indexed
    retriever = build_retriever(load_config(config, {}), {}, embedder=embedder)
    qs = parse_queries([{"id": "ghost", "text": "Acme discount", "relevant": ["slack:NOPE/1.0"]}], SOURCES)
    try:
        report = run_eval(retriever, qs, ["local"], ["keyword"], ["document"], 3)
    finally:
        for sink in retriever.sinks.values():
            sink.close()
    assert report.unknown_documents == {"local": ["slack:NOPE/1.0"]}
    assert report.runs[0].scores.recall == 0.0 and report.runs[0].miss_count == 1
