"""The Weaviate sink against a real server: schema, round trip, filters, deletes, refusals.

Runs only with ``WEAVIATE_URL`` set (e.g. ``http://localhost:8080`` or
``https://<cluster>.weaviate.cloud``). Optional: ``WEAVIATE_API_KEY``, ``WEAVIATE_GRPC_HOST``
(default: the URL's host; Weaviate Cloud uses ``grpc-<cluster host>``), ``WEAVIATE_GRPC_PORT``
(default 50051, or 443 for an https URL), ``WEAVIATE_GRPC_SECURE`` (default: the URL's scheme).
Each run creates its own collection and deletes it at the end.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit

import numpy as np
import pytest

from worker.config import RetryConfig
from worker.sinks.weaviate import WeaviateSinkConfig
from worker.errors import SinkMismatch
from worker.ids import chunk_uuid, document_id
from worker.records import QueryFilter, StoredDocument, VectorRecord
from worker.sinks.weaviate import WeaviateSink

pytestmark = pytest.mark.live
URL = os.environ.get("WEAVIATE_URL", "")
if not URL:
    pytest.skip("WEAVIATE_URL is not set: the live Weaviate tests need a real server "
                "(and WEAVIATE_API_KEY if it requires one)", allow_module_level=True)

DIM = 384


def sink_config(collection: str) -> WeaviateSinkConfig:
    https = urlsplit(URL).scheme == "https"
    secure = os.environ.get("WEAVIATE_GRPC_SECURE")
    return WeaviateSinkConfig(
        url=URL, api_key=os.environ.get("WEAVIATE_API_KEY") or None, collection=collection,
        grpc_host=os.environ.get("WEAVIATE_GRPC_HOST") or None,
        grpc_port=int(os.environ.get("WEAVIATE_GRPC_PORT") or (443 if https else 50051)),
        grpc_secure=None if secure is None else secure.lower() in ("1", "true", "yes"),
        timeout_s=30)


RETRY = RetryConfig(max_attempts=6, max_elapsed_s=120)


def raw_client():
    import weaviate
    from weaviate.classes.init import Auth

    cfg, url = sink_config("unused"), urlsplit(URL)
    key = cfg.api_key.get_secret_value() if cfg.api_key else None
    return weaviate.connect_to_custom(
        http_host=url.hostname, http_port=url.port or (443 if url.scheme == "https" else 80),
        http_secure=url.scheme == "https", grpc_host=cfg.grpc_host or url.hostname,
        grpc_port=cfg.grpc_port,
        grpc_secure=url.scheme == "https" if cfg.grpc_secure is None else cfg.grpc_secure,
        auth_credentials=Auth.api_key(key) if key else None, skip_init_checks=True)


@pytest.fixture(scope="module")
def collection():
    name = f"MemoryWorkerLive{uuid.uuid4().hex[:10]}"
    yield name
    try:
        client = raw_client()
        try:
            client.collections.delete(name)
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - report, don't mask the test's own outcome
        print(f"cleanup of collection {name!r} failed: {exc}")


@pytest.fixture(scope="module")
def sink(collection):
    s = WeaviateSink(sink_config(collection), RETRY)
    s.ensure(DIM, "cosine")
    yield s
    s.close()


def records_of(key: str, n: int, *, seed: int, source: str = "gong",
               published_at: float = 1.7e9) -> list[VectorRecord]:
    doc_id = document_id(source, (key,))
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        v = rng.standard_normal(DIM).astype(np.float32)
        cid = f"{doc_id}#{i}"
        out.append(VectorRecord(cid, chunk_uuid(cid), doc_id, v / np.linalg.norm(v), {
            "doc_id": doc_id, "source": source, "collection": f"{source}/calls", "chunk_index": i,
            "chunk_count": n, "content_hash": f"h{seed}-{i}", "text_hash": f"t{seed}",
            "meta_hash": f"m{seed}", "version": f"{seed:020d}", "published_at": published_at + i,
            "title": f"Doc {key}", "url": f"https://example.com/{key}", "text": f"chunk {i} of {key}",
            "extra": '{"k":"v"}'}))
    return out


def test_the_collection_is_typed_with_field_tokenized_ids(sink, collection):
    from weaviate.classes.config import Tokenization

    info = sink.info()
    assert info.reachable and info.metric == "cosine" and info.error is None, info
    client = raw_client()
    try:
        props = {p.name: p for p in client.collections.use(collection).config.get().properties}
    finally:
        client.close()
    for name in ("doc_id", "source", "collection", "content_hash", "version"):
        assert props[name].tokenization == Tokenization.FIELD, name


def test_round_trip_filters_and_deletes(sink, collection):
    short = records_of("call-1", 3, seed=1)
    long = records_of("call-1-2", 5, seed=2, source="slack", published_at=1.8e9)
    others = [r for k in range(6) for r in records_of(f"doc-{k}", 4, seed=10 + k)]
    everything = short + long + others
    outcome = sink.upsert(everything)
    assert outcome.rejected == {} and outcome.written == len(everything)
    assert sink.info().records == len(everything)
    assert sink.info().dimension == DIM
    other = WeaviateSink(sink_config(collection), RETRY)
    try:
        with pytest.raises(SinkMismatch, match="384-d"):
            other.ensure(DIM + 1, "cosine")
    finally:
        other.close()

    stored = sink.fetch_documents(["gong:call-1", "slack:call-1-2", "gong:absent"])
    assert stored == {"gong:call-1": StoredDocument("gong:call-1", 1, 3, "t1", "m1"),
                      "slack:call-1-2": StoredDocument("slack:call-1-2", 2, 5, "t2", "m2")}

    q = short[0].vector
    hits = sink.query(q, 10, QueryFilter(doc_id="gong:call-1"))
    assert sorted(h.id for h in hits) == sorted(r.id for r in short)  # not the call-1-2 chunks
    assert hits[0].id == short[0].id and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].metadata["chunk_index"] == 0 and hits[0].metadata["k"] == "v"

    for where in (QueryFilter(), QueryFilter(source="slack"), QueryFilter(published_after=1.75e9)):
        got = [h.id for h in sink.query(q, 5, where)]
        pool = [r for r in everything
                if (not where.source or r.metadata["source"] == where.source)
                and (where.published_after is None
                     or r.metadata["published_at"] >= where.published_after)]
        best = sorted(pool, key=lambda r: -float(np.dot(r.vector, q)))[:5]
        assert set(got) == {r.id for r in best}, where

    sink.delete_tail("slack:call-1-2", 2, 5)
    left = sink.query(long[0].vector, 10, QueryFilter(doc_id="slack:call-1-2"))
    assert sorted(h.metadata["chunk_index"] for h in left) == [0, 1]
    sink.delete_document("gong:call-1")
    assert sink.query(q, 10, QueryFilter(doc_id="gong:call-1")) == []
    assert len(sink.query(q, 10, QueryFilter(doc_id="slack:call-1-2"))) == 2
    assert sink.info().records == len(everything) - 3 - 3


def test_a_refused_object_comes_back_rejected_and_the_rest_are_stored(sink):
    good = records_of("refusal", 3, seed=40)
    bad = records_of("refusal-bad", 1, seed=41)[0]
    bad.vector = np.concatenate([bad.vector, np.zeros(8, np.float32)])  # wrong dimension
    outcome = sink.upsert([*good, bad])
    assert set(outcome.rejected) == {bad.id} and outcome.rejected[bad.id], outcome
    assert outcome.written == 3
    assert set(sink.fetch_documents(["gong:refusal", "gong:refusal-bad"])) == {"gong:refusal"}
