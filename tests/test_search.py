"""Retrieval on every sink through the real clients and the wire emulators: hybrid, keyword and
vector modes each by the store's native mechanism, typed metadata filters, document grouping,
context chunks and whole documents (worker/retrieve.py, worker/sinks/*).

One module-scoped runtime indexes the sample stream into LanceDB, Pinecone (a dotproduct index it
creates, carrying sparse vectors) and Weaviate; every test only queries it.
"""

from __future__ import annotations

import pytest

from tests.conftest import make_config, seed_cache
from tests.emulators.pinecone import PineconeEmulator
from tests.emulators.weaviate import WeaviateEmulator
from worker.contract import QueryRequest
from worker.filters import FilterInvalid
from worker.ids import document_id

SINKS = ("local", "pinecone", "weaviate")
GITHUB = "sophia-ai/github-enriched"
SLACK = "sophia-ai/slack-messages-enriched"
GONG = "sophia-ai/gong-calls-enriched"
SEV1_THREAD = document_id("slack", ("C05K1NC1D", "1795529337.151984"))
ISSUE_437 = document_id("github", ("I_kwDOKx7Ajc6437",))


@pytest.fixture(scope="module")
def world(tmp_path_factory, embedder, stream_cache):
    from tests.conftest import apply_stream
    from worker.runtime import build_runtime

    try:
        from pinecone._internal.http_client import get_budget_registry

        get_budget_registry()._reset()
    except (ImportError, AttributeError):
        pass
    root = tmp_path_factory.mktemp("search")
    with PineconeEmulator(seed=3) as pc, WeaviateEmulator(seed=3) as wv:
        cosine_host = pc.create_index("dense-only", 384, "cosine")
        sinks = {
            "local": {"path": str(root / "lancedb")},
            "pinecone": {"api_key": "test-key", "index": "memory", "controller_host": pc.control_url,
                         "timeout_s": 5.0},
            "weaviate": {"url": wv.url, "grpc_host": "127.0.0.1", "grpc_port": wv.grpc_port,
                         "collection": "MemoryChunk", "timeout_s": 5.0},
        }
        config = make_config(root, sinks=sinks)
        seed_cache(stream_cache, config.state_dir)
        rt = build_runtime(config, {}, embedder=embedder)
        assert apply_stream(rt) == 0
        dense = make_config(root / "dense", sinks={"pinecone": {
            "api_key": "test-key", "index": "dense-only", "index_host": cosine_host,
            "controller_host": pc.control_url, "timeout_s": 5.0}})
        seed_cache(stream_cache, dense.state_dir)
        dense_rt = build_runtime(dense, {}, embedder=embedder)
        assert apply_stream(dense_rt) == 0
        try:
            yield rt, dense_rt, pc
        finally:
            dense_rt.close()
            rt.close()


def search(world, sink, **kwargs):
    rt = world[0]
    return rt.retriever().search(QueryRequest(sink=sink, **kwargs))


def doc_ids(response) -> list[str]:
    return [r.doc_id for r in response.results]


def test_pinecone_index_is_created_dotproduct_and_records_carry_sparse_vectors(world):
    _, _, pc = world
    [create] = pc.requests_for("create_index")
    assert create.body["schema"]["fields"]["_values"]["metric"] == "dotproduct"
    sent = [v for r in pc.requests_for("upsert") if r.index == "memory" for v in r.body["vectors"]]
    assert sent and all(v["sparseValues"]["indices"] and len(v["sparseValues"]["indices"]) ==
                        len(v["sparseValues"]["values"]) for v in sent)
    assert {v["id"] for v in sent} == set(pc.vectors("memory"))


@pytest.mark.parametrize("sink", SINKS)
@pytest.mark.parametrize("term", ["SEV-1", "INC-8812", "HIPAA"])
def test_keyword_mode_finds_an_exact_term(world, sink, term):
    answer = search(world, sink, text=term, mode="keyword", k=3)
    assert answer.mode == "keyword" and answer.warnings == []
    assert answer.results and term in answer.results[0].chunks[0].text


@pytest.mark.parametrize("sink", SINKS)
def test_hybrid_is_the_default_and_finds_both_kinds_of_match(world, sink):
    answer = search(world, sink, text="Pinecone 413 Request Entity Too Large", k=3)
    assert answer.mode == "hybrid" and answer.group == "document"
    assert ISSUE_437 in doc_ids(answer)[:2]


@pytest.mark.parametrize("sink", SINKS)
def test_results_are_one_per_document_with_their_best_chunks(world, sink):
    answer = search(world, sink, text="Acme renewal price cap", k=4, mode="vector", chunks_per_doc=3)
    ids = doc_ids(answer)
    assert len(ids) == 4 and len(set(ids)) == 4
    for doc in answer.results:
        assert 1 <= len(doc.chunks) <= 3
        assert [c.score for c in doc.chunks] == sorted((c.score for c in doc.chunks), reverse=True)
        assert doc.score == doc.chunks[0].score
    chunks = search(world, sink, text="Acme renewal price cap", k=8, mode="vector", group="chunk")
    assert len(chunks.results) == 8
    assert len({c.doc_id for c in chunks.results}) < 8  # the long calls fill several chunk slots


@pytest.mark.parametrize("sink", SINKS)
@pytest.mark.parametrize(("flt", "check"), [
    ({"labels": "sink:pinecone"}, lambda d: "sink:pinecone" in d.metadata["labels"]),
    ({"labels": {"$in": ["flaky-test", "deploy"]}}, lambda d: {"flaky-test", "deploy"} & set(d.metadata["labels"])),
    ({"number": {"$gte": 440, "$lt": 446}}, lambda d: 440 <= d.metadata["number"] < 446),
    ({"state": "closed"}, lambda d: d.metadata["state"] == "closed"),
    ({"kind": {"$in": ["pull_request"]}}, lambda d: d.metadata["kind"] == "pull_request"),
])
def test_metadata_filters_hold_for_every_result(world, sink, flt, check):
    answer = search(world, sink, text="search and sinks", k=20, filter=flt)
    assert answer.results, flt
    assert all(check(d) for d in answer.results), [(d.doc_id, d.metadata) for d in answer.results]
    local = search(world, "local", text="search and sinks", k=20, filter=flt, mode="vector")
    this = search(world, sink, text="search and sinks", k=20, filter=flt, mode="vector")
    assert set(doc_ids(this)) == set(doc_ids(local))  # the same documents pass in every store


@pytest.mark.parametrize("sink", SINKS)
def test_boolean_time_and_number_filters(world, sink):
    replies = search(world, sink, text="incident", k=20, filter={"collection": SLACK, "is_reply": True})
    assert replies.results and all(d.metadata["is_reply"] is True for d in replies.results)
    after = search(world, sink, text="renewal", k=20,
                   filter={"collection": GONG, "started_at": {"$gte": "2026-11-22T00:00:00Z"}})
    assert after.results and all(d.metadata["started_at"] >= "2026-11-22T00:00:00Z" for d in after.results)
    long_calls = search(world, sink, text="renewal", k=20, filter={"duration_s": {"$gt": 3000}})
    assert long_calls.results and all(d.metadata["duration_s"] > 3000 for d in long_calls.results)


def test_an_unknown_filter_field_is_refused_by_name(world):
    with pytest.raises(FilterInvalid) as err:
        search(world, "local", text="x", filter={"acount_name": "Acme"})
    assert err.value.field == "filter.acount_name" and "account_name" in str(err.value)


@pytest.mark.parametrize("sink", SINKS)
def test_context_returns_the_best_chunk_and_its_neighbours_in_order(world, sink):
    answer = search(world, sink, text="Acme renewal price cap", k=2, mode="vector", context=1)
    for doc in answer.results:
        best = doc.chunks[0].chunk_index
        wanted = [i for i in (best - 1, best, best + 1) if 0 <= i < doc.chunk_count]
        assert [c.chunk_index for c in doc.context] == wanted
        assert doc.context[wanted.index(best)].text == doc.chunks[0].text


@pytest.mark.parametrize("sink", SINKS)
def test_get_document_returns_every_chunk_in_order(world, sink):
    rt = world[0]
    call = document_id("gong", ("7782342274025937895",))
    view = rt.retriever().get_document(call, sink)
    assert view is not None and view.collection == GONG and view.metadata["account_name"] == "Acme Corp"
    assert [c.chunk_index for c in view.chunks] == list(range(len(view.chunks)))
    local_rows = [r for r in rt.sinks["local"].rows() if r["doc_id"] == call]
    assert len(view.chunks) == len(local_rows) == local_rows[0]["chunk_count"]
    assert rt.retriever().get_document("gong:nope", sink) is None


def test_a_cosine_pinecone_index_answers_hybrid_as_vector_and_says_so(world):
    _, dense_rt, _ = world
    answer = dense_rt.retriever().search(QueryRequest(text="SEV-1 incident", k=3))
    assert answer.mode == "vector" and answer.results
    [warning] = answer.warnings
    assert "cosine" in warning and "hybrid" in warning
    [info_warning] = dense_rt.sinks["pinecone"].info().warnings
    assert "dotproduct" in info_warning
