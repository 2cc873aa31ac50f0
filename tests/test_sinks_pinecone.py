"""The Pinecone sink against the loopback emulator, through the real ``pinecone`` SDK 10.2.0.

Nothing really sleeps: the sink's ``sleep`` is a list's ``append``, so every back-off the policy
chose is recorded. Only the stall test spends real time (a 0.5 s per-attempt timeout).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import numpy as np
import orjson
import pytest
from pinecone._internal import http_client as sdk_http

from worker.config import BindingConfig, RetryConfig
from worker.sinks.pinecone import PineconeSinkConfig
from worker.errors import ConfigError, SinkMismatch, SinkUnavailable
from worker.ids import document_id
from worker.records import Chunk, ChunkedDocument, FlowDocument, QueryFilter, StoredDocument
from worker.sinks.base import MAX_METADATA_BYTES, build_records, stored_from_metadata
from worker.sinks.pinecone import PineconeSink, disable_sdk_retries, plan_requests

try:  # with `pythonpath = ["."]` in the pytest config
    from tests.emulators.pinecone import PineconeEmulator
except ModuleNotFoundError:  # rootdir-relative import when tests/ has no __init__.py
    from emulators.pinecone import PineconeEmulator  # type: ignore[no-redef]

KEY = "test-key"
MODEL_DIM = 384
FAST_RETRY = RetryConfig(max_attempts=6, max_elapsed_s=60, initial_backoff_s=0.01, max_backoff_s=20)


@pytest.fixture
def emu():
    with PineconeEmulator(api_key=KEY, seed=11) as emulator:
        yield emulator


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_sink(emu, sleeps):
    built: list[PineconeSink] = []

    def make(retry: RetryConfig = FAST_RETRY, on_retry=None, **overrides: Any) -> PineconeSink:
        fields: dict[str, Any] = {"api_key": KEY, "index": "memory", "namespace": "ns-a",
                                  "controller_host": emu.control_url, **overrides}
        sink = PineconeSink(PineconeSinkConfig(**fields), retry, on_retry=on_retry,
                            sleep=sleeps.append)
        built.append(sink)
        return sink

    yield make
    for sink in built:
        sink.close()


@pytest.fixture
def sink(make_sink) -> PineconeSink:
    s = make_sink()
    s.ensure(MODEL_DIM, "cosine")
    return s


def handmade(key: str, chunks: int, *, source: str = "gong", text: str | None = None,
             collection: str = "sophia-ai/gong-calls-enriched", published_at: float = 1.7e9,
             title: str = "Weekly sync", url: str = "https://example.com/x",
             metadata: dict | None = None) -> ChunkedDocument:
    doc_id = document_id(source, (key,))
    doc = FlowDocument(collection=collection, source=source, key=(key,), doc_id=doc_id, op="u",
                       uuid="00000000-0000-1000-8000-000000000000", version=42,
                       published_at=published_at, title=title, url=url,
                       metadata=metadata if metadata is not None else {"owner": "ana"})
    parts = tuple(Chunk(doc_id, i, text if text is not None else f"chunk {i} of {key}",
                        (101, i, 102), f"c{i}") for i in range(chunks))
    return ChunkedDocument(doc, parts, text_hash=f"th-{key}", meta_hash=f"mh-{key}")


def records_of(docs: list[ChunkedDocument], dim: int = MODEL_DIM, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for cd in docs:
        vectors = rng.standard_normal((len(cd.chunks), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        out += build_records(cd, vectors)
    return out


def stored_ids(emu, namespace: str = "ns-a", index: str = "memory") -> set[str]:
    return set(emu.vectors(index, namespace))  # pending (not yet visible) records included


# --------------------------------------------------------------------------- ensure / info


def test_ensure_creates_a_serverless_dotproduct_index_with_the_model_dimension(emu, make_sink):
    first = make_sink(region="eu-west-1")
    before = first.info()
    assert (before.reachable, before.dimension, before.error) == (True, None, None)  # not yet there

    first.ensure(MODEL_DIM, "cosine")

    [create] = emu.requests_for("create_index")
    assert create.body["name"] == "memory"
    assert create.body["schema"]["fields"]["_values"] == {
        "type": "dense_vector", "dimension": MODEL_DIM, "metric": "dotproduct"}
    assert create.body["deployment"]["cloud"] == "aws"
    assert create.body["deployment"]["region"] == "eu-west-1"
    make_sink().ensure(MODEL_DIM, "cosine")  # a restart: the index is there, nothing is created
    assert len(emu.requests_for("create_index")) == 1
    info = first.info()
    assert (info.reachable, info.target, info.dimension, info.metric, info.records) == (
        True, "memory/ns-a", MODEL_DIM, "dotproduct", 0)
    assert info.warnings == ()


def test_an_existing_cosine_index_is_accepted_and_warns_that_hybrid_runs_as_vector(emu, make_sink):
    emu.create_index("memory", MODEL_DIM, "cosine")
    sink = make_sink()
    sink.ensure(MODEL_DIM, "cosine")
    assert emu.requests_for("create_index") == []
    [warning] = sink.info().warnings
    assert "cosine" in warning and "hybrid" in warning


@pytest.mark.parametrize(("dimension", "metric"), [(16, "cosine"), (MODEL_DIM, "euclidean")])
def test_ensure_refuses_an_index_of_another_shape(emu, make_sink, dimension, metric):
    emu.create_index("memory", dimension, metric)

    with pytest.raises(SinkMismatch) as refused:
        make_sink().ensure(MODEL_DIM, "cosine")

    message = str(refused.value)
    assert "'memory'" in message and f"{dimension}-d" in message and metric in message
    assert f"{MODEL_DIM}-d" in message
    assert emu.requests_for("create_index") == []


def test_index_host_works_without_the_control_plane(emu, make_sink):
    host = emu.create_index("direct", MODEL_DIM)
    sink = make_sink(index="direct", index_host=host, controller_host="http://127.0.0.1:9")
    sink.ensure(MODEL_DIM, "cosine")
    records = records_of([handmade("call-1", 3)])

    assert sink.upsert(records).written == 3
    assert set(sink.fetch_documents(["gong:call-1"])) == {"gong:call-1"}
    assert sink.query(records[1].vector, 1, QueryFilter())[0].id == "gong:call-1#1"
    sink.delete_document("gong:call-1")
    assert stored_ids(emu, index="direct") == set()
    assert sink.info().records == 0
    assert all(r.index == "direct" for r in emu.requests)  # no control-plane request at all

    wrong = make_sink(index="small", index_host=emu.create_index("small", 16),
                      controller_host="http://127.0.0.1:9")
    with pytest.raises(SinkMismatch, match="16-d"):
        wrong.ensure(MODEL_DIM, "cosine")


def test_info_reports_an_unreachable_control_plane_instead_of_raising(make_sink):
    info = make_sink(controller_host="http://127.0.0.1:9").info()
    assert info.reachable is False and "pinecone" in (info.error or "")


def test_an_index_host_without_an_index_is_a_config_error(emu, make_sink):
    from pinecone import Pinecone

    host = emu.create_index("gone", MODEL_DIM)
    Pinecone(api_key=KEY, host=emu.control_url).delete_index("gone", timeout=-1)
    sink = make_sink(index="gone", index_host=host)

    info = sink.info()
    assert info.reachable is False and "404" in (info.error or "")
    with pytest.raises(ConfigError, match="not found"):
        sink.ensure(MODEL_DIM, "cosine")


def test_a_wrong_api_key_is_a_config_error_that_does_not_echo_the_key(emu, make_sink):
    emu.create_index("memory", MODEL_DIM)
    sink = make_sink(api_key="wrong-secret-123")

    with pytest.raises(ConfigError) as refused:
        sink.ensure(MODEL_DIM, "cosine")

    assert "401" in str(refused.value) and "wrong-secret-123" not in str(refused.value)
    assert len(emu.requests) == 1  # not retried


# --------------------------------------------------------------------------- round trip


@pytest.fixture(scope="module")
def real_records(chunker, embedder):
    """A small real corpus: every Slack message and a few short GitHub documents (the CPU model
    embeds a few chunks per second here, so long Gong calls are left out)."""
    from conftest import load_stream

    from worker.documents import Binding
    from worker.pipeline import newest_versions

    picks = {"sophia-ai/slack-messages-enriched": ("slack_message", None),
             "sophia-ai/github-enriched": ("github_document", 5)}
    docs = []
    for collection, (preset, limit) in picks.items():
        binding = Binding(BindingConfig(collection=collection, preset=preset))
        parsed = newest_versions([binding.parse(raw) for raw in load_stream(collection)])
        chunked = [cd for cd in chunker.chunk([d for d in parsed if not d.is_delete])
                   if 0 < len(cd.chunks) <= 2]
        docs += chunked[:limit] if limit else chunked
    flat = [c for cd in docs for c in cd.chunks]
    order = sorted(range(len(flat)), key=lambda i: len(flat[i].token_ids))  # little padding
    vectors = np.zeros((len(flat), embedder.dimensions), dtype=np.float32)
    for start in range(0, len(order), 16):
        rows = order[start:start + 16]
        vectors[rows] = embedder.embed_ids([flat[i].token_ids for i in rows])
    records, start = [], 0
    for cd in docs:
        records += build_records(cd, vectors[start:start + len(cd.chunks)])
        start += len(cd.chunks)
    return records


def test_real_chunks_round_trip_unchanged(emu, sink, real_records):
    outcome = sink.upsert(real_records)

    assert (outcome.written, outcome.rejected) == (len(real_records), {})
    stored = emu.vectors("memory", "ns-a")
    assert set(stored) == {r.id for r in real_records}
    for record in real_records:
        values, metadata = stored[record.id]
        np.testing.assert_allclose(values, record.vector, rtol=0, atol=1e-6)
        assert metadata == record.metadata
    doc_ids = sorted({r.doc_id for r in real_records})
    expected = {r.doc_id: stored_from_metadata(r.metadata)
                for r in real_records if r.metadata["chunk_index"] == 0}
    assert sink.fetch_documents(doc_ids + ["slack:absent"]) == expected
    assert sink.info().records == len(real_records)


def brute_force(records, query: np.ndarray, k: int, where: QueryFilter) -> list[tuple[str, float]]:
    def keep(m: dict) -> bool:
        return ((where.source is None or m["source"] == where.source)
                and (where.collection is None or m["collection"] == where.collection)
                and (where.doc_id is None or m["doc_id"] == where.doc_id)
                and (where.published_after is None or m["published_at"] >= where.published_after)
                and (where.published_before is None or m["published_at"] < where.published_before))

    q = query.astype(np.float64)
    scored = []
    for r in records:
        if keep(r.metadata):
            v = r.vector.astype(np.float64)
            scored.append((-float(v @ q / (np.linalg.norm(v) * np.linalg.norm(q))), r.id))
    return [(rid, -neg) for neg, rid in sorted(scored)[:k]]


def test_query_equals_brute_force_under_filters(sink, real_records, embedder):
    sink.upsert(real_records)
    query = embedder.embed_query("pricing, renewal and the next steps with the customer")
    times = sorted(r.metadata["published_at"] for r in real_records)
    middle = times[len(times) // 2]
    github = next(r.doc_id for r in real_records
                  if r.metadata["source"] == "github" and r.metadata["chunk_count"] == 2)
    filters = [QueryFilter(), QueryFilter(source="slack"), QueryFilter(source="github"),
               QueryFilter(collection="sophia-ai/github-enriched"), QueryFilter(doc_id=github),
               QueryFilter(published_after=middle), QueryFilter(published_before=middle),
               QueryFilter(source="slack", published_after=times[0], published_before=middle)]
    by_id = {r.id: r for r in real_records}

    for where in filters:
        expected = brute_force(real_records, query, 7, where)
        hits = sink.query(query, 7, where)
        assert expected, where
        assert [h.id for h in hits] == [rid for rid, _ in expected], where
        for hit, (_, score) in zip(hits, expected):
            record = by_id[hit.id]
            assert hit.score == pytest.approx(score, abs=1e-5)
            assert (hit.doc_id, hit.source, hit.text) == (
                record.doc_id, record.metadata["source"], record.metadata["text"])
            assert type(hit.metadata["chunk_index"]) is int
            assert hit.metadata["chunk_index"] == record.metadata["chunk_index"]


def test_fetch_documents_pages_its_ids(emu, sink):
    docs = [handmade(f"call-{i}", 1) for i in range(230)]
    sink.upsert(records_of(docs, dim=MODEL_DIM))

    found = sink.fetch_documents([cd.document.doc_id for cd in docs] + ["gong:nope"])

    assert set(found) == {cd.document.doc_id for cd in docs}
    assert found["gong:call-7"] == StoredDocument("gong:call-7", 42, 1, "th-call-7", "mh-call-7")
    fetches = emu.requests_for("fetch")
    assert len(fetches) == 3 and all(len(f.query["ids"]) <= 100 for f in fetches)


# --------------------------------------------------------------------------- request shape


def test_upserts_are_split_under_2_mb_and_1000_vectors(emu, sink, monkeypatch):
    docs = [handmade(f"call-{i}", 60, text="word " * 300) for i in range(10)]
    records = records_of(docs)
    index = sink._data()
    calls: list[dict] = []
    real_upsert = index.upsert
    monkeypatch.setattr(index, "upsert", lambda **kw: calls.append(kw) or real_upsert(**kw))

    outcome = sink.upsert(records)

    assert (outcome.written, outcome.rejected) == (600, {})
    assert stored_ids(emu) == {r.id for r in records}
    requests = emu.requests_for("upsert")
    sizes = [int(r.headers["content-length"]) for r in requests]
    assert len(requests) >= 3
    assert all(size <= 2_000_000 for size in sizes)
    assert max(sizes) > 1_900_000  # packed by measured bytes, not by a timid count
    assert all(len(r.body["vectors"]) <= 1000 for r in requests)
    assert all(c.get("batch_size") is None and c["timeout"] == sink.cfg.timeout_s for c in calls)


def test_upserts_respect_max_request_vectors(emu, make_sink):
    emu.create_index("memory", 8)
    sink = make_sink(max_request_vectors=100)

    sink.upsert(records_of([handmade("call-1", 450)], dim=8))

    sent = sorted(len(r.body["vectors"]) for r in emu.requests_for("upsert"))  # parallel: any order
    assert sent == [50, 100, 100, 100, 100]


def test_parallel_requests_are_bounded(emu, make_sink, monkeypatch):
    emu.create_index("memory", 8)
    sink = make_sink(max_request_vectors=20, max_parallel_requests=3)
    lock, in_flight, peak = threading.Lock(), [0], [0]
    handle = emu._data_plane

    def slow_data_plane(rec, server_url):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            time.sleep(0.02)
            return handle(rec, server_url)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(emu, "_data_plane", slow_data_plane)
    sink.upsert(records_of([handmade("call-1", 400)], dim=8))

    assert len(emu.requests_for("upsert")) == 20
    assert peak[0] == 3  # parallel, and never beyond max_parallel_requests


def test_a_huge_document_keeps_its_metadata_within_40_kb(emu, sink):
    nasty = ('He said "ok"\n\t\\ ' + "żółć 数据 🙂 " + "\x01") * 12_000  # escapes + multibyte
    doc = handmade("huge", 2, text=nasty, title="T" * 5_000, url="https://x/" + "u" * 5_000,
                   metadata={f"field{i}": "v" * 90 for i in range(100)})

    outcome = sink.upsert(records_of([doc]))

    assert (outcome.written, outcome.rejected) == (2, {})
    for _, metadata in emu.vectors("memory", "ns-a").values():
        size = len(orjson.dumps(metadata))
        assert 30_000 < size <= MAX_METADATA_BYTES
        assert metadata["text"].endswith("…") and nasty.startswith(metadata["text"][:-1])


def test_plan_requests_covers_every_item_in_order_under_both_limits():
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 5_000, size=2_000).tolist() + [50_000] + [7] * 30
    runs = plan_requests(sizes, overhead=13, max_vectors=64, max_bytes=40_000)

    assert [i for a, b in runs for i in range(a, b)] == list(range(len(sizes)))
    for a, b in runs:
        body = 13 + sum(sizes[a:b]) + (b - a - 1)
        assert b - a == 1 or (b - a <= 64 and body <= 40_000)
    assert (len(sizes) - 31, len(sizes) - 30) in runs  # too big for any request: sent alone


# --------------------------------------------------------------------------- deletes


def test_delete_document_removes_every_chunk_across_list_pages(emu, sink):
    sink.upsert(records_of([handmade("call-1", 250), handmade("call-10", 3),
                            handmade("call-2", 2)]))

    sink.delete_document("gong:call-1")

    assert stored_ids(emu) == {f"gong:call-10#{i}" for i in range(3)} | {"gong:call-2#0",
                                                                         "gong:call-2#1"}
    assert len(emu.requests_for("list")) == 3  # 100 + 100 + 50
    sink.delete_document("gong:absent")  # nothing there: no error


def test_delete_tail_leaves_exactly_keep_chunks(emu, sink):
    sink.upsert(records_of([handmade("call-1", 150), handmade("call-11", 5)]))

    sink.delete_tail("gong:call-1", 40, 150)
    assert stored_ids(emu) == {f"gong:call-1#{i}" for i in range(40)} | {
        f"gong:call-11#{i}" for i in range(5)}

    sink.delete_tail("gong:call-1", 10, 20)  # the ledger undercounts: listing finds the rest
    assert {i for i in stored_ids(emu) if i.startswith("gong:call-1#")} == {
        f"gong:call-1#{i}" for i in range(10)}


def test_delete_tail_reaches_chunks_that_list_does_not_show_yet(emu, sink):
    emu.set_visibility_delay(30)  # eventually consistent: fresh upserts are not listed
    sink.upsert(records_of([handmade("call-1", 12)]))

    sink.delete_tail("gong:call-1", 4, 12)

    assert stored_ids(emu) == {f"gong:call-1#{i}" for i in range(4)}


# --------------------------------------------------------------------------- transient faults


def test_429_waits_at_least_retry_after(emu, sink, sleeps):
    emu.faults.add(op="upsert", kind="429", times=2, retry_after_s=7)

    outcome = sink.upsert(records_of([handmade("call-1", 3)]))

    assert outcome.written == 3
    assert [r.status for r in emu.requests_for("upsert")] == [429, 429, 200]
    assert len(sleeps) == 2 and all(s >= 7 for s in sleeps)


@pytest.mark.parametrize("kind", ["500", "503", "stall", "drop"])
def test_transient_faults_on_every_operation_are_retried(emu, make_sink, sleeps, kind):
    sink = make_sink(timeout_s=0.5)
    sink.ensure(MODEL_DIM, "cosine")
    records = records_of([handmade("call-1", 6)])
    ops = {
        "upsert": lambda: sink.upsert(records),
        "fetch": lambda: sink.fetch_documents(["gong:call-1"]),
        "query": lambda: sink.query(records[0].vector, 2, QueryFilter(source="gong")),
        "list": lambda: sink.delete_tail("gong:call-1", 3, 6),  # list, then delete
        "delete": lambda: sink.delete_document("gong:call-1"),
    }
    failed = None if kind in ("stall", "drop") else int(kind)  # None: no answer came
    results = {}
    for op, run in ops.items():
        before = len(emu.requests_for(op))
        emu.faults.add(op=op, kind=kind, times=1, stall_s=3)
        results[op] = run()
        assert [r.status for r in emu.requests_for(op)[before:]][:2] == [failed, 200], op

    assert results["upsert"].written == 6
    assert set(results["fetch"]) == {"gong:call-1"}
    assert results["query"][0].id == "gong:call-1#0" and len(results["query"]) == 2
    assert stored_ids(emu) == set()
    assert len(sleeps) == len(ops)  # exactly one retry of ours per injected fault


def test_20_percent_random_503s_lose_nothing(emu, make_sink, sleeps):
    emu.create_index("memory", 64)
    sink = make_sink(retry=RetryConfig(max_attempts=12, max_elapsed_s=120, initial_backoff_s=0.01),
                     max_request_vectors=50)
    rule = emu.faults.add(op="upsert", kind="503", rate=0.2)
    records = records_of([handmade(f"call-{i}", 10) for i in range(100)], dim=64)

    outcome = sink.upsert(records)

    assert (outcome.written, outcome.rejected) == (1000, {})
    assert stored_ids(emu) == {r.id for r in records}
    assert rule.fired > 0 and len(sleeps) == rule.fired


def test_a_spent_retry_budget_raises_sink_unavailable(emu, make_sink, sleeps):
    sink = make_sink(retry=RetryConfig(max_attempts=3, initial_backoff_s=0.01))
    sink.ensure(MODEL_DIM, "cosine")
    emu.faults.add(op="upsert", kind="503", times=100)

    with pytest.raises(SinkUnavailable) as unavailable:
        sink.upsert(records_of([handmade("call-1", 2)]))

    assert len(emu.requests_for("upsert")) == 3 and len(sleeps) == 2
    assert stored_ids(emu) == set()
    assert type(unavailable.value).__module__ == "worker.errors"

    emu.faults.clear()
    emu.faults.add(op="query", kind="429", times=100, retry_after_s=4)
    with pytest.raises(SinkUnavailable) as throttled:
        sink.query(np.ones(MODEL_DIM, dtype=np.float32), 1, QueryFilter())
    assert throttled.value.retry_after_s == 4


def test_the_sdks_own_retries_are_disabled(emu, make_sink):
    retried: list[BaseException] = []
    sink = make_sink(on_retry=lambda exc, _s: retried.append(exc))
    sink.ensure(MODEL_DIM, "cosine")
    emu.faults.add(op="upsert", kind="503", times=1)

    sink.upsert(records_of([handmade("call-1", 1)]))

    assert [r.status for r in emu.requests_for("upsert")] == [503, 200]
    assert len(retried) == 1 and isinstance(retried[0], SinkUnavailable)  # the retry was ours

    once = make_sink(retry=RetryConfig(max_attempts=1))
    emu.faults.add(op="upsert", kind="503", times=1)
    with pytest.raises(SinkUnavailable):
        once.upsert(records_of([handmade("call-2", 1)]))
    assert [r.status for r in emu.requests_for("upsert")] == [503, 200, 503]  # one attempt, one request


def test_the_sdks_retry_budget_cannot_stop_our_retries(emu, make_sink):
    sink = make_sink(retry=RetryConfig(max_attempts=10, initial_backoff_s=0.01))
    sink.ensure(MODEL_DIM, "cosine")
    sdk_http.get_budget_registry()._reset()
    for call in range(7):  # 63 failures: the SDK's per-host budget stops its retries after ~50
        emu.faults.add(op="upsert", kind="503", times=9)
        assert sink.upsert(records_of([handmade(f"call-{call}", 1)])).written == 1

    statuses = [r.status for r in emu.requests_for("upsert")]
    assert statuses.count(503) == 63 and statuses.count(200) == 7
    assert not sdk_http.get_budget_registry().get("127.0.0.1").allows_retry()  # spent, irrelevant


def test_disabling_sdk_retries_is_guarded(sink, caplog):
    transport = sink._data()._http._client._transport
    assert transport._config.max_retries == 0

    with caplog.at_level(logging.WARNING, logger="worker.sinks.pinecone"):
        assert disable_sdk_retries(object()) is False
    assert "could not be disabled" in caplog.text


# --------------------------------------------------------------------------- permanent faults


def test_a_refused_record_is_rejected_alone_with_the_servers_message(emu, sink):
    records = records_of([handmade(f"call-{i}", 30) for i in range(10)])
    bad = records[137].id
    emu.faults.add(op="upsert", kind="reject_ids", ids={bad}, message="metadata field is cursed")
    wrong_width = records_of([handmade("narrow", 1)], dim=8)  # a 400 the service itself gives

    outcome = sink.upsert(records + wrong_width)

    assert set(outcome.rejected) == {bad, "gong:narrow#0"}
    assert "metadata field is cursed" in outcome.rejected[bad]
    assert "dimension" in outcome.rejected["gong:narrow#0"]
    assert outcome.written == 300 - 1
    assert stored_ids(emu) == {r.id for r in records} - {bad}
    assert len(emu.requests_for("upsert")) <= 2 + 4 * math.ceil(math.log2(300))  # bisected

