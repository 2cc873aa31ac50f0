"""All three sinks together, through the real clients against the wire-level emulators.

The invariants a user relies on: every sink ends with the same rows as the local store; transient
faults cost only time; a sink that is down delays only itself and catches up without
re-embedding; re-delivering the stream writes nothing and calls no model.
"""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from tests.conftest import COLLECTIONS, load_stream, make_config, seed_cache
from tests.emulators.pinecone import PineconeEmulator
from tests.emulators.weaviate import WeaviateEmulator
from worker.fields import PRESET_FIELDS

INDEX = "memory"
FIELDS = sorted({n for fields in PRESET_FIELDS.values() for n in fields} | {"quality_flags"})
WEAVIATE_COLLECTION = "MemoryChunk"


@pytest.fixture
def emulators():
    try:
        from pinecone._internal.http_client import get_budget_registry

        get_budget_registry()._reset()  # the SDK's per-host budget is process-global
    except (ImportError, AttributeError):
        pass
    with PineconeEmulator(seed=1) as pc, WeaviateEmulator(seed=1) as wv:
        yield pc, wv


def three_sink_config(tmp_path, pc, wv, **overrides):
    host = pc.create_index(INDEX, 384, "cosine")
    sinks = {
        "local": {"path": str(tmp_path / "lancedb")},
        "pinecone": {"api_key": "test-key", "index": INDEX, "index_host": host,
                     "controller_host": pc.control_url, "timeout_s": 2.0},
        "weaviate": {"url": wv.url, "grpc_host": "127.0.0.1", "grpc_port": wv.grpc_port,
                     "collection": WEAVIATE_COLLECTION, "timeout_s": 2.0},
    }
    retry = {"max_attempts": 8, "max_elapsed_s": 30, "initial_backoff_s": 0.01, "max_backoff_s": 0.05}
    return make_config(tmp_path, sinks=sinks, retry=retry, **overrides)


def apply_stream(rt, collections=COLLECTIONS):
    for collection in collections:
        docs, rejected = rt.pipeline.validate(collection, load_stream(collection))
        assert rejected == 0
        rt.pipeline.apply(docs)


def local_rows(rt):
    return {r["id"]: r for r in rt.sinks["local"].rows()}


def assert_same_as_local(rt, pc, wv):
    expected = local_rows(rt)
    assert expected, "the local store is empty"
    pine = pc.vectors(INDEX)
    assert set(pine) == set(expected)
    weav = wv.objects(WEAVIATE_COLLECTION)
    assert set(weav) == {r["uuid"] for r in expected.values()}
    for rid, row in expected.items():
        values, meta = pine[rid]
        np.testing.assert_allclose(values, row["vector"], atol=1e-6)
        vector, props = weav[row["uuid"]]
        np.testing.assert_allclose(vector, row["vector"], atol=1e-6)
        for key in ("doc_id", "source", "collection", "content_hash", "text_hash", "meta_hash",
                    "version", "title", "url", "text"):
            assert meta[key] == row[key], (rid, key)
            assert props[key] == row[key], (rid, key)
        for key in FIELDS:  # the typed metadata fields: a key, a property and a column each
            if row[key] is None:
                assert key not in meta and props.get(key) is None, (rid, key)
            elif isinstance(row[key], float):
                assert meta[key] == pytest.approx(row[key]) and props[key] == pytest.approx(row[key]), (rid, key)
            else:
                assert meta[key] == row[key] and props[key] == row[key], (rid, key)
        for key in ("chunk_index", "chunk_count"):
            assert int(meta[key]) == row[key] and int(props[key]) == row[key], (rid, key)
        assert float(meta["published_at"]) == pytest.approx(row["published_at"])
        assert float(props["published_at"]) == pytest.approx(row["published_at"])


def test_stream_lands_identically_in_every_sink(tmp_path, emulators, runtime_factory, stream_cache):
    pc, wv = emulators
    config = three_sink_config(tmp_path, pc, wv)
    seed_cache(stream_cache, config.state_dir)
    rt = runtime_factory(config)
    apply_stream(rt)
    assert_same_as_local(rt, pc, wv)
    assert rt.dead_letters.count() == 0


def test_transient_faults_cost_only_time(tmp_path, emulators, runtime_factory, stream_cache):
    pc, wv = emulators
    config = three_sink_config(tmp_path, pc, wv)
    seed_cache(stream_cache, config.state_dir)
    pc.faults.add(op="*", kind="503", rate=0.2)
    wv.faults.add(op="batch_objects", kind="unavailable", rate=0.2)
    wv.faults.add(op="batch_delete", kind="unavailable", rate=0.2)
    rt = runtime_factory(config)
    apply_stream(rt)
    pc.faults.clear()
    wv.faults.clear()
    assert rt.dead_letters.count() == 0
    assert_same_as_local(rt, pc, wv)
    faulted = [r for r in pc.requests if r.fault] + [r for r in wv.requests if r.fault]
    assert faulted, "no fault was injected: the test proves nothing"


def test_a_permanent_error_dead_letters_only_the_bad_record(tmp_path, emulators, runtime_factory,
                                                            stream_cache):
    pc, wv = emulators
    config = three_sink_config(tmp_path, pc, wv)
    seed_cache(stream_cache, config.state_dir)
    bad = "slack:C024BE91L/1732550400.000200#0"
    rt = runtime_factory(config)
    slack = "sophia-ai/slack-messages-enriched"
    docs, _ = rt.pipeline.validate(slack, load_stream(slack))
    ids = sorted({f"{d.doc_id}#0" for d in docs if not d.is_delete})
    bad = ids[len(ids) // 2]
    pc.faults.add(op="upsert", kind="reject_ids", ids={bad}, message="metadata rejected: test")
    rt.pipeline.apply(docs)
    letters = rt.dead_letters.list()
    assert [e.stage for e in letters] == ["sink:pinecone"]
    assert bad in letters[0].reason and "metadata rejected: test" in letters[0].reason
    stored = pc.vectors(INDEX)
    assert bad not in stored
    assert set(stored) == set(local_rows(rt)) - {bad}


def later_uuid(u: str, *, seconds: float) -> str:
    """The same v1 UUID with its timestamp moved forward (a newer version of a document)."""
    import uuid as uuidlib

    p = uuidlib.UUID(u)
    t = p.time + int(seconds * 1e7)
    return str(uuidlib.UUID(fields=(t & 0xFFFFFFFF, (t >> 32) & 0xFFFF, ((t >> 48) & 0x0FFF) | 0x1000,
                                    p.clock_seq_hi_variant, p.clock_seq_low, p.node)))


def _wait(predicate, timeout_s=180.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_down_sink_delays_only_itself_and_catches_up_without_reembedding(tmp_path, emulators,
                                                                         service_factory):
    pc, wv = emulators
    config = three_sink_config(tmp_path, pc, wv)
    service = service_factory(config)
    rt = service.rt
    service.start()
    try:
        wv.set_down(True)
        slack = "sophia-ai/slack-messages-enriched"  # short messages: quick to embed live
        stream = load_stream(slack)
        for start in range(0, len(stream), 5):
            service.intake.accept(slack, orjson.dumps(stream[start:start + 5]))

        def behind():
            return {name: s["behind_entries"] for name, s in service.status_report()["sinks"].items()}

        assert _wait(lambda: behind()["local"] == 0 and behind()["pinecone"] == 0)
        assert behind()["weaviate"] > 0
        assert wv.objects(WEAVIATE_COLLECTION) == {}
        assert service.status_report()["sinks"]["weaviate"]["last_error"]
        embedded = rt.engine.stats.chunks
        assert embedded > 0
        wv.set_down(False)
        assert _wait(lambda: behind()["weaviate"] == 0)
        assert rt.engine.stats.chunks == embedded, "catching up re-embedded chunks"
        assert {r["uuid"] for r in local_rows(rt).values()} == set(wv.objects(WEAVIATE_COLLECTION))
        assert service.spool.depth() == 0
    finally:
        service.drain(10)


def test_redelivering_the_stream_calls_no_model_and_writes_no_vectors(tmp_path, emulators,
                                                                    runtime_factory, stream_cache):
    pc, wv = emulators
    config = three_sink_config(tmp_path, pc, wv)
    seed_cache(stream_cache, config.state_dir)
    rt = runtime_factory(config)
    apply_stream(rt)
    before_rows = local_rows(rt)
    upserts_pc = len([r for r in pc.requests if r.op == "upsert"])
    writes_wv = len([r for r in wv.requests if r.op == "batch_objects"])
    batches = rt.engine.stats.batches
    apply_stream(rt)
    # A fresh runtime on the same state (a restart) must not write either.
    rt2 = runtime_factory(config)
    apply_stream(rt2)
    assert rt.engine.stats.batches == batches and rt2.engine.stats.batches == 0
    assert len([r for r in pc.requests if r.op == "upsert"]) == upserts_pc
    assert len([r for r in wv.requests if r.op == "batch_objects"]) == writes_wv
    assert local_rows(rt2).keys() == before_rows.keys()


def test_metadata_only_change_does_not_reembed(tmp_path, emulators, runtime_factory):
    pc, wv = emulators
    config = three_sink_config(tmp_path, pc, wv)
    rt = runtime_factory(config)
    github = "sophia-ai/github-enriched"
    raws = [r for r in load_stream(github) if r.get("_meta", {}).get("op") != "d"][:3]
    docs, _ = rt.pipeline.validate(github, raws)
    rt.pipeline.apply(docs)
    chunks = rt.engine.stats.chunks
    changed = []
    for raw in raws:
        raw = dict(raw)
        raw["labels"] = ["relabelled"]
        meta = dict(raw["_meta"])
        meta["uuid"] = later_uuid(meta["uuid"], seconds=60)
        raw["_meta"] = meta
        changed.append(raw)
    docs, _ = rt.pipeline.validate(github, changed)
    rt.pipeline.apply(docs)
    assert rt.engine.stats.chunks == chunks, "a metadata-only change re-embedded"
    for rid, (values, meta) in pc.vectors(INDEX).items():
        assert meta["labels"] == ["relabelled"]
