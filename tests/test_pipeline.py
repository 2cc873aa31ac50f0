"""validate → reduce → guard → chunk → embed → write (worker/pipeline.py), on the local store.

The sample stream is applied once per session (``indexed_stream``); the version, delete and
shrink rules are checked on small synthetic documents with the session's model.
"""

from __future__ import annotations

import uuid
from collections import defaultdict

import numpy as np
import pytest

from conftest import (COLLECTIONS, apply_stream, flow_uuid, load_stream, make_config, seed_cache)
from worker.config import BindingConfig
from worker.documents import Binding
from worker.ids import document_id

GITHUB = "sophia-ai/github-enriched"
PRESETS = {"sophia-ai/gong-calls-enriched": "gong_call",
           "sophia-ai/slack-messages-enriched": "slack_message",
           GITHUB: "github_document"}
T0 = 1_795_000_000.0


# -- what the stream says, computed without the worker ---------------------------------------------

def stream_truth() -> dict[str, dict]:
    """doc_id -> the newest version of its key in the stream (by uuid time, then tick counter)."""
    newest: dict[str, dict] = {}
    for collection, preset in PRESETS.items():
        binding = Binding(BindingConfig(collection=collection, preset=preset))
        for raw in load_stream(collection):
            key = tuple(str(raw[p.lstrip("/")]) for p in binding.key_pointers)
            doc_id = document_id(binding.source, key)
            u = uuid.UUID(raw["_meta"]["uuid"])
            clock = (u.time, u.clock_seq >> 10)
            if doc_id not in newest or clock > newest[doc_id]["clock"]:
                newest[doc_id] = {"raw": raw, "clock": clock, "version": (u.time << 4) | (u.clock_seq >> 10)}
    return newest


def rows_by_doc(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        out[r["doc_id"]].append(r)
    return out


def test_the_stream_holds_the_cases_these_tests_rely_on():
    """Deletes, edits and an out-of-order older version: otherwise the next test proves little."""
    deleted = [d for d, t in stream_truth().items() if t["raw"]["_meta"]["op"] == "d"]
    assert len(deleted) >= 2
    late = 0
    for collection in COLLECTIONS:
        seen: dict[str, int] = {}
        for raw in load_stream(collection):
            key = str(sorted((k, v) for k, v in raw.items() if k in ("id", "call_id", "channel_id", "ts")))
            t = uuid.UUID(raw["_meta"]["uuid"]).time
            late += key in seen and t < seen[key]
            seen[key] = max(t, seen.get(key, 0))
    assert late >= 1


def test_store_holds_exactly_the_newest_live_version_of_every_key(indexed_stream):
    truth = stream_truth()
    stored = rows_by_doc(indexed_stream.sink.rows())
    assert indexed_stream.dead_lettered == 0
    for doc_id, t in truth.items():
        rows = stored.get(doc_id, [])
        if t["raw"]["_meta"]["op"] == "d":
            assert rows == [], f"{doc_id} was deleted but has {len(rows)} rows"
            continue
        raw = t["raw"]
        has_text = any(isinstance(raw.get(f), (str, list)) and raw.get(f) and str(raw.get(f)).strip()
                       for f in ("text", "body", "transcript"))
        if not has_text:
            assert rows == [], doc_id
            continue
        assert rows, f"{doc_id} is live but has no rows"
        count = rows[0]["chunk_count"]
        assert sorted(r["chunk_index"] for r in rows) == list(range(count)), doc_id  # no stale tail
        assert {r["version"] for r in rows} == {f"{t['version']:020d}"}, doc_id  # the newest won
        assert {r["chunk_count"] for r in rows} == {count}
    assert set(stored) <= set(truth)


def test_empty_document_is_recorded_not_dead_lettered(indexed_stream):
    truth = stream_truth()
    empty = [d for d, t in truth.items() if t["raw"]["_meta"]["op"] != "d"
             and "body" in t["raw"] and not t["raw"]["body"]]
    assert empty, "the stream should hold a GitHub document with a null body"
    held = indexed_stream.runtime.writers["local"].stored(empty)
    for doc_id in empty:
        assert held[doc_id].chunk_count == 0 and not held[doc_id].deleted
    assert indexed_stream.runtime.dead_letters.count() == 0


def test_stored_vectors_equal_sentence_transformers_encode(indexed_stream, embedder):
    rows = indexed_stream.sink.rows()
    rng = np.random.default_rng(3)
    sample = [rows[i] for i in rng.choice(len(rows), size=12, replace=False)]
    sample = [r for r in sample if not r["text"].endswith("…")]  # text trimmed for metadata
    stored = np.array([r["vector"] for r in sample], dtype=np.float32)
    reference = embedder.model.encode([r["text"] for r in sample], normalize_embeddings=True)
    assert np.sum(stored * reference, axis=1).min() >= 0.999


def test_reindexing_the_stream_twice_gives_identical_rows(indexed_stream, runtime_factory, tmp_path,
                                                         stream_cache):
    # A second, fresh store; documents delivered in other groups. Same cache of vectors, so the
    # rows must be equal byte for byte: ids, text, metadata, versions and vectors.
    config = make_config(tmp_path / "second")
    seed_cache(stream_cache, config.state_dir)
    rt = runtime_factory(config)
    apply_stream(rt, group=1000)
    rows = rt.sinks["local"].rows()
    assert rows == indexed_stream.sink.rows()

    # Delivering the whole stream again into the same store changes nothing and embeds nothing.
    before = rt.engine.stats.chunks
    for collection in COLLECTIONS:
        docs, _ = rt.pipeline.validate(collection, load_stream(collection))
        stats = rt.pipeline.apply(docs)
        assert stats.written == 0 and stats.chunks == 0 and stats.deleted == 0
    assert rt.engine.stats.chunks == before
    assert rt.sinks["local"].rows() == rows


def test_uncached_reindex_reproduces_the_vectors(indexed_stream, runtime_factory, tmp_path):
    """The model path itself is reproducible (batches differ, so compare by cosine)."""
    slack = "sophia-ai/slack-messages-enriched"
    config = make_config(tmp_path / "nocache", embedding={"device": "cpu", "max_wait_ms": 5,
                                                          "cache_max_entries": 0})
    rt = runtime_factory(config)
    docs, _ = rt.pipeline.validate(slack, load_stream(slack))
    rt.pipeline.apply(docs)
    fresh = rt.sinks["local"].rows()
    reference = [r for r in indexed_stream.sink.rows() if r["collection"] == slack]
    assert [r["id"] for r in fresh] == [r["id"] for r in reference]
    for a, b in zip(fresh, reference):
        assert {k: v for k, v in a.items() if k != "vector"} == {k: v for k, v in b.items() if k != "vector"}
        assert float(np.dot(a["vector"], b["vector"])) >= 0.9999


# -- synthetic documents -------------------------------------------------------------------------

def issue(at: float, sections: int | None, *, op: str = "u", counter: int = 0, id_: str = "I_1",
          label: str = "bug") -> dict:
    """A GitHub issue whose body has ``sections`` headed sections (one chunk each); None = null body."""
    doc = {"_meta": {"uuid": flow_uuid(at, counter), "op": op}, "id": id_}
    if op == "d":
        return doc
    body = None if sections is None else "\n\n".join(
        f"## Part {i}\n\nPart {i} of issue {id_} talks about renewal topic {i}." for i in range(sections))
    doc.update(kind="issue", repo="sophia-ai/ai-memory", number=1, title=f"Issue {id_}",
               body=body, labels=[label])
    return doc


def run(rt, *raws):
    docs, rejected = rt.pipeline.validate(GITHUB, list(raws))
    return rt.pipeline.apply(docs), rejected


def rows_of(rt, id_: str = "I_1") -> list[dict]:
    return [r for r in rt.sinks["local"].rows() if r["doc_id"] == f"github:{id_}"]


def test_delete_removes_every_chunk_of_its_document(runtime_factory):
    rt = runtime_factory()
    run(rt, issue(T0, 5), issue(T0, 3, id_="I_2"))
    assert len(rows_of(rt)) == 5
    stats, _ = run(rt, issue(T0 + 1, None, op="d"))
    assert stats.deleted == 1 and stats.chunks == 0
    assert rows_of(rt) == []
    assert len(rows_of(rt, "I_2")) == 3  # other documents untouched
    assert rt.writers["local"].stored(["github:I_1"])["github:I_1"].deleted


@pytest.mark.parametrize("new_sections", [2, 0, None])
def test_a_shrinking_document_leaves_no_stale_chunks(runtime_factory, new_sections):
    rt = runtime_factory()
    run(rt, issue(T0, 6))
    stats, rejected = run(rt, issue(T0 + 1, new_sections))
    rows = rows_of(rt)
    assert rejected == 0 and rt.dead_letters.count() == 0
    assert sorted(r["chunk_index"] for r in rows) == list(range(new_sections or 0))
    assert {r["chunk_count"] for r in rows} <= {new_sections}
    assert all("Part 5" not in r["text"] for r in rows)


def test_a_growing_then_shrinking_document_tracks_each_version(runtime_factory):
    rt = runtime_factory()
    for i, n in enumerate([2, 7, 3, 3, 1]):
        run(rt, issue(T0 + i, n))
        assert sorted(r["chunk_index"] for r in rows_of(rt)) == list(range(n))


def test_older_version_in_the_same_request_loses(runtime_factory):
    rt = runtime_factory()
    run(rt, issue(T0 + 10, 2, label="newer"), issue(T0, 5, label="older"))
    rows = rows_of(rt)
    assert len(rows) == 2 and all(r["labels"] == ["newer"] for r in rows)


def test_tick_counter_orders_versions_with_the_same_timestamp(runtime_factory):
    rt = runtime_factory()
    run(rt, issue(T0, 2, counter=3, label="third"))
    stats, _ = run(rt, issue(T0, 5, counter=2, label="second"))
    assert stats.skipped_stale == 1
    assert all(r["labels"] == ["third"] for r in rows_of(rt)) and len(rows_of(rt)) == 2


def test_older_version_arriving_later_changes_nothing(runtime_factory):
    rt = runtime_factory()
    run(rt, issue(T0 + 10, 2, label="newer"))
    before = rt.sinks["local"].rows()
    stats, _ = run(rt, issue(T0, 5, label="older"))
    assert stats.skipped_stale == 1 and stats.written == 0 and stats.chunks == 0
    assert rt.sinks["local"].rows() == before
    stats, _ = run(rt, issue(T0 + 10, 2, label="newer"))  # the same version again: a duplicate
    assert stats.skipped_stale == 1 and rt.sinks["local"].rows() == before


def test_older_version_after_a_restart_changes_nothing(runtime_factory, tmp_path):
    config = make_config(tmp_path)
    first = runtime_factory(config)
    run(first, issue(T0 + 10, 2, label="newer"), issue(T0 + 10, None, op="d", id_="I_2"))
    before = first.sinks["local"].rows()
    first.close()

    restarted = runtime_factory(config)  # a new process on the same state_dir and store
    stats, _ = run(restarted, issue(T0, 5, label="older"), issue(T0, 3, id_="I_2"))
    assert stats.skipped_stale == 2 and stats.chunks == 0
    assert restarted.sinks["local"].rows() == before
    assert rows_of(restarted, "I_2") == []  # the tombstone survived the restart


def test_version_guard_falls_back_to_the_store_when_the_ledger_is_lost(runtime_factory, tmp_path):
    config = make_config(tmp_path)
    first = runtime_factory(config)
    run(first, issue(T0 + 10, 2, label="newer"))
    before = first.sinks["local"].rows()
    first.close()
    fresh_state = make_config(tmp_path, state_dir=str(tmp_path / "other-state"))
    rt = runtime_factory(fresh_state)  # same store, empty ledger: versions come from chunk 0
    stats, _ = run(rt, issue(T0, 5, label="older"))
    assert stats.skipped_stale == 1 and rt.sinks["local"].rows() == before


def test_recreate_after_delete_works_and_an_older_create_does_not(runtime_factory, tmp_path):
    config = make_config(tmp_path)
    rt = runtime_factory(config)
    run(rt, issue(T0, 3))
    run(rt, issue(T0 + 5, None, op="d"))
    stats, _ = run(rt, issue(T0 + 1, 3, op="c"))  # older than the delete: stays deleted
    assert stats.skipped_stale == 1 and rows_of(rt) == []
    rt.close()
    rt = runtime_factory(config)
    stats, _ = run(rt, issue(T0 + 9, 4, op="c", label="reborn"))
    rows = rows_of(rt)
    assert stats.written == 1 and len(rows) == 4 and all(r["labels"] == ["reborn"] for r in rows)


def test_delete_and_recreate_in_one_request_keeps_the_newest(runtime_factory):
    rt = runtime_factory()
    run(rt, issue(T0, 3))
    run(rt, issue(T0 + 1, None, op="d"), issue(T0 + 2, 2, op="c"))
    assert len(rows_of(rt)) == 2
    run(rt, issue(T0 + 4, None, op="d"), issue(T0 + 3, 2, op="c"))
    assert rows_of(rt) == []


def test_invalid_documents_are_dead_lettered_and_the_rest_applied(runtime_factory):
    rt = runtime_factory()
    bad_uuid = issue(T0, 2, id_="I_bad")
    bad_uuid["_meta"]["uuid"] = str(uuid.uuid4())
    no_key = issue(T0, 2)
    del no_key["id"]
    stats, rejected = run(rt, issue(T0, 2), bad_uuid, no_key, issue(T0, 1, id_="I_3"))
    assert rejected == 2 and stats.written == 2
    letters = rt.dead_letters.list()
    assert [(e.stage, e.collection) for e in letters] == [("validate", GITHUB)] * 2
    assert "'/_meta/uuid'" in letters[0].reason and "I_bad" in letters[0].reason
    assert "'/id'" in letters[1].reason
    assert letters[0].raw == bad_uuid  # kept whole, for replay


def test_metadata_only_change_rewrites_rows_without_the_model(runtime_factory):
    rt = runtime_factory()
    run(rt, issue(T0, 3, label="bug"))
    vectors_before = [r["vector"] for r in rows_of(rt)]
    embedded = rt.engine.stats.chunks
    stats, _ = run(rt, issue(T0 + 1, 3, label="wontfix"))
    assert stats.written == 1
    assert rt.engine.stats.chunks == embedded  # cache hit: no model time
    rows = rows_of(rt)
    assert all(r["labels"] == ["wontfix"] for r in rows)
    assert [r["vector"] for r in rows] == vectors_before
