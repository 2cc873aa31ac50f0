"""One pass for every sink: prepare once, keep the vectors until every sink has them, and the
failure paths of the loops. Real model, real sinks' clients against the emulators."""

from __future__ import annotations

import sqlite3
import time

import orjson
import pytest

from conftest import load_stream, make_config
from test_service import (GITHUB, SLACK, T0, WorkerProcess, free_port, github_doc, long_body,
                          slack_doc, write_config)
from test_sinks_all import INDEX, WEAVIATE_COLLECTION, emulators, three_sink_config  # noqa: F401

DEADLINE_S = 240.0  # a guard against hanging; never asserted on


def wait_for(predicate, what: str, timeout_s: float = DEADLINE_S):  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def behind(service) -> dict[str, int]:  # noqa: ANN001
    return {name: s["behind_entries"] for name, s in service.status_report()["sinks"].items()}


def newest_live(collection: str) -> list[dict]:
    """The stream's newest version of each key, deletes dropped: every version gets embedded."""
    from worker.config import BindingConfig
    from worker.documents import Binding

    preset = {SLACK: "slack_message", GITHUB: "github_document"}[collection]
    binding = Binding(BindingConfig(collection=collection, preset=preset))
    best: dict[str, tuple[int, dict]] = {}
    for raw in load_stream(collection):
        doc = binding.parse(raw)
        if doc.doc_id not in best or doc.version >= best[doc.doc_id][0]:
            best[doc.doc_id] = (doc.version, raw)
    return [raw for _, raw in best.values() if raw["_meta"].get("op") != "d"]


def unique_chunks(chunker, collection: str, raws: list[dict]) -> set[str]:  # noqa: ANN001
    """Content hashes of every chunk of ``raws``, computed here with the chunker directly."""
    from worker.config import BindingConfig
    from worker.documents import Binding

    preset = {SLACK: "slack_message", GITHUB: "github_document"}[collection]
    binding = Binding(BindingConfig(collection=collection, preset=preset))
    docs = [binding.parse(r) for r in raws]
    return {c.content_hash for cd in chunker.chunk(docs) for c in cd.chunks}


def post(service, collection: str, raws: list[dict], per_request: int = 4) -> None:  # noqa: ANN001
    for start in range(0, len(raws), per_request):
        service.intake.accept(collection, orjson.dumps(raws[start:start + per_request]))


def chunk_ids(service, pc, wv) -> dict[str, set[str]]:  # noqa: ANN001
    local = {r["id"] for r in service.rt.sinks["local"].rows()}
    uuid_to_id = {r["uuid"]: r["id"] for r in service.rt.sinks["local"].rows()}
    return {"local": local, "pinecone": set(pc.vectors(INDEX)),
            "weaviate": {uuid_to_id.get(u, u) for u in wv.objects(WEAVIATE_COLLECTION)}}


# -- prepare once --------------------------------------------------------------------------------

def test_three_sinks_without_the_cache_cost_one_model_row_per_unique_chunk(tmp_path, emulators,
                                                                          service_factory, chunker):
    pc, wv = emulators
    config = three_sink_config(tmp_path, pc, wv, embedding={"device": "cpu", "max_wait_ms": 5,
                                                            "cache_max_entries": 0})
    service = service_factory(config)
    slack, github = newest_live(SLACK), newest_live(GITHUB)[:4]
    expected = unique_chunks(chunker, SLACK, slack) | unique_chunks(chunker, GITHUB, github)
    service.start()
    post(service, SLACK, slack)
    post(service, GITHUB, github, per_request=1)
    wait_for(lambda: all(n == 0 for n in behind(service).values()), "every sink to catch up")

    assert service.rt.cache is None
    assert service.rt.engine.stats.chunks == len(expected)  # model rows == unique chunks
    ids = chunk_ids(service, pc, wv)
    assert ids["local"] and ids["local"] == ids["pinecone"] == ids["weaviate"]


def test_a_sink_down_for_a_while_catches_up_with_no_model_rows(tmp_path, emulators, service_factory,
                                                               chunker):
    pc, wv = emulators
    config = three_sink_config(tmp_path, pc, wv, embedding={"device": "cpu", "max_wait_ms": 5,
                                                            "cache_max_entries": 0})
    service = service_factory(config)
    wv.set_down(True)  # every call fails (connection refused / UNAVAILABLE)
    slack = newest_live(SLACK)
    service.start()
    post(service, SLACK, slack)
    wait_for(lambda: behind(service)["local"] == 0 and behind(service)["pinecone"] == 0,
             "the healthy sinks")
    status = service.status_report()["sinks"]["weaviate"]
    assert status["behind_entries"] > 0 and status["prepared_records"] > 0
    assert wait_for(lambda: service.status_report()["sinks"]["weaviate"]["last_error"], "the error")
    assert service.status_report()["sinks"]["weaviate"]["state"] == "failing"
    rows = service.rt.engine.stats.chunks
    assert rows == len(unique_chunks(chunker, SLACK, slack))

    wv.set_down(False)
    wait_for(lambda: behind(service)["weaviate"] == 0, "weaviate to catch up")
    assert service.rt.engine.stats.chunks == rows, "the catch-up ran the model"
    assert service.status_report()["sinks"]["weaviate"]["vectors_missing"] == 0
    ids = chunk_ids(service, pc, wv)
    assert ids["local"] == ids["pinecone"] == ids["weaviate"]
    assert service.prepared.bytes == 0  # every sink confirmed: the records are gone


def test_kill_9_between_prepare_and_write_embeds_nothing_twice(tmp_path, emulators):
    """Records prepared while a sink is down survive kill -9; after the restart the sinks are
    written from them, and the model is not run for any of those chunks again."""
    pc, wv = emulators
    host = pc.create_index(INDEX, 384, "cosine")
    port = free_port()
    sinks = {"local": {"path": str(tmp_path / "lancedb")},
             "pinecone": {"api_key": "test-key", "index": INDEX, "index_host": host, "timeout_s": 2.0}}
    cfg = write_config(tmp_path, port=port, embedding={"device": "cpu", "cache_max_entries": 0})
    data = __import__("yaml").safe_load(cfg.read_text())
    data.update(sinks=sinks, retry={"max_attempts": 2, "initial_backoff_s": 0.01, "max_backoff_s": 0.05},
                embedding={"device": "cpu", "max_wait_ms": 5, "cache_max_entries": 0, "backend": "torch"})
    cfg.write_text(__import__("yaml").safe_dump(data))
    pc.faults.add(op="upsert", kind="503", rate=1.0)  # pinecone refuses every write

    worker = WorkerProcess(cfg, port, tmp_path / "worker.log").start()
    docs = [github_doc(f"I_k{i}", long_body(f"topic{i}", 3), at=T0 + i) for i in range(4)]
    try:
        assert worker.client.post(GITHUB, docs).status_code == 200
        wait_for(lambda: worker.client.status()["sinks"]["local"]["behind_entries"] == 0, "local")
        before = worker.client.status()
        assert before["sinks"]["pinecone"]["prepared_records"] > 0 and before["spool"]["depth"] == 0
        embedded = before["engine"]["chunks"]
        assert embedded > 0
        worker.kill()

        pc.faults.clear()
        worker.start()
        wait_for(lambda: worker.client.status()["sinks"]["pinecone"]["behind_entries"] == 0, "pinecone")
        after = worker.client.status()
        assert after["engine"]["chunks"] == 0, "the restart re-embedded prepared chunks"
        assert worker.stop(timeout_s=30) == 0, worker.log()
    finally:
        worker.close()
    from test_service import local_rows

    local = {r["id"] for r in local_rows(tmp_path)}
    assert local and set(pc.vectors(INDEX)) == local
    assert {r.split("#")[0] for r in local} == {f"github:I_k{i}" for i in range(4)}


# -- honest failure paths -------------------------------------------------------------------------

def test_documents_that_no_longer_fit_their_binding_are_dead_lettered_at_revalidate(
        tmp_path, service_factory):
    tickets = "acme/support/tickets"
    before = make_config(tmp_path, bindings=[
        {"collection": SLACK, "preset": "slack_message"},
        {"collection": tickets, "source": "tickets", "key": ["/id"], "text": ["/body"]}])
    service = service_factory(before)
    ok = service.intake.accept(tickets, orjson.dumps([
        {"_meta": {"uuid": slack_doc("1", "x", at=T0)["_meta"]["uuid"], "op": "c"}, "id": "T-1",
         "body": "printer on fire", "ticket_no": "4711"}]))
    slack = service.intake.accept(SLACK, orjson.dumps([slack_doc("2.1", "still bound", at=T0)]))
    assert ok.accepted == 1 and slack.accepted == 1
    service.close()

    # The tickets binding now keys on a field the spooled document lacks; slack is unbound.
    after = make_config(tmp_path, bindings=[
        {"collection": tickets, "source": "tickets", "key": ["/number"], "text": ["/body"]}])
    service = service_factory(after)
    service.start()
    wait_for(lambda: service.spool.depth() == 0 and behind(service)["local"] == 0, "revalidation")
    letters = service.rt.dead_letters.list()
    assert sorted(e.collection for e in letters) == sorted([tickets, SLACK])
    assert {e.stage for e in letters} == {"revalidate"}
    by = {e.collection: e for e in letters}
    assert "key field is missing" in by[tickets].reason and "/number" in by[tickets].reason
    assert "no longer bound" in by[SLACK].reason and by[SLACK].raw["ts"] == "2.1"
    assert service.rt.sinks["local"].rows() == []


@pytest.mark.parametrize("store", ["ledger", "dead_letters"])
def test_a_failed_sqlite_write_rolls_back_and_the_next_write_succeeds(tmp_path, store):
    from worker.deadletter import DeadLetterStore
    from worker.ledger import Ledger
    from worker.records import StoredDocument

    if store == "ledger":
        obj, table = Ledger(tmp_path / "ledger.sqlite"), "documents"

        def write(n):  # noqa: ANN001, ANN202
            obj.record("local@x", [StoredDocument(f"d{n}", n, 1, "t", "m"),
                                   StoredDocument(f"e{n}", n, 1, "t", "m")])

        def count() -> int:
            return obj.count("local@x")
    else:
        obj, table = DeadLetterStore(tmp_path / "dl.sqlite"), "dead_letters"

        def write(n):  # noqa: ANN001, ANN202
            obj.add_many([("c", None, "validate", f"bad {n}", {"n": n}), ("c", None, "validate", "x", {})])

        def count() -> int:
            return obj.count()

    write(1)
    # The second row of the next write fails, like a full disk or a constraint would.
    obj._conn.execute(f"CREATE TRIGGER boom BEFORE INSERT ON {table} WHEN "
                      f"(SELECT count(*) FROM {table}) >= 3 BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(sqlite3.DatabaseError):
        write(2)
    assert not obj._conn.in_transaction
    assert count() == 2  # the failed write left nothing half-applied
    obj._conn.execute("DROP TRIGGER boom")
    write(3)
    assert count() == 4
    obj.close()


def test_a_misconfigured_sink_is_parked_and_reported_while_the_others_stay_fresh(
        tmp_path, emulators, service_factory):
    from test_service import parse_prometheus, serving

    pc, wv = emulators
    base = three_sink_config(tmp_path, pc, wv)
    wrong = pc.create_index("wrongdim", 8, "cosine")  # the wrong dimension for the 384-d model
    sinks = base.sinks.model_dump(mode="json")
    sinks["pinecone"].update(index="wrongdim", index_host=wrong, api_key="test-key")
    config = make_config(tmp_path, sinks=sinks, retry={"max_attempts": 2, "initial_backoff_s": 0.01,
                                                       "max_backoff_s": 0.05, "park_recheck_s": 0.3})
    service = service_factory(config)
    with serving(service) as client:
        client.post(SLACK, [slack_doc("3.1", "the others stay fresh", at=T0)])
        wait_for(lambda: behind(service)["local"] == 0 and behind(service)["weaviate"] == 0, "fresh sinks")
        status = wait_for(lambda: (s := client.status())["sinks"]["pinecone"]["state"] == "misconfigured"
                          and s, "pinecone parked")
        pine = status["sinks"]["pinecone"]
        assert "SinkMismatch" in pine["reason"] and "8-d" in pine["reason"] and pine["behind_entries"] == 1
        ready = client.http.get("/readyz")
        assert ready.status_code == 200 and "SinkMismatch" in ready.json()["parked"]["pinecone"]
        assert ready.json()["sinks"]["local"] == "ok"
        m = parse_prometheus(client.admin.get("/metrics").text)
        assert m['memory_worker_sink_state{sink="pinecone",state="misconfigured"}'] == 1
        assert m['memory_worker_sink_state{sink="local",state="ok"}'] == 1
        assert len(service.rt.sinks["local"].rows()) == 1

        pc._indexes["wrongdim"].dimension = 384  # fixed by the operator: the re-check picks it up
        wait_for(lambda: behind(service)["pinecone"] == 0, "pinecone after the fix")
        assert client.status()["sinks"]["pinecone"]["state"] == "ok"
        assert len(pc.vectors("wrongdim")) == 1


def test_retries_are_counted_per_sink(tmp_path, emulators, service_factory):
    from test_service import parse_prometheus, serving

    pc, wv = emulators
    config = three_sink_config(tmp_path, pc, wv)
    pc.faults.add(op="upsert", kind="503", times=2)
    service = service_factory(config)
    with serving(service) as client:
        client.post(SLACK, [slack_doc("4.1", "retried twice", at=T0)])
        wait_for(lambda: all(n == 0 for n in behind(service).values()), "delivery")
        m = parse_prometheus(client.admin.get("/metrics").text)
    assert m['memory_worker_sink_retries_total{sink="pinecone"}'] == 2
    assert m.get('memory_worker_sink_retries_total{sink="weaviate"}', 0) == 0


def test_a_document_that_always_breaks_preparation_is_dead_lettered_and_the_rest_flow(tmp_path,
                                                                                     service_factory):
    config = make_config(tmp_path, retry={"initial_backoff_s": 0.01, "max_backoff_s": 0.02})
    service = service_factory(config)
    real = service.rt.preparer.prepare

    def prepare(docs, stats=None):  # noqa: ANN001, ANN202 - a stage bug triggered by one document
        if any("POISON" in s.text for d in docs for s in d.sections):
            raise RuntimeError("stage bug (test)")
        return real(docs, stats)

    service.rt.preparer.prepare = prepare
    for i, text in enumerate(["before the poison", "POISON pill", "after the poison"]):
        service.intake.accept(SLACK, orjson.dumps([slack_doc(f"5.{i}", text, at=T0 + i)]))
    service.start()
    wait_for(lambda: service.spool.depth() == 0 and behind(service)["local"] == 0, "the stream to flow")
    assert {r["doc_id"] for r in service.rt.sinks["local"].rows()} == {"slack:C024BE91L/5.0",
                                                                       "slack:C024BE91L/5.2"}
    [letter] = service.rt.dead_letters.list()
    assert letter.stage == "prepare" and "stage bug (test)" in letter.reason
    assert letter.raw["text"] == "POISON pill"
