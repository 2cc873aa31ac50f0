"""Webhook intake over real HTTP: auth, refusals with a reason, and per-document dead letters."""

from __future__ import annotations

import json

import orjson
import pytest

from conftest import make_config
from test_service import (GITHUB, HOOK, QUERY_TOKEN, SLACK, T0, WEBHOOK_TOKEN, flow_uuid, free_port,
                          github_doc, rows_of, slack_doc, slack_id, start_worker,  # noqa: F401
                          write_config)

TICKETS = "acme/support/tickets"  # a generic binding; collection names hold '/'


def generic_bindings(text: list[str]) -> list[dict]:
    return [{"collection": SLACK, "preset": "slack_message"},
            {"collection": GITHUB, "preset": "github_document"},
            {"collection": TICKETS, "source": "tickets", "key": ["/id"], "text": text,
             "title": "/subject"}]


def ticket(n: int, *, at: float, **fields: object) -> dict:
    return {"_meta": {"uuid": flow_uuid(at), "op": "c"}, "id": f"T-{n}", "subject": f"ticket {n}", **fields}


def assert_nothing_kept(client, service) -> None:  # noqa: ANN001
    """A refused request leaves no trace: nothing spooled, nothing dead-lettered."""
    status = client.status()
    assert status["spool"]["depth"] == 0 and status["dead_letters"] == 0
    assert service.spool.read(limit=10) == []


# -- auth -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", f"Basic {WEBHOOK_TOKEN}", f"Token {WEBHOOK_TOKEN}", "Bearer wrong",
    f"Bearer {WEBHOOK_TOKEN}x", f"Bearer {WEBHOOK_TOKEN[:-1]}", f"Bearer {QUERY_TOKEN}", WEBHOOK_TOKEN,
])
def test_webhook_refuses_anything_but_the_webhook_token(start_worker, authorization):
    client, service = start_worker()
    headers = {} if authorization is None else {"Authorization": authorization}
    r = client.post(SLACK, [slack_doc("1.1", "hello", at=T0)], headers=headers)
    assert r.status_code == 401 and r.json()["reason"]
    assert WEBHOOK_TOKEN not in r.text
    assert_nothing_kept(client, service)


@pytest.mark.parametrize("authorization", [f"Bearer {WEBHOOK_TOKEN}", f"bearer {WEBHOOK_TOKEN}",
                                           f"BEARER  {WEBHOOK_TOKEN}"])
def test_webhook_accepts_the_token_with_any_case_of_scheme(start_worker, authorization):
    """RFC 7235: the auth scheme is case-insensitive; Estuary sends whatever header was typed."""
    client, _ = start_worker()
    r = client.post(SLACK, [slack_doc("1.1", "hello", at=T0)], headers={"Authorization": authorization})
    assert r.status_code == 200 and r.json()["accepted"] == 1


def test_without_a_configured_token_the_webhook_refuses_everyone(start_worker, tmp_path):
    client, _ = start_worker(make_config(tmp_path, server={"query_token": QUERY_TOKEN}))
    r = client.post(SLACK, [slack_doc("1.1", "hello", at=T0)])
    assert r.status_code == 401 and "no token configured" in r.json()["reason"]


# -- refusing a whole request (nothing could be persisted) --------------------------------------

def nested(depth: int) -> bytes:
    """A one-document array whose nesting is ``depth`` levels (the array is level 1)."""
    inner = "0"
    for _ in range(depth - 2):
        inner = f'{{"k": {inner}}}'
    doc = f'{{"_meta": {{"uuid": "{flow_uuid(T0)}", "op": "c"}}, "channel_id": "C1", "ts": "1", ' \
          f'"text": "deep", "x": {inner}}}'
    return f"[{doc}]".encode()


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "not valid JSON"),
    (b"not json", "not valid JSON"),
    (b'[{"_meta": {"op": "c"}, "text": "cut off', "not valid JSON"),
    (b'[{"channel_id": "C1", "ts": "1", "text": "caf\xe9"}]', "UTF-8"),  # Latin-1, not UTF-8
    (b'[{"channel_id": "C1", "ts": "1", "text": "\xff\xfe"}]', "UTF-8"),
    (b'{"channel_id": "C1", "ts": "1", "text": "an object, not an array"}', "JSON array"),
    (b'"a string"', "JSON array"),
    (b"null", "JSON array"),
    (b"[1, 2, 3]", "element 0"),
    (b'[{"channel_id": "C1", "ts": "1", "text": "ok"}, "not a document"]', "element 1"),
    (b'[{"channel_id": "C1", "ts": "1", "text": "ok"}, null]', "element 1"),
    (b'[{"channel_id": "C1", "ts": "1", "text": "ok"}, [{"nested": "array"}]]', "element 1"),
    (nested(129), "deeper than 128"),
    ((b"[" * 5000) + (b"]" * 5000), "JSON"),  # past the parser's own limit: still a clean 400
])
def test_unreadable_bodies_are_refused_with_a_reason(start_worker, body, reason):
    client, service = start_worker()
    r = client.post(SLACK, body)
    assert r.status_code == 400, r.text
    assert reason in r.json()["reason"]
    assert_nothing_kept(client, service)


def test_depth_counts_arrays_and_objects_alike():
    from worker.intake import too_deep

    assert not too_deep([[[1]]], 3) and too_deep([[[[1]]]], 3)
    assert not too_deep([{"a": [{"b": 1}]}], 4) and too_deep([{"a": [{"b": {}}]}], 4)
    assert not too_deep([{"a": 1}, [], {"b": [2]}], 3) and too_deep([{"a": 1}, [], {"b": [[]]}], 3)


def test_nesting_up_to_the_limit_is_accepted(start_worker):
    client, _ = start_worker()
    r = client.post(SLACK, nested(128))
    assert r.status_code == 200 and r.json()["accepted"] == 1


def test_unknown_collection_is_refused(start_worker):
    client, service = start_worker()
    for collection in ("sophia-ai/unknown", "sophia-ai", f"{SLACK}/extra", SLACK.upper()):
        r = client.post(collection, [slack_doc("1.1", "hello", at=T0)])
        assert r.status_code == 400, collection
        assert "unknown collection" in r.json()["reason"] and SLACK in r.json()["reason"]
    assert_nothing_kept(client, service)


def test_body_over_max_body_bytes_is_413(start_worker, tmp_path):
    limit = 4096
    client, service = start_worker(make_config(
        tmp_path, server={"webhook_token": WEBHOOK_TOKEN, "max_body_bytes": limit}))

    def body_of(size: int) -> bytes:
        doc = slack_doc("1.1", "padded", at=T0, pad="")
        doc["pad"] = "x" * (size - len(orjson.dumps([doc])))
        out = orjson.dumps([doc])
        assert len(out) == size
        return out

    over = client.post(SLACK, body_of(limit + 1))
    assert over.status_code == 413 and str(limit) in over.json()["reason"]
    assert_nothing_kept(client, service)

    # No Content-Length (chunked): the limit holds while streaming, too
    r = client.http.post(f"/estuary/webhook/{SLACK}", content=iter([body_of(limit + 1)[:2000],
                                                                       body_of(limit + 1)[2000:]]),
                         headers={**HOOK, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert_nothing_kept(client, service)

    assert client.post(SLACK, body_of(limit)).status_code == 200  # exactly at the limit


def test_an_empty_array_is_a_valid_request(start_worker):
    client, service = start_worker()
    r = client.post(SLACK, [])
    assert r.status_code == 200 and r.json()["accepted"] == 0
    assert client.status()["spool"]["depth"] == 0


# -- one bad document never fails the request ------------------------------------------------------

BAD_SLACK = {
    "no text": ({"_meta": {"uuid": flow_uuid(T0), "op": "c"}, "channel_id": "C1", "ts": "9.1"}, "/text"),
    "text not a string": ({"_meta": {"uuid": flow_uuid(T0), "op": "c"}, "channel_id": "C1", "ts": "9.2",
                           "text": ["a", "list"]}, "/text"),
    "no key": ({"_meta": {"uuid": flow_uuid(T0), "op": "c"}, "channel_id": "C1", "text": "no ts"}, "/ts"),
    "no _meta": ({"channel_id": "C1", "ts": "9.3", "text": "no meta"}, "/_meta"),
    "v4 uuid": ({"_meta": {"uuid": "6f1c5d3a-8a54-4d4e-9f0e-3f6f0d2a9b11", "op": "c"}, "channel_id": "C1",
                 "ts": "9.4", "text": "v4"}, "/_meta/uuid"),
    "bad op": ({"_meta": {"uuid": flow_uuid(T0), "op": "x"}, "channel_id": "C1", "ts": "9.5",
                "text": "bad op"}, "/_meta/op"),
}


@pytest.mark.parametrize("case", sorted(BAD_SLACK))
def test_one_invalid_document_is_dead_lettered_and_the_rest_proceed(start_worker, tmp_path, capsys, case):
    from worker.cli import main

    client, service = start_worker()
    bad, field = BAD_SLACK[case]
    good = [slack_doc(f"9.{10 + i}", f"good message {i} about the Acme renewal", at=T0 + i) for i in range(4)]
    r = client.post(SLACK, [good[0], good[1], bad, good[2], good[3]])
    assert r.status_code == 200
    assert (r.json()["received"], r.json()["accepted"], r.json()["dead_lettered"]) == (5, 4, 1)

    client.wait_delivered()
    assert {row["doc_id"] for row in rows_of(service)} == {slack_id(d["ts"]) for d in good}
    hits = client.query("Acme renewal", k=10).json()["results"]
    assert {h["doc_id"] for h in hits} == {slack_id(d["ts"]) for d in good}
    assert client.status()["dead_letters"] == 1

    config = write_config(tmp_path, port=free_port())
    assert main(["dlq", "--config", str(config), "list", "--json"]) == 0
    [entry] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert entry["collection"] == SLACK and entry["stage"] == "validate"
    assert field in entry["reason"]
    assert main(["dlq", "--config", str(config), "show", str(entry["id"])]) == 0
    assert json.loads(capsys.readouterr().out)["raw"] == bad


def test_a_request_of_only_invalid_documents_is_still_a_200(start_worker):
    client, _ = start_worker()
    bad = [doc for doc, _ in BAD_SLACK.values()]
    r = client.post(SLACK, bad)
    assert r.status_code == 200 and r.json()["accepted"] == 0 and r.json()["dead_lettered"] == len(bad)
    assert client.status()["dead_letters"] == len(bad) and client.status()["spool"]["depth"] == 0


def test_a_refused_request_does_not_dead_letter_twice_when_retried(start_worker, tmp_path):
    """Estuary resends a refused (503) request up to 11 times: its bad document must be filed once."""
    client, service = start_worker(make_config(tmp_path, spool={"max_bytes": 1024 * 1024}), deliver=False)
    filler = [slack_doc("8.0", "filler", at=T0, blocks_raw="b" * 900_000)]
    assert client.post(SLACK, filler).status_code == 200
    batch = [slack_doc("8.1", "good", at=T0), BAD_SLACK["no text"][0],
             slack_doc("8.2", "padding", at=T0, blocks_raw="b" * 200_000)]

    for _ in range(3):
        assert client.post(SLACK, batch).status_code == 503  # over the spool budget
    service.start()
    client.wait_delivered()
    assert client.post(SLACK, batch).status_code == 200
    assert client.status()["dead_letters"] == 1


def test_dlq_replay_revalidates_with_the_fixed_config(start_worker, tmp_path, capsys):
    """A binding that did not map a field dead-letters; after the config fix, replay indexes it."""
    from worker.cli import main

    client, service = start_worker(make_config(tmp_path, bindings=generic_bindings(["/body"])))
    docs = [ticket(1, at=T0, body="Printer on floor 3 is jammed again"),
            ticket(2, at=T0, description="VPN drops every hour since the upgrade"),  # not mapped yet
            ticket(3, at=T0, notes="neither body nor description")]
    r = client.post(TICKETS, docs)
    assert (r.status_code, r.json()["accepted"], r.json()["dead_lettered"]) == (200, 1, 2)
    client.wait_delivered()

    fixed = write_config(tmp_path, port=free_port(), name="fixed.yaml",
                         bindings=generic_bindings(["/body", "/description"]))
    assert main(["dlq", "--config", str(fixed), "replay"]) == 0
    assert capsys.readouterr().out.split() == ["replayed=1", "still_invalid=1"]

    assert main(["dlq", "--config", str(fixed), "list", "--json"]) == 0
    [left] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert left["key"] == "['T-3']" and "no text field" in left["reason"]

    # The running worker sees what the replay wrote (another process/handle, same store).
    hits = client.query("VPN keeps disconnecting", k=5, filter={"collection": TICKETS}).json()["results"]
    assert [h["doc_id"] for h in hits][:1] == ["tickets:T-2"]
    assert {h["doc_id"] for h in hits} == {"tickets:T-1", "tickets:T-2"}
