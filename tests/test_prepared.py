"""The prepared store: records committed with the spool entries they cover, per-sink cursors,
a byte budget, and the pending view the preparer reads."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from test_spool import Clock, body, open_spool
from worker.prepared import PreparedStore, decode_record, encode_record
from worker.records import Chunk, ChunkedDocument, FlowDocument, PreparedRecord

MiB = 1024 * 1024
DIM = 4
SLACK = "sophia-ai/slack-messages-enriched"


def doc(key: str, version: int, *, op: str = "u") -> FlowDocument:
    return FlowDocument(collection=SLACK, source="slack", key=("C1", key), doc_id=f"slack:C1/{key}", op=op,
                        uuid="u", version=version, published_at=1.5, title="#deal", url="https://x",
                        context="#deal", chunker="slack", metadata={"channel_name": "deal", "labels": ["a"]})


def record(*versions: tuple[str, int], chunks: int = 2, op: str = "u") -> PreparedRecord:
    docs, vectors = [], {}
    for key, version in versions:
        d = doc(key, version, op=op)
        cs = tuple(Chunk(d.doc_id, i, f"{key} chunk {i}", (101, 7 + i, version % 1000, 102), f"h-{key}-{i}-{version}")
                   for i in range(0 if op == "d" else chunks))
        for c in cs:
            vectors[c.content_hash] = np.full(DIM, c.index + 0.5, dtype=np.float32)
        docs.append(ChunkedDocument(d, cs, f"t-{key}-{version}" if cs else "", "m" if cs else ""))
    return PreparedRecord(docs, vectors)


def open_store(spool, sinks=("local", "pinecone"), max_bytes=64 * MiB, clock=None) -> PreparedStore:  # noqa: ANN001
    return PreparedStore(spool, sinks=list(sinks), max_bytes=max_bytes, dimensions=DIM,
                         **({"clock": clock} if clock else {}))


def commit(store, spool, rec, n_entries: int = 1) -> int:  # noqa: ANN001
    seqs = [spool.append(SLACK, body(i), 1) for i in range(n_entries)]
    return store.commit(rec, spool_first=seqs[0], spool_last=seqs[-1], received_at=1000.0)


def test_a_record_round_trips_through_its_stored_form():
    rec = record(("1", 5), ("2", 6), chunks=3)
    back = decode_record(*encode_record(rec), dimensions=DIM)
    assert back.documents == rec.documents
    assert set(back.vectors) == set(rec.vectors)
    for h, v in rec.vectors.items():
        np.testing.assert_array_equal(back.vectors[h], v)


def test_commit_stores_the_record_and_removes_its_spool_entries_in_one_step(tmp_path):
    spool = open_spool(tmp_path)
    store = open_store(spool)
    left = spool.append(SLACK, body(9), 1)  # not covered by the record
    first = spool.append(SLACK, body(0), 1)
    last = spool.append(SLACK, body(1), 1)
    seq = store.commit(record(("1", 5)), spool_first=first, spool_last=last, received_at=1.0)
    assert seq > 0 and [e.seq for e in spool.read(limit=10)] == [left]
    assert spool.bytes == len(body(9)) and store.bytes > 0
    assert store.prepared_through() == last
    [got] = store.read("local")
    assert got.seq == seq and (got.spool_first, got.spool_last) == (first, last)
    assert [cd.document.doc_id for cd in got.documents] == ["slack:C1/1"]


def test_each_sink_has_its_own_durable_cursor_and_a_record_leaves_once_all_confirmed(tmp_path):
    spool = open_spool(tmp_path)
    store = open_store(spool)
    s = [commit(store, spool, record((str(i), i + 1))) for i in range(3)]
    store.confirm("local", s[2])
    assert [r.seq for r in store.read("local", limit=10)] == []
    assert [r.seq for r in store.read("pinecone", limit=10)] == s
    backlogs = store.backlogs()
    assert (backlogs["local"].records, backlogs["pinecone"].records) == (0, 3)
    store.close()

    store = open_store(spool)  # cursors survive a restart
    assert [r.seq for r in store.read("pinecone", limit=2)] == s[:2]
    store.confirm("pinecone", s[0])
    assert store.backlogs()["pinecone"].records == 2
    store.confirm("local", s[0])  # a stale confirmation never moves a cursor back
    assert store.read("local") == []
    store.confirm("pinecone", s[2])
    assert store.bytes == 0 and store.backlogs()["pinecone"].records == 0


def test_delivered_spool_seq_is_what_every_sink_holds(tmp_path):
    spool = open_spool(tmp_path)
    store = open_store(spool)
    a = commit(store, spool, record(("1", 1)), n_entries=2)
    b = commit(store, spool, record(("2", 2)))
    first_b = store.read("local", limit=2)[1].spool_first
    assert store.delivered_spool_seq() == store.read("local")[0].spool_first - 1
    store.confirm("local", b)
    store.confirm("pinecone", a)
    assert store.delivered_spool_seq() == first_b - 1
    store.confirm("pinecone", b)
    assert store.delivered_spool_seq() == store.prepared_through()
    # an entry whose documents were all skipped still counts as delivered
    skipped = spool.append(SLACK, body(5), 1)
    store.commit(PreparedRecord([], {}), spool_first=skipped, spool_last=skipped, received_at=0.0)
    assert store.delivered_spool_seq() == skipped


def test_a_sink_added_later_gets_what_is_still_held_and_a_removed_one_holds_nothing(tmp_path):
    spool = open_spool(tmp_path)
    store = open_store(spool, sinks=["local", "pinecone"])
    s = [commit(store, spool, record((str(i), i + 1))) for i in range(3)]
    store.confirm("local", s[0])
    store.confirm("pinecone", s[0])
    store.close()

    store = open_store(spool, sinks=["local", "weaviate"])  # pinecone removed, weaviate added
    assert [r.seq for r in store.read("weaviate", limit=10)] == s[1:]
    store.confirm("local", s[2])
    store.confirm("weaviate", s[2])
    assert store.bytes == 0


def test_errors_show_per_sink_until_the_next_confirmation(tmp_path):
    clock = Clock()
    spool = open_spool(tmp_path)
    store = open_store(spool, clock=clock)
    seq = commit(store, spool, record(("1", 1)))
    clock.now += 42
    store.record_error("pinecone", "SinkUnavailable: 503 from the index")
    backlogs = store.backlogs()
    assert backlogs["pinecone"].last_error == "SinkUnavailable: 503 from the index"
    assert backlogs["pinecone"].error_at == clock.now and backlogs["local"].last_error is None
    store.confirm("pinecone", seq)
    assert store.backlogs()["pinecone"].last_error is None


def test_pending_shows_the_newest_prepared_version_until_every_sink_has_it(tmp_path):
    spool = open_spool(tmp_path)
    store = open_store(spool)
    a = commit(store, spool, record(("1", 5)))
    b = commit(store, spool, record(("1", 7), ("2", 3)))
    c = commit(store, spool, record(("1", 6)))  # an older version prepared later never wins
    pending = store.pending(["slack:C1/1", "slack:C1/2", "slack:C1/9"])
    assert set(pending) == {"slack:C1/1", "slack:C1/2"}
    assert (pending["slack:C1/1"].seq, pending["slack:C1/1"].stored.version) == (b, 7)
    for sink in ("local", "pinecone"):
        store.confirm(sink, c)
    assert store.pending(["slack:C1/1"]) == {}
    assert a < b < c


def test_the_budget_says_full_while_the_slowest_sink_is_that_far_behind(tmp_path):
    spool = open_spool(tmp_path)
    store = open_store(spool, max_bytes=MiB)
    seqs = []
    while not store.full():
        seqs.append(commit(store, spool, record(*[(f"{len(seqs)}-{i}", 1) for i in range(50)], chunks=20)))
    store.confirm("local", seqs[-1])
    assert store.full()  # pinecone has not caught up
    store.confirm("pinecone", seqs[-1])
    assert not store.full() and store.bytes == 0


def test_a_failed_commit_leaves_no_open_transaction_and_the_entries_in_the_spool(tmp_path):
    """If commit() fails midway (disk full, I/O error), nothing half-applies and later
    appends and commits still work."""
    spool = open_spool(tmp_path)
    store = open_store(spool)
    seq = spool.append(SLACK, body(0), 1)
    store._conn.execute("CREATE TRIGGER fail_delete BEFORE DELETE ON entries "
                        "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    with pytest.raises(sqlite3.DatabaseError):
        store.commit(record(("1", 1)), spool_first=seq, spool_last=seq, received_at=0.0)
    store._conn.execute("DROP TRIGGER fail_delete")
    assert store.read("local") == [] and store.bytes == 0
    appended = spool.append(SLACK, body(1), 1)
    assert store.commit(record(("1", 1)), spool_first=seq, spool_last=appended, received_at=0.0) > 0

    other = sqlite3.connect(str(tmp_path / "spool.sqlite"))  # what a restart would find
    try:
        held = [r[0] for r in other.execute("SELECT seq FROM entries")]
        records = other.execute("SELECT count(*) FROM prepared").fetchone()[0]
    finally:
        other.close()
    assert held == [] and records == 1
    assert store.read("local")[0].documents[0].document.key == ("C1", "1")


def test_kafka_data_can_be_dropped_by_origin_and_a_pass_over_dropped_entries_stores_nothing(tmp_path):
    """The broker is the durable log for Kafka data: a partition handed to another worker is
    dropped here, and a prepare pass that read those entries before the drop commits nothing."""
    spool = open_spool(tmp_path)
    store = open_store(spool)
    hook = spool.append(SLACK, body(0), 1)  # webhook data is never dropped
    p0 = [spool.append(SLACK, body(i), 1, origin="kafka:t:0") for i in range(2)]
    p1 = spool.append(SLACK, body(3), 1, origin="kafka:t:1")
    kept = store.commit(record(("w", 1)), spool_first=hook, spool_last=hook, received_at=0.0)
    gone = store.commit(record(("k", 1)), spool_first=p0[0], spool_last=p0[0], received_at=0.0,
                        origin="kafka:t:0", entries=1)
    assert [e.origin for e in spool.read(limit=10)] == ["kafka:t:0", "kafka:t:1"]

    assert store.purge("kafka:t:0") == 1 and spool.purge("kafka:t:0") == 1
    assert [e.seq for e in spool.read(limit=10)] == [p1]
    assert [r.seq for r in store.read("local", limit=10)] == [kept]
    assert store.pending(["slack:C1/k"]) == {} and gone > kept
    # a pass that had read p0[1] before the drop: its record is not stored
    assert store.commit(record(("late", 1)), spool_first=p0[1], spool_last=p0[1], received_at=0.0,
                        origin="kafka:t:0", entries=1) == 0
    assert [r.seq for r in store.read("local", limit=10)] == [kept]
    assert spool.purge("kafka:") == 1 and spool.depth() == 0 and spool.bytes == 0


def test_an_old_spool_without_origins_is_read_as_webhook_data(tmp_path):
    old = sqlite3.connect(str(tmp_path / "spool.sqlite"))
    old.execute("CREATE TABLE entries (seq INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL, "
                "received_at REAL NOT NULL, documents INTEGER NOT NULL, bytes INTEGER NOT NULL, body BLOB NOT NULL)")
    old.execute("INSERT INTO entries (collection, received_at, documents, bytes, body) VALUES (?,?,?,?,?)",
                (SLACK, 1.0, 1, 3, b"[1]"))
    old.commit()
    old.close()
    spool = open_spool(tmp_path)
    [entry] = spool.read(limit=10)
    assert entry.origin == "webhook" and spool.bytes == 3


# -- the payload split (accept latency): payloads in their own file, pointers in the spool's -----

def payload_ids(tmp_path) -> list[int]:  # noqa: ANN001
    other = sqlite3.connect(str(tmp_path / "prepared-payloads.sqlite"))
    try:
        return [r[0] for r in other.execute("SELECT id FROM payloads ORDER BY id")]
    finally:
        other.close()


def test_payloads_live_in_their_own_file_and_leave_with_their_record(tmp_path):
    spool = open_spool(tmp_path)
    store = open_store(spool, sinks=("local",))
    seq = commit(store, spool, record(("1", 1), chunks=3))
    assert len(payload_ids(tmp_path)) == 1
    other = sqlite3.connect(str(tmp_path / "spool.sqlite"))
    try:  # the shared file holds only the pointer
        assert other.execute("SELECT length(meta) + length(vectors), payload FROM prepared").fetchone() == (0, 1)
    finally:
        other.close()
    assert store.read("local")[0].documents[0].chunks[2].text == "1 chunk 2"
    store.confirm("local", seq)
    assert payload_ids(tmp_path) == [] and store.read("local") == []


def test_a_payload_a_crash_left_without_its_pointer_is_dropped_at_start(tmp_path):
    spool = open_spool(tmp_path)
    store = open_store(spool, sinks=("local",))
    kept = commit(store, spool, record(("1", 1)))
    store._store_payload(*encode_record(record(("2", 1))))  # the crash: payload fsynced, no pointer
    assert len(payload_ids(tmp_path)) == 2
    store.close()
    reopened = open_store(spool, sinks=("local",))
    assert len(payload_ids(tmp_path)) == 1
    [got] = reopened.read("local")
    assert got.seq == kept and got.documents[0].document.doc_id == "slack:C1/1"


def test_a_failed_pointer_commit_drops_its_payload(tmp_path):
    spool = open_spool(tmp_path)
    store = open_store(spool)
    seq = spool.append(SLACK, body(0), 1)
    store._conn.execute("CREATE TRIGGER fail_delete BEFORE DELETE ON entries "
                        "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    with pytest.raises(sqlite3.DatabaseError):
        store.commit(record(("1", 1)), spool_first=seq, spool_last=seq, received_at=0.0)
    assert payload_ids(tmp_path) == []


def test_a_record_stored_inline_before_the_split_is_still_read(tmp_path):
    spool = open_spool(tmp_path)
    store = open_store(spool, sinks=("local",))
    meta, tokens, vectors = encode_record(record(("7", 3)))
    store._conn.execute("INSERT INTO prepared (spool_first, spool_last, received_at, created_at, bytes, documents, "
                        "chunks, meta, tokens, vectors) VALUES (1, 1, 0, 0, 10, 1, 2, ?, ?, ?)",
                        (meta, tokens, vectors))
    [got] = store.read("local")
    assert got.documents[0].document.doc_id == "slack:C1/7" and len(got.vectors) == 2


def test_an_append_never_waits_for_a_payload_being_written(tmp_path):
    """The payload write holds only the payload file; the spool's writer stays free."""
    import threading

    spool = open_spool(tmp_path)
    store = open_store(spool)
    with store._payload_lock:  # a payload write in progress, as long as the test wants
        done = threading.Event()
        threading.Thread(target=lambda: (spool.append(SLACK, body(1), 1), done.set()), daemon=True).start()
        assert done.wait(5), "append waited for the payload write"
