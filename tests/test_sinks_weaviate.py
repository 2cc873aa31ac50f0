"""The Weaviate sink, through the real ``weaviate-client`` against the wire-level emulator.

What a user relies on: the collection is typed (id-like properties compare whole values), what
goes in comes back (ids, vectors, metadata), queries equal brute force under filters, a refused
object is reported with the server's message and never silently dropped, deletes remove every
chunk however many there are, and transient faults cost only (bounded) time: an outage surfaces
as SinkUnavailable after our retry budget, not after the client's hidden minutes of retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
import pytest
import weaviate
from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances
from weaviate.classes.init import AdditionalConfig, Auth, Timeout

import tests.emulators.weaviate as emulator_module
from tests.conftest import load_stream
from tests.emulators.weaviate import WeaviateEmulator
from worker.config import BindingConfig, RetryConfig
from worker.sinks.weaviate import WeaviateSinkConfig
from worker.documents import Binding
from worker.errors import ConfigError, SinkMismatch, SinkUnavailable
from worker.ids import chunk_uuid, document_id
from worker.records import QueryFilter, VectorRecord
from worker.sinks.base import build_records, stored_from_metadata
from worker.sinks.weaviate import WeaviateSink
from worker.sinks.weaviate_wire import ALL_PROPERTIES, ID_PROPERTIES, object_error_kind

COLLECTION = "MemoryChunk"
FAST = RetryConfig(max_attempts=5, max_elapsed_s=30, initial_backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture
def emu() -> Iterator[WeaviateEmulator]:
    with WeaviateEmulator(seed=7) as emulator:
        yield emulator


class Sleeps(list):
    """An injected ``sleep`` that records instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def make_sink(emu):
    built: list[WeaviateSink] = []

    def make(*, retry: RetryConfig = FAST, target: WeaviateEmulator | None = None,
             sleeps: Sleeps | None = None, **cfg) -> WeaviateSink:
        server = target or emu
        cfg.setdefault("timeout_s", 2.0)
        sink = WeaviateSink(WeaviateSinkConfig(url=server.url, grpc_port=server.grpc_port,
                                               collection=COLLECTION, **cfg),
                            retry, sleep=sleeps if sleeps is not None else Sleeps())
        built.append(sink)
        return sink

    yield make
    for sink in built:
        sink.close()


def raw_client(emu: WeaviateEmulator, api_key: str | None = None) -> weaviate.WeaviateClient:
    return weaviate.connect_to_custom(
        http_host="127.0.0.1", http_port=emu.http_port, http_secure=False,
        grpc_host="127.0.0.1", grpc_port=emu.grpc_port, grpc_secure=False, skip_init_checks=True,
        auth_credentials=Auth.api_key(api_key) if api_key else None,
        additional_config=AdditionalConfig(timeout=Timeout(init=2, query=5, insert=5)))


def handmade(doc_id_key: str, n_chunks: int, dims: int = 8, *, seed: int = 0,
             source: str = "gong", published_at: float = 1.7e9) -> list[VectorRecord]:
    """Records of one document with random unit vectors (no model: for plumbing tests)."""
    doc_id = document_id(source, (doc_id_key,))
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n_chunks):
        v = rng.standard_normal(dims).astype(np.float32)
        cid = f"{doc_id}#{i}"
        records.append(VectorRecord(cid, chunk_uuid(cid), doc_id, v / np.linalg.norm(v), {
            "doc_id": doc_id, "source": source, "collection": f"{source}-coll", "chunk_index": i,
            "chunk_count": n_chunks, "content_hash": f"c{i}", "text_hash": "t", "meta_hash": "m",
            "version": f"{seed + 1:020d}", "published_at": published_at, "title": "T",
            "url": "https://x", "text": f"chunk {i}", "extra": "{}"}))
    return records


@pytest.fixture(scope="module")
def real_records(chunker, embedder) -> list[VectorRecord]:
    """Records built by the worker's own path from sample-stream documents (real chunks).

    The smallest documents of each source, embedded in one call, so this stays a few seconds on
    a small CPU.
    """
    chosen = []
    for collection, preset, take in (("sophia-ai/gong-calls-enriched", "gong_call", 1),
                                     ("sophia-ai/github-enriched", "github_document", 8),
                                     ("sophia-ai/slack-messages-enriched", "slack_message", 12)):
        binding = Binding(BindingConfig(collection=collection, preset=preset))
        parsed = [binding.parse(raw) for raw in load_stream(collection)]
        newest = {d.doc_id: d for d in parsed if not d.is_delete}
        chunked = [cd for cd in chunker.chunk(list(newest.values())) if cd.chunks]
        chosen += sorted(chunked, key=lambda cd: (len(cd.chunks), cd.document.doc_id))[:take]
    vectors = embedder.embed_ids([c.token_ids for cd in chosen for c in cd.chunks])
    records, start = [], 0
    for cd in chosen:
        records += build_records(cd, vectors[start:start + len(cd.chunks)])
        start += len(cd.chunks)
    assert len({r.doc_id for r in records}) >= 20 and len(records) >= 25
    assert {r.metadata["source"] for r in records} == {"gong", "github", "slack"}
    return records


def wire(meta: dict) -> dict:
    """The row's own properties (undeclared metadata fields are not stored)."""
    out = {k: (str(v) if k not in ("chunk_index", "chunk_count", "published_at") else v)
           for k, v in meta.items() if k in ALL_PROPERTIES}
    out["published_at"] = float(out["published_at"])
    return out


def brute_force(records: list[VectorRecord], q: np.ndarray, k: int, where: QueryFilter) -> list[str]:
    def keep(r: VectorRecord) -> bool:
        m = r.metadata
        return ((not where.source or m["source"] == where.source)
                and (not where.collection or m["collection"] == where.collection)
                and (not where.doc_id or m["doc_id"] == where.doc_id)
                and (where.published_after is None or m["published_at"] >= where.published_after)
                and (where.published_before is None or m["published_at"] < where.published_before))

    pool = [r for r in records if keep(r)]
    scores = [float(np.dot(r.vector, q) / np.linalg.norm(r.vector) / np.linalg.norm(q)) for r in pool]
    order = np.argsort(scores, kind="stable")[::-1][:k]
    return [pool[i].id for i in order]


# -- schema ----------------------------------------------------------------------------------


def test_constructing_the_sink_never_touches_the_network(emu, make_sink):
    make_sink()
    WeaviateSink(WeaviateSinkConfig(url="http://127.0.0.1:9", grpc_port=9), FAST).close()
    assert emu.requests == []


def test_ensure_creates_a_typed_collection_with_field_tokenized_ids(emu, make_sink):
    make_sink().ensure(384, "cosine")
    make_sink().ensure(384, "cosine")  # a second worker (or a restart) creates nothing

    assert len(emu.calls("schema_create")) == 1
    client = raw_client(emu)
    try:
        config = client.collections.use(COLLECTION).config.get()
    finally:
        client.close()
    props = {p.name: p for p in config.properties}
    for name in ID_PROPERTIES:
        assert props[name].data_type == DataType.TEXT
        assert props[name].tokenization == Tokenization.FIELD, name
        assert props[name].index_filterable
    for name in ("title", "text"):
        assert props[name].data_type == DataType.TEXT
    assert props["chunk_index"].data_type == DataType.INT and props["chunk_index"].index_range_filters
    assert props["chunk_count"].data_type == DataType.INT
    assert props["published_at"].data_type == DataType.NUMBER
    assert props["published_at"].index_range_filters
    vector = config.vector_config["default"]
    assert vector.vectorizer.vectorizer.value == "none"
    assert vector.vector_index_config.distance_metric == VectorDistances.COSINE


def test_ensure_refuses_another_dimension(make_sink):
    sink = make_sink()
    sink.ensure(8, "cosine")
    sink.upsert(handmade("call-1", 2, dims=8))
    with pytest.raises(SinkMismatch, match=r"8-d vectors but the model makes 16-d"):
        make_sink().ensure(16, "cosine")
    make_sink().ensure(8, "cosine")


@pytest.mark.parametrize("create_kwargs, expected", [
    ({"properties": [Property(name="doc_id", data_type=DataType.TEXT)]},
     r"doc_id uses word tokenization, not field"),
    ({"properties": [Property(name="chunk_index", data_type=DataType.TEXT)]},
     r"chunk_index is text, not int"),
    ({"vector_config": Configure.Vectors.self_provided(vector_index_config=Configure.VectorIndex.hnsw(
        distance_metric=VectorDistances.DOT))}, r"uses the dot distance"),
])
def test_ensure_refuses_a_collection_that_does_not_fit(emu, make_sink, create_kwargs, expected):
    client = raw_client(emu)
    try:
        create_kwargs.setdefault("vector_config", Configure.Vectors.self_provided())
        client.collections.create(COLLECTION, **create_kwargs)
    finally:
        client.close()
    with pytest.raises(SinkMismatch, match=expected):
        make_sink().ensure(8, "cosine")


def test_ensure_adds_missing_properties_with_field_tokenization(emu, make_sink):
    client = raw_client(emu)
    try:
        client.collections.create(COLLECTION, vector_config=Configure.Vectors.self_provided())
        make_sink().ensure(8, "cosine")
        props = {p.name: p for p in client.collections.use(COLLECTION).config.get().properties}
    finally:
        client.close()
    assert props["doc_id"].tokenization == Tokenization.FIELD
    assert props["chunk_count"].data_type == DataType.INT


def test_ensure_refuses_a_metric_other_than_cosine(make_sink):
    with pytest.raises(SinkMismatch, match="cosine"):
        make_sink().ensure(8, "dotproduct")


# -- round trip ------------------------------------------------------------------------------


def test_real_records_round_trip_and_query_equals_brute_force(emu, make_sink, real_records, embedder):
    sink = make_sink(batch_objects=16, max_parallel_requests=3)
    sink.ensure(384, "cosine")
    outcome = sink.upsert(real_records)
    assert outcome.written == len(real_records) and outcome.rejected == {}

    stored = emu.objects(COLLECTION)
    assert set(stored) == {r.uuid for r in real_records}
    for r in real_records:
        vector, props = stored[r.uuid]
        np.testing.assert_allclose(vector, r.vector, atol=1e-6)
        assert props == wire(r.metadata), r.id

    doc_ids = sorted({r.doc_id for r in real_records})
    expected = {r.doc_id: stored_from_metadata(r.metadata) for r in real_records
                if r.metadata["chunk_index"] == 0}
    assert sink.fetch_documents([*doc_ids, "gong:absent"]) == expected

    first = real_records[0].metadata
    times = sorted(r.metadata["published_at"] for r in real_records)
    filters = [QueryFilter(), QueryFilter(source="slack"), QueryFilter(collection=first["collection"]),
               QueryFilter(doc_id=first["doc_id"]),
               QueryFilter(published_after=times[len(times) // 3],
                           published_before=times[2 * len(times) // 3]),
               QueryFilter(source="github", published_after=times[len(times) // 2])]
    for text in ("pricing objections from the customer", "fix the flaky CI build"):
        q = embedder.embed_query(text)
        for where in filters:
            hits = sink.query(q, 5, where)
            assert [h.id for h in hits] == brute_force(real_records, q, 5, where), where
            for h in hits:
                r = next(r for r in real_records if r.id == h.id)
                assert h.score == pytest.approx(float(np.dot(r.vector, q)), abs=1e-5)
                assert h.doc_id == r.doc_id and h.text == r.metadata["text"]
                assert h.metadata["chunk_index"] == r.metadata["chunk_index"]
                assert isinstance(h.metadata["chunk_index"], int)


def test_doc_id_filters_do_not_match_a_prefix_sharing_document(emu, make_sink):
    sink = make_sink()
    sink.ensure(8, "cosine")
    short, long = handmade("call-1", 3, seed=1), handmade("call-1-2", 4, seed=2)
    assert short[0].doc_id == "gong:call-1" and long[0].doc_id == "gong:call-1-2"
    sink.upsert(short + long)

    hits = sink.query(short[0].vector, 10, QueryFilter(doc_id="gong:call-1"))
    assert sorted(h.id for h in hits) == sorted(r.id for r in short)
    sink.delete_document("gong:call-1")
    assert set(emu.objects(COLLECTION)) == {r.uuid for r in long}
    assert set(sink.fetch_documents(["gong:call-1", "gong:call-1-2"])) == {"gong:call-1-2"}


def test_writing_the_same_records_twice_changes_nothing(emu, make_sink):
    sink = make_sink()
    sink.ensure(8, "cosine")
    records = handmade("call-1", 5)
    sink.upsert(records)
    before = emu.objects(COLLECTION)
    sink.upsert(records)
    assert emu.objects(COLLECTION) == before


# -- per-object errors -----------------------------------------------------------------------


def test_a_refused_object_is_rejected_with_the_server_message_and_the_rest_stored(emu, make_sink):
    sink = make_sink()
    sink.ensure(8, "cosine")
    records = handmade("call-1", 6)
    bad = records[2]
    message = "invalid text property 'title' on class 'MemoryChunk': not a string"
    emu.faults.add(op="batch_objects", kind="object_error", uuids={bad.uuid}, message=message)

    outcome = sink.upsert(records)

    assert outcome.rejected == {bad.id: message}
    assert outcome.written == 5
    assert set(emu.objects(COLLECTION)) == {r.uuid for r in records} - {bad.uuid}
    assert len(emu.calls("batch_objects")) == 1, "a validation error was retried"


def test_an_object_that_keeps_failing_with_an_unknown_error_is_rejected_after_retries(emu, make_sink):
    sink = make_sink()
    sink.ensure(8, "cosine")
    records = handmade("call-1", 6)
    emu.faults.add(op="batch_objects", kind="object_error", uuids={records[4].uuid}, message="boom")

    outcome = sink.upsert(records)

    assert outcome.rejected == {records[4].id: "boom"}
    assert len(emu.calls("batch_objects")) == FAST.max_attempts
    assert len(emu.objects(COLLECTION)) == 5


def test_random_object_errors_are_retried_until_every_object_is_stored(emu, make_sink):
    sink = make_sink(batch_objects=25, max_parallel_requests=2,
                     retry=RetryConfig(max_attempts=12, max_elapsed_s=30, initial_backoff_s=0.01,
                                       max_backoff_s=0.02))
    sink.ensure(8, "cosine")
    records = handmade("call-1", 100)
    fault = emu.faults.add(op="batch_objects", kind="object_error", rate=0.2)

    outcome = sink.upsert(records)

    assert fault.fired > 0
    assert outcome.rejected == {} and outcome.written == 100
    assert set(emu.objects(COLLECTION)) == {r.uuid for r in records}


def test_objects_failing_with_a_transient_error_keep_the_batch_in_the_spool(emu, make_sink):
    sink = make_sink()
    sink.ensure(8, "cosine")
    records = handmade("call-1", 4)
    emu.faults.add(op="batch_objects", kind="object_error", uuids={records[0].uuid},
                   message="context deadline exceeded")
    with pytest.raises(SinkUnavailable, match="context deadline exceeded"):
        sink.upsert(records)
    emu.faults.clear()
    assert sink.upsert(records).written == 4


def test_a_batch_where_every_object_fails_still_reports_each_message(emu, make_sink):
    sink = make_sink()
    sink.ensure(8, "cosine")
    records = handmade("call-1", 5)
    emu.faults.add(op="batch_objects", kind="object_error", uuids={r.uuid for r in records[:2]},
                   message="invalid property 'a'")
    emu.faults.add(op="batch_objects", kind="object_error", uuids={r.uuid for r in records[2:]},
                   message="invalid property 'b'")
    outcome = sink.upsert(records)
    assert outcome.written == 0
    assert outcome.rejected == {**{r.id: "invalid property 'a'" for r in records[:2]},
                                **{r.id: "invalid property 'b'" for r in records[2:]}}


def test_failed_objects_are_never_logged_with_their_vectors(emu, make_sink, caplog):
    sink = make_sink()
    sink.ensure(8, "cosine")
    records = handmade("call-1", 3)
    emu.faults.add(op="batch_objects", kind="object_error", uuids={records[1].uuid},
                   message="invalid property 'x'")
    with caplog.at_level(logging.DEBUG):
        outcome = sink.upsert(records)
    assert outcome.rejected
    needle = f"{float(records[1].vector[0]):.6f}"[:7]
    assert not [r for r in caplog.records if needle in r.getMessage() or "vector" in r.getMessage()]
    assert any(r.name == "worker.sinks.weaviate" and "rejected" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("message, kind", [
    ("invalid text property 'title' on class 'X'", "permanent"),
    ("insert to vector index: new node has a vector with length 768. Existing nodes have vectors "
     "with length 384", "permanent"),
    ("context deadline exceeded", "transient"),
    ("store is read-only", "transient"),
    ("could not find class MemoryChunk in schema", "missing"),
    ("emulated object_error fault", "unknown"),
])
def test_object_error_kinds(message, kind):
    assert object_error_kind(message) == kind


# -- deletes ---------------------------------------------------------------------------------


def test_deletes_loop_past_the_per_call_cap(emu, make_sink, monkeypatch):
    monkeypatch.setattr(emulator_module, "QUERY_MAXIMUM_RESULTS", 7)
    sink = make_sink()
    sink.ensure(8, "cosine")
    doc, other = handmade("call-1", 30, seed=1), handmade("call-1-2", 3, seed=2)
    sink.upsert(doc + other)

    sink.delete_tail(doc[0].doc_id, 4, 30)
    left = emu.objects(COLLECTION)
    kept = sorted(p["chunk_index"] for _, p in left.values() if p["doc_id"] == doc[0].doc_id)
    assert kept == [0, 1, 2, 3]
    calls = len(emu.calls("batch_delete"))
    assert calls >= 5  # 26 chunks at 7 per call, plus the call that finds nothing

    sink.upsert(doc)
    sink.delete_document(doc[0].doc_id)
    assert set(emu.objects(COLLECTION)) == {r.uuid for r in other}
    assert len(emu.calls("batch_delete")) - calls >= 6
    sink.delete_document(doc[0].doc_id)  # idempotent


# -- faults and retries ----------------------------------------------------------------------


def test_transient_faults_cost_only_bounded_time(emu, make_sink):
    sleeps = Sleeps()
    retry = RetryConfig(max_attempts=5, max_elapsed_s=30, initial_backoff_s=0.01, max_backoff_s=5)
    sink = make_sink(sleeps=sleeps, timeout_s=0.5, retry=retry)
    emu.faults.add(op="schema_get", kind="503", times=1)
    emu.faults.add(op="schema_create", kind="429", times=1, retry_after_s=3)
    sink.ensure(8, "cosine")
    assert max(sleeps) >= 3, "the 429's Retry-After was not honoured"

    records = handmade("call-1", 6)
    for op in ("batch_objects", "search", "batch_delete"):
        emu.faults.add(op=op, kind="unavailable", times=1)
        emu.faults.add(op=op, kind="deadline", times=1, stall_s=1.0)
    started = time.monotonic()
    assert sink.upsert(records).written == 6
    assert [h.id for h in sink.query(records[0].vector, 1, QueryFilter())] == [records[0].id]
    sink.delete_tail(records[0].doc_id, 3, 6)
    elapsed = time.monotonic() - started
    # Each op: one UNAVAILABLE (the client's own backoff would add 1 s) and one 0.5 s deadline.
    assert elapsed < 3 * 0.5 + 1.5, elapsed
    assert all(f.exhausted() for f in emu.faults.faults)
    assert len(emu.objects(COLLECTION)) == 3

    # info() is a probe: one attempt, so a fault shows as unreachable at once, then clears.
    emu.faults.add(op="aggregate", kind="unavailable", times=1)
    assert not sink.info().reachable
    assert sink.info().records == 3


def test_an_outage_surfaces_after_the_retry_budget_and_recovery_just_works(emu, make_sink):
    sleeps = Sleeps()
    sink = make_sink(sleeps=sleeps)
    sink.ensure(8, "cosine")
    records = handmade("call-1", 4)
    emu.set_down(True)
    started = time.monotonic()
    for call in (lambda: sink.upsert(records), lambda: sink.query(records[0].vector, 3, QueryFilter()),
                 lambda: sink.delete_document(records[0].doc_id),
                 lambda: sink.fetch_documents([records[0].doc_id])):
        before = len(sleeps)
        with pytest.raises(SinkUnavailable):
            call()
        assert len(sleeps) - before == FAST.max_attempts - 1
    assert time.monotonic() - started < 3, "the client's own retries ran under ours"
    info = sink.info()
    assert not info.reachable and info.error

    emu.set_down(False)
    assert sink.upsert(records).written == 4
    assert sink.info().reachable and sink.info().records == 4


def test_a_server_down_at_first_use_is_reported_and_later_connected(emu, make_sink):
    sink = make_sink()
    emu.set_down(True)
    with pytest.raises(SinkUnavailable):
        sink.ensure(8, "cosine")
    emu.set_down(False)
    sink.ensure(8, "cosine")
    assert sink.upsert(handmade("call-1", 2)).written == 2


def test_a_wrong_api_key_is_a_config_error_without_the_key(make_sink):
    with WeaviateEmulator(api_key="right-key") as secured:
        with pytest.raises(ConfigError) as caught:
            make_sink(target=secured, api_key="wrong-key").ensure(8, "cosine")
        assert "wrong-key" not in str(caught.value)
        sink = make_sink(target=secured, api_key="right-key")
        sink.ensure(8, "cosine")
        assert sink.upsert(handmade("call-1", 2)).written == 2
        assert all(r.headers.get("authorization") == "Bearer right-key"
                   for r in secured.calls("batch_objects"))


def test_parallel_slices_write_everything(emu, make_sink):
    sink = make_sink(batch_objects=50, max_parallel_requests=4)
    sink.ensure(8, "cosine")
    records = handmade("call-1", 320)
    assert sink.upsert(records).written == 320
    sizes = sorted(len(r.body["objects"]) for r in emu.calls("batch_objects"))
    assert sizes == [20] + [50] * 6
    assert len(emu.objects(COLLECTION)) == 320


def test_bad_urls_are_config_errors():
    for url in ("weaviate:8080", "http://host:8080/prefix", "ftp://host"):
        with pytest.raises(ConfigError, match="sinks.weaviate.url"):
            WeaviateSink(WeaviateSinkConfig(url=url), FAST)
