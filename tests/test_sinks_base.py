"""Records every sink stores (worker/sinks/base.py): ids and metadata within Pinecone's limits."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from conftest import flow_uuid
from worker.ids import chunk_uuid
from worker.records import Chunk, ChunkedDocument, FlowDocument
from worker.sinks.base import MAX_METADATA_BYTES, MetadataTooLarge, build_records, hit_from_metadata, trim_text

PINECONE_METADATA_BYTES = 40 * 1024


def chunked(texts: list[str], metadata: dict | None = None, title: str = "Title") -> ChunkedDocument:
    doc = FlowDocument(collection="sophia-ai/github-enriched", source="github", key=("I_1",),
                       doc_id="github:I_1", op="u", uuid=flow_uuid(1_800_000_000), version=123456789,
                       published_at=1_800_000_000.5, title=title, url="https://github.com/x/y/issues/1",
                       metadata=metadata or {"labels": ["bug"], "number": 1, "state": "open"})
    chunks = tuple(Chunk(doc.doc_id, i, t, (101, 102), f"hash{i}") for i, t in enumerate(texts))
    return ChunkedDocument(doc, chunks, "text-hash", "meta-hash")


def assert_pinecone_metadata(meta: dict) -> None:
    assert len(orjson.dumps(meta)) <= PINECONE_METADATA_BYTES
    for key, value in meta.items():
        assert not key.startswith("$")
        assert value is not None, key
        assert isinstance(value, (str, int, float, bool)) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)), (key, value)


@pytest.mark.parametrize("text", [
    "short text",
    "x" * 200_000,  # a 200 KB log line
    "🚀" * 50_000,  # 4-byte characters
    '"\\\n\t' * 30_000,  # characters that JSON escapes to two bytes or more
    "\x01\x02" * 20_000,  # control characters, six bytes each once escaped
])
def test_metadata_always_fits_pinecone(text):
    big_meta = {"notes": "n" * 30_000, "labels": ["bug"] * 10}
    for records in (build_records(chunked([text, "second"]), np.ones((2, 4), np.float32)),
                    build_records(chunked([text], big_meta, title="T" * 5000), np.ones((1, 4), np.float32))):
        for r in records:
            assert_pinecone_metadata(r.metadata)
        stored = records[0].metadata["text"]
        assert stored == text or (stored.endswith("…") and text.startswith(stored[:-1]))


def test_records_carry_deterministic_ids_and_the_documented_fields():
    records = build_records(chunked(["a", "b", "c"]), np.eye(3, 4, dtype=np.float32))
    assert [r.id for r in records] == ["github:I_1#0", "github:I_1#1", "github:I_1#2"]
    assert [r.uuid for r in records] == [chunk_uuid(r.id) for r in records]
    meta = records[1].metadata
    assert meta["doc_id"] == "github:I_1" and meta["source"] == "github"
    assert meta["collection"] == "sophia-ai/github-enriched"
    assert (meta["chunk_index"], meta["chunk_count"]) == (1, 3)
    assert meta["version"] == "00000000000123456789"  # sorts as a string
    assert meta["published_at"] == 1_800_000_000.5
    assert (meta["labels"], meta["number"], meta["state"]) == (["bug"], 1, "open")  # flat, typed
    assert "extra" not in meta
    assert records[1].vector.dtype == np.float32


def test_metadata_too_large_for_any_text_is_refused_naming_the_largest_fields():
    huge = {"notes": "n" * 38_000, "labels": ["bug"] * 10, "state": "open"}
    with pytest.raises(MetadataTooLarge) as err:
        build_records(chunked(["a"], huge), np.ones((1, 4), np.float32))
    assert "github:I_1" in str(err.value) and "notes (38002 B)" in str(err.value)


def test_vector_count_must_match_chunk_count():
    with pytest.raises(ValueError):
        build_records(chunked(["a", "b"]), np.ones((1, 4), np.float32))


def test_trim_text_respects_the_json_budget_on_character_boundaries():
    for text in ["é" * 10_000, "🚀" * 10_000, '"' * 10_000, "ab" * 10_000]:
        for budget in (50, 1000, 7777):
            trimmed = trim_text(text, budget)
            assert len(orjson.dumps(trimmed)) <= budget
            assert trimmed.endswith("…") and text.startswith(trimmed[:-1])
    assert trim_text("fits", 100) == "fits"


def test_hits_expand_a_legacy_rows_extra_metadata_back():
    [record] = build_records(chunked(["hello"], {"number": 1}), np.ones((1, 4), np.float32))
    legacy = {**record.metadata, "extra": orjson.dumps({"labels": ["bug"]}).decode()}
    hit = hit_from_metadata(record.id, 0.5, legacy)
    assert hit.text == "hello" and hit.doc_id == "github:I_1" and hit.source == "github"
    assert hit.metadata["labels"] == ["bug"] and "extra" not in hit.metadata
    assert hit.metadata["title"] == "Title"
    assert MAX_METADATA_BYTES == PINECONE_METADATA_BYTES
