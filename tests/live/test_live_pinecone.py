"""The Pinecone sink against the real service: round trip, delete, stale tail.

Runs only with ``PINECONE_API_KEY`` set. ``PINECONE_INDEX`` (default ``memory-worker-live``) is
created as a 384-d cosine serverless index if missing (``PINECONE_CLOUD``/``PINECONE_REGION``,
default aws/us-east-1). Each run writes into its own namespace and deletes it at the end.
The service is eventually consistent, so reads poll until they settle.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pytest

from worker.config import RetryConfig
from worker.sinks.pinecone import PineconeSinkConfig
from worker.ids import chunk_id
from worker.records import Chunk, ChunkedDocument, FlowDocument, QueryFilter, StoredDocument
from worker.sinks.base import build_records
from worker.sinks.pinecone import PineconeSink

pytestmark = pytest.mark.live
API_KEY = os.environ.get("PINECONE_API_KEY", "")
if not API_KEY:
    pytest.skip("PINECONE_API_KEY is not set: the live Pinecone tests need a real project key",
                allow_module_level=True)

DIM = 384
SETTLE_S = 120.0
T = TypeVar("T")


def eventually(read: Callable[[], T], done: Callable[[T], bool]) -> T:
    deadline = time.monotonic() + SETTLE_S
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(2.0)


@pytest.fixture(scope="module")
def sink():
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    cfg = PineconeSinkConfig(api_key=API_KEY, namespace=namespace,
                             index=os.environ.get("PINECONE_INDEX", "memory-worker-live"),
                             cloud=os.environ.get("PINECONE_CLOUD", "aws"),
                             region=os.environ.get("PINECONE_REGION", "us-east-1"), timeout_s=30)
    s = PineconeSink(cfg, RetryConfig(max_attempts=8, max_elapsed_s=180))
    s.ensure(DIM, "cosine")
    yield s
    try:
        s._data().delete(delete_all=True, namespace=namespace, timeout=30)
    except Exception as exc:  # noqa: BLE001 - the namespace may already be gone
        print(f"cleanup of namespace {namespace!r} failed: {exc}")
    s.close()


def document(key: str, chunks: int, seed: int) -> list:
    doc_id = f"live:{key}"
    doc = FlowDocument(collection="live/docs", source="live", key=(key,), doc_id=doc_id, op="u",
                       uuid=str(uuid.uuid1()), version=7, published_at=1.7e9 + seed,
                       title=f"Live {key}", url="https://example.com/live",
                       metadata={"owner": "ana"})
    parts = tuple(Chunk(doc_id, i, f"chunk {i} of {key}", (101, i, 102), f"c{i}")
                  for i in range(chunks))
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((chunks, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return build_records(ChunkedDocument(doc, parts, f"th-{key}", f"mh-{key}"), vectors)


def test_round_trip(sink):
    records = document("round-trip", 5, seed=1)
    assert sink.upsert(records).written == 5

    found = eventually(lambda: sink.fetch_documents(["live:round-trip", "live:absent"]),
                       lambda got: "live:round-trip" in got)
    assert found == {"live:round-trip": StoredDocument("live:round-trip", 7, 5, "th-round-trip",
                                                       "mh-round-trip")}
    hits = eventually(lambda: sink.query(records[3].vector, 3, QueryFilter(doc_id="live:round-trip")),
                      lambda got: bool(got) and got[0].id == records[3].id)
    assert hits[0].id == records[3].id and hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert hits[0].metadata["chunk_index"] == 3 and hits[0].text == records[3].metadata["text"]
    assert all(h.doc_id == "live:round-trip" for h in hits)


def test_delete_document_crosses_list_pages(sink):
    records = document("many", 130, seed=2)
    assert sink.upsert(records).written == 130
    eventually(lambda: sink._list_ids("live:many#"), lambda ids: len(ids) == 130)

    sink.delete_document("live:many")

    left = eventually(lambda: sink._list_ids("live:many#"), lambda ids: not ids)
    assert left == []


def test_delete_tail_keeps_exactly_keep_chunks(sink):
    assert sink.upsert(document("tail", 30, seed=3)).written == 30
    eventually(lambda: sink._list_ids("live:tail#"), lambda ids: len(ids) == 30)

    sink.delete_tail("live:tail", 12, 30)

    expected = sorted(chunk_id("live:tail", i) for i in range(12))
    left = eventually(lambda: sorted(sink._list_ids("live:tail#")), lambda ids: ids == expected)
    assert left == expected
