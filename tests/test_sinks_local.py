"""The embedded LanceDB store (worker/sinks/local.py), driven through the Sink protocol."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import flow_uuid
from worker.errors import SinkMismatch
from worker.fields import FieldSpec
from worker.records import Chunk, ChunkedDocument, FlowDocument, QueryFilter
from worker.sinks.base import build_records
from worker.sinks.local import LocalSink, where_clause

DIM = 8


def chunked(doc_id: str, n: int, *, source: str = "slack", version: int = 1, text: str = "chunk",
            published_at: float = 1_800_000_000.0, collection: str = "c") -> ChunkedDocument:
    doc = FlowDocument(collection=collection, source=source, key=(doc_id,), doc_id=doc_id, op="u",
                       uuid=flow_uuid(published_at), version=version, published_at=published_at,
                       title=f"title of {doc_id}", url="https://example.com/x",
                       metadata={"channel_name": "deal-acme", "topics": ["a", "b"]})
    chunks = tuple(Chunk(doc_id, i, f"{text} {i} of {doc_id}", (101, 7 + i, 102), f"h{doc_id}{i}{text}")
                   for i in range(n))
    return ChunkedDocument(doc, chunks, f"t-{text}-{n}", "m")


def vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


FIELDS = {"channel_name": FieldSpec("channel_name", "string"), "topics": FieldSpec("topics", "string[]")}


@pytest.fixture
def sink(tmp_path):
    s = LocalSink(tmp_path / "lancedb")
    s.declare_fields(FIELDS)
    s.ensure(DIM, "cosine")
    yield s
    s.close()


def ids(sink: LocalSink) -> list[str]:
    return [r["id"] for r in sink.rows()]


def test_upserting_the_same_records_twice_leaves_the_same_rows(sink):
    records = build_records(chunked("slack:a", 3), vectors(3))
    assert sink.upsert(records).written == 3
    first = sink.rows()
    sink.upsert(records)
    sink.upsert(list(reversed(records)))
    assert sink.rows() == first
    assert [r["id"] for r in first] == ["slack:a#0", "slack:a#1", "slack:a#2"]
    assert first[0]["uuid"] == records[0].uuid and first[0]["chunk_count"] == 3


def test_upsert_overwrites_by_id(sink):
    sink.upsert(build_records(chunked("slack:a", 2, text="old"), vectors(2, 1)))
    sink.upsert(build_records(chunked("slack:a", 2, text="new", version=2), vectors(2, 2)))
    rows = sink.rows()
    assert [r["text"] for r in rows] == ["new 0 of slack:a", "new 1 of slack:a"]
    assert all(r["version"] == f"{2:020d}" for r in rows)
    np.testing.assert_allclose(np.array([r["vector"] for r in rows]), vectors(2, 2), atol=1e-6)


def test_delete_document_removes_every_chunk_and_only_that_document(sink):
    sink.upsert(build_records(chunked("slack:a", 5), vectors(5)))
    sink.upsert(build_records(chunked("slack:ab", 2), vectors(2)))  # shares a prefix with slack:a
    sink.delete_document("slack:a")
    assert ids(sink) == ["slack:ab#0", "slack:ab#1"]
    sink.delete_document("slack:a")  # idempotent
    assert ids(sink) == ["slack:ab#0", "slack:ab#1"]


def test_delete_tail_keeps_the_head(sink):
    sink.upsert(build_records(chunked("gong:1", 6), vectors(6)))
    sink.delete_tail("gong:1", keep=2, previous_count=6)
    assert ids(sink) == ["gong:1#0", "gong:1#1"]


def test_quotes_in_ids_are_values_not_sql(sink):
    tricky = "slack:it's' OR '1'='1"
    sink.upsert(build_records(chunked(tricky, 2), vectors(2)))
    sink.upsert(build_records(chunked("slack:other", 1), vectors(1)))
    assert set(sink.fetch_documents([tricky, "slack:missing"])) == {tricky}
    hits = sink.query(vectors(1)[0], 10, QueryFilter(doc_id=tricky))
    assert {h.doc_id for h in hits} == {tricky}
    sink.delete_document(tricky)
    assert ids(sink) == ["slack:other#0"]
    assert where_clause(QueryFilter(source="x' OR 'a'='a")) == "source = 'x'' OR ''a''=''a'"


def test_fetch_documents_reads_version_and_hashes_from_chunk_zero(sink):
    sink.upsert(build_records(chunked("slack:a", 3, version=42, text="v"), vectors(3)))
    stored = sink.fetch_documents(["slack:a", "slack:nope"])
    assert list(stored) == ["slack:a"]
    doc = stored["slack:a"]
    assert (doc.version, doc.chunk_count, doc.text_hash, doc.meta_hash) == (42, 3, "t-v-3", "m")
    many = [f"slack:{i}" for i in range(1200)]  # more than one IN (...) batch
    assert sink.fetch_documents(many) == {}


def test_query_ranks_by_cosine_and_filters(sink):
    v = vectors(4, 5)
    sink.upsert(build_records(chunked("slack:a", 2, source="slack", published_at=100.0), v[:2]))
    sink.upsert(build_records(chunked("gong:b", 2, source="gong", published_at=200.0,
                                      collection="calls"), v[2:]))
    hits = sink.query(v[3], 4, QueryFilter())
    assert hits[0].id == "gong:b#1" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert {h.source for h in sink.query(v[3], 4, QueryFilter(source="slack"))} == {"slack"}
    assert {h.doc_id for h in sink.query(v[0], 4, QueryFilter(collection="calls"))} == {"gong:b"}
    assert {h.doc_id for h in sink.query(v[0], 4, QueryFilter(published_after=150.0))} == {"gong:b"}
    assert {h.doc_id for h in sink.query(v[0], 4, QueryFilter(published_before=150.0))} == {"slack:a"}
    hit = hits[0]
    assert hit.text == "chunk 1 of gong:b"
    assert hit.metadata["channel_name"] == "deal-acme"  # typed metadata columns come back
    assert hit.metadata["topics"] == ["a", "b"]
    assert "extra" not in hit.metadata and "text" not in hit.metadata


def test_a_reopened_store_keeps_its_rows_and_refuses_another_dimension(tmp_path):
    first = LocalSink(tmp_path / "db")
    first.ensure(DIM, "cosine")
    first.upsert(build_records(chunked("slack:a", 2), vectors(2)))
    first.close()
    again = LocalSink(tmp_path / "db")
    again.ensure(DIM, "cosine")
    assert ids(again) == ["slack:a#0", "slack:a#1"]
    assert again.info().records == 2 and again.info().dimension == DIM
    with pytest.raises(SinkMismatch, match="holds 8-d vectors but the model makes 384-d"):
        again.ensure(384, "cosine")
    with pytest.raises(SinkMismatch, match="cosine only"):
        again.ensure(DIM, "dotproduct")


def test_an_empty_store_answers_queries_and_lookups(tmp_path):
    sink = LocalSink(tmp_path / "db")
    assert sink.query(vectors(1)[0], 5, QueryFilter()) == []
    assert sink.fetch_documents(["slack:a"]) == {}
    assert sink.rows() == []
    with pytest.raises(SinkMismatch, match="before ensure"):
        sink.upsert(build_records(chunked("slack:a", 1), vectors(1)))


def test_many_small_writes_stay_correct_through_compaction(tmp_path):
    sink = LocalSink(tmp_path / "db", compact_every=5)
    sink.ensure(DIM, "cosine")
    for i in range(12):
        sink.upsert(build_records(chunked(f"slack:{i}", 2, version=i), vectors(2, i)))
        if i % 3 == 0:
            sink.delete_document(f"slack:{i}")
    sink.close()
    reopened = LocalSink(tmp_path / "db")
    expected = sorted(f"slack:{i}#{j}" for i in range(12) if i % 3 for j in range(2))
    assert ids(reopened) == expected
