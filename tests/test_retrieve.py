"""Document grouping and over-fetch (worker/retrieve.py) on a real LanceDB store, with a fixed
query vector so the ranking is known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import flow_uuid
from worker.contract import QueryRequest
from worker.fields import FieldCatalog
from worker.records import Chunk, ChunkedDocument, FlowDocument
from worker.retrieve import Retriever
from worker.sinks.base import build_records
from worker.sinks.local import LocalSink

DIM = 16
QUERY = np.eye(DIM, dtype=np.float32)[0]


def near(cos: float, seed: int) -> np.ndarray:
    """A unit vector at cosine ``cos`` from QUERY."""
    rest = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    rest[0] = 0.0
    rest /= np.linalg.norm(rest)
    v = cos * QUERY + np.sqrt(1 - cos * cos) * rest
    return (v / np.linalg.norm(v)).astype(np.float32)


def document(doc_id: str, n: int) -> ChunkedDocument:
    doc = FlowDocument(collection="c", source="gong", key=(doc_id,), doc_id=doc_id, op="u",
                       uuid=flow_uuid(1.8e9), version=1, published_at=1.8e9, title=f"title {doc_id}")
    chunks = tuple(Chunk(doc_id, i, f"{doc_id} part {i}", (101, 7 + i, 102), f"h-{doc_id}-{i}")
                   for i in range(n))
    return ChunkedDocument(doc, chunks, f"t-{doc_id}", "m")


@pytest.fixture
def retriever(tmp_path):
    sink = LocalSink(tmp_path / "lancedb")
    sink.ensure(DIM, "cosine")
    # One long document whose 300 chunks all beat every other document's best chunk.
    long_doc = document("gong:long", 300)
    sink.upsert(build_records(long_doc, np.stack([near(0.95 - i * 1e-4, i) for i in range(300)])))
    for j, cos in enumerate((0.80, 0.70, 0.60)):
        short = document(f"gong:short-{j}", 3)
        sink.upsert(build_records(short, np.stack([near(cos - i * 0.01, 1000 + 10 * j + i)
                                                   for i in range(3)])))
    r = Retriever(embed_query=lambda text: QUERY, sinks={"local": sink},
                  catalog=FieldCatalog({"c": {}}), sources={"c": "gong"})
    yield r
    sink.close()


def test_one_long_document_cannot_crowd_out_the_others(retriever):
    answer = retriever.search(QueryRequest(text="q", k=3, mode="vector"))
    assert [d.doc_id for d in answer.results] == ["gong:long", "gong:short-0", "gong:short-1"]
    assert [round(d.score, 2) for d in answer.results] == [0.95, 0.80, 0.70]
    assert [c.chunk_index for c in answer.results[0].chunks] == [0, 1]  # chunks_per_doc = 2
    chunks = retriever.search(QueryRequest(text="q", k=3, mode="vector", group="chunk"))
    assert {c.doc_id for c in chunks.results} == {"gong:long"}  # what grouping prevents


def test_fewer_documents_than_k_come_back_when_the_store_has_no_more(retriever):
    answer = retriever.search(QueryRequest(text="q", k=10, mode="vector", chunks_per_doc=3))
    assert len(answer.results) == 4
    assert [len(d.chunks) for d in answer.results] == [3, 3, 3, 3]


def test_context_of_the_last_chunk_stays_inside_the_document(retriever):
    answer = retriever.search(QueryRequest(text="q", k=4, mode="vector", context=2))
    short = answer.results[1]
    assert short.doc_id == "gong:short-0" and short.chunks[0].chunk_index == 0
    assert [c.chunk_index for c in short.context] == [0, 1, 2]
    assert [c.text for c in short.context] == [f"gong:short-0 part {i}" for i in range(3)]


def test_keyword_and_hybrid_follow_writes_and_deletes(tmp_path):
    sink = LocalSink(tmp_path / "kw")
    sink.ensure(DIM, "cosine")
    r = Retriever(embed_query=lambda text: QUERY, sinks={"local": sink},
                  catalog=FieldCatalog({"c": {}}), sources={"c": "gong"})
    ask = lambda mode: [d.doc_id for d in r.search(QueryRequest(text="ECONNRESET", k=5, mode=mode)).results]  # noqa: E731
    assert ask("keyword") == []  # an empty table: no index yet, no error
    first, second = document("gong:a", 2), document("gong:b", 2)
    first = ChunkedDocument(first.document, (first.chunks[0], Chunk("gong:a", 1, "socket ECONNRESET again",
                                                                      (101, 9, 102), "h-a-x")), "t", "m")
    sink.upsert(build_records(first, np.stack([near(0.2, 1), near(0.3, 2)])))
    sink.upsert(build_records(second, np.stack([near(0.9, 3), near(0.8, 4)])))
    assert ask("keyword") == ["gong:a"]  # written after the index was built: still found
    assert set(ask("hybrid")) == {"gong:a", "gong:b"}  # one leg each
    assert ask("vector")[0] == "gong:b"
    sink.delete_document("gong:a")
    assert ask("keyword") == [] and "gong:a" not in ask("hybrid")
    sink.close()
