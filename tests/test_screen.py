"""Screening in the prepare stage, end to end: PII and secrets never reach a sink, a log line,
the status body or a metric; pseudonyms are searchable; data-quality rules and the valid ratio."""

from __future__ import annotations

import logging

import orjson
import pytest

from conftest import flow_uuid, make_config
from test_service import GITHUB, GONG, SLACK, T0, parse_prometheus, serving, slack_doc
from test_sinks_all import INDEX, WEAVIATE_COLLECTION, emulators, three_sink_config  # noqa: F401
from tests.pii_corpus import pii_corpus

SECRET = "test-pseudonym-key"
POLICY = {"default_action": "pseudonymize", "names": "pseudonymize"}  # secrets: always redacted
COLLECTION_OF = {"gong": GONG, "slack": SLACK, "github": GITHUB}


def bindings(policy=POLICY, **extra):  # noqa: ANN001, ANN003, ANN201
    return [{"collection": GONG, "preset": "gong_call", "privacy": policy, **extra.get(GONG, {})},
            {"collection": SLACK, "preset": "slack_message", "privacy": policy, **extra.get(SLACK, {})},
            {"collection": GITHUB, "preset": "github_document", "privacy": policy, **extra.get(GITHUB, {})}]


def all_strings(node) -> list[str]:  # noqa: ANN001
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in all_strings(v)]
    if isinstance(node, (list, tuple)):
        return [s for v in node for s in all_strings(v)]
    return []


def test_no_raw_pii_or_secret_reaches_any_sink_log_status_or_metric(tmp_path, emulators, service_factory,
                                                                      caplog):
    pc, wv = emulators
    base = three_sink_config(tmp_path, pc, wv)
    sinks = base.sinks.model_dump(mode="json")
    sinks["pinecone"]["api_key"] = "test-key"
    config = make_config(tmp_path, bindings=bindings(), sinks=sinks, privacy={"pseudonym_secret": SECRET},
                         retry={"max_attempts": 8, "initial_backoff_s": 0.01, "max_backoff_s": 0.05})
    corpus = pii_corpus(seed=3, n_per_shape=6)
    for i, item in enumerate(corpus):  # Flow publish clocks (the corpus's uuids are random v1 ones)
        item.raw["_meta"]["uuid"] = flow_uuid(T0 + i)
    planted = {p.value for item in corpus for p in item.planted}
    kinds = {p.kind for item in corpus for p in item.planted}
    assert len(kinds) >= 15  # every detector's type is in the corpus
    caplog.set_level(logging.DEBUG)
    service = service_factory(config)
    with serving(service) as client:
        for item in corpus:
            r = client.post(COLLECTION_OF[item.collection], [item.raw])
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        status = client.wait_delivered()
        metrics_text = client.admin.get("/metrics").text
        local = service.rt.sinks["local"].rows()
    assert status["dead_letters"] == 0

    stored: list[str] = []
    for row in local:
        stored += all_strings({k: v for k, v in row.items() if k != "vector"})
    for _, meta in pc.vectors(INDEX).values():
        stored += all_strings(meta)
    for _, props in wv.objects(WEAVIATE_COLLECTION).values():
        stored += all_strings(props)
    assert len(stored) > 500
    haystacks = {"sinks": "\n".join(stored), "logs": caplog.text,
                 "status": orjson.dumps(status).decode(), "metrics": metrics_text}
    for where, text in haystacks.items():
        leaked = sorted(v for v in planted if v in text)
        assert not leaked, f"raw values in {where}: {leaked[:5]}"
    sinks_text = haystacks["sinks"]
    assert "[EMAIL:" in sinks_text and "[AWS_KEY]" in sinks_text and "[PERSON:" in sinks_text
    m = parse_prometheus(metrics_text)
    masked = {k: v for k, v in m.items() if k.startswith("memory_worker_privacy_masked_total")}
    per_entity = {}
    for k, v in masked.items():
        entity = k.split('entity="')[1].split('"')[0]
        per_entity[entity] = per_entity.get(entity, 0) + v
    assert set(per_entity) >= kinds  # a count for every type planted
    assert sum(per_entity.values()) >= len(planted)
    assert status["privacy"][GONG]["person"] >= 6  # status reports counts per type too


def test_a_pseudonymized_email_is_one_token_everywhere_and_finds_its_documents(tmp_path, service_factory):
    config = make_config(tmp_path, bindings=bindings(), privacy={"pseudonym_secret": SECRET})
    service = service_factory(config)
    with serving(service) as client:
        client.post(SLACK, [slack_doc("1.1", "Send the SOC 2 report to Dana.Whitfield@Acme.example today",
                                      at=T0),
                            slack_doc("1.2", "dana.whitfield@acme.example confirmed the renewal date", at=T0),
                            slack_doc("1.3", "Lunch order for Friday: pizza and salad", at=T0)])
        client.wait_delivered()
        texts = {r["doc_id"]: r["text"] for r in service.rt.sinks["local"].rows()}
        tokens = {d: t[t.index("[EMAIL:"):t.index("]", t.index("[EMAIL:")) + 1] for d, t in texts.items()
                  if "[EMAIL:" in t}
        assert len(tokens) == 2 and len(set(tokens.values())) == 1  # same person, same token
        assert all("acme.example" not in t.lower() for t in texts.values())
        hits = client.query("dana.whitfield@acme.example", k=2).json()["results"]
    assert {h["doc_id"] for h in hits} == set(tokens)


def test_dead_letters_are_masked_with_deadletters_redact(tmp_path, service_factory):
    config = make_config(tmp_path, bindings=bindings(), privacy={"pseudonym_secret": SECRET},
                         deadletters={"redact": True})
    service = service_factory(config)
    with serving(service) as client:
        bad = {"_meta": {"uuid": slack_doc("x", "x", at=T0)["_meta"]["uuid"], "op": "u"}, "channel_id": "C1",
               "text": "call me at +1 415 555 0142, key AKIAIOSFODNN7EXAMPLE"}  # no ts: invalid
        assert client.post(SLACK, [bad]).json()["dead_lettered"] == 1
        [letter] = service.rt.dead_letters.list()
    text = letter.raw["text"]
    assert "555 0142" not in text and "AKIAIOSFODNN7EXAMPLE" not in text
    assert "[PHONE:" in text and "[AWS_KEY]" in text


def test_quality_rules_dead_letter_flag_and_drop_and_the_valid_ratio_moves(tmp_path, service_factory):
    quality = {"rules": [
        {"kind": "text_length", "name": "min-text", "min_chars": 12, "action": "dead_letter"},
        {"kind": "pattern", "name": "no-lunch", "field": "/text", "must_not_match": "(?i)lunch",
         "action": "flag"},
        {"kind": "allowed_values", "name": "known-sentiment", "field": "/sentiment_category",
         "values": ["positive", "neutral", "negative"], "action": "drop_field"},
    ]}
    config = make_config(tmp_path, bindings=bindings(policy=None, **{SLACK: {"quality": quality}}))
    service = service_factory(config)
    with serving(service) as client:
        client.post(SLACK, [slack_doc("2.1", "Acme asked for the SOC 2 report", at=T0, sentiment_category="neutral"),
                            slack_doc("2.2", "ok", at=T0),  # too short: dead letter
                            slack_doc("2.3", "Lunch order for Friday is pizza", at=T0),  # flagged
                            slack_doc("2.4", "The renewal quote went out today", at=T0,
                                      sentiment_category="furious")])  # field dropped
        client.wait_delivered()
        m = parse_prometheus(client.admin.get("/metrics").text)
        hits = client.query("lunch pizza", k=5, filter={"collection": SLACK}).json()["results"]
        quality = client.status()["quality"]
        rows = {r["doc_id"]: r for r in service.rt.sinks["local"].rows()}
        [letter] = service.rt.dead_letters.list()
    assert set(rows) == {"slack:C024BE91L/2.1", "slack:C024BE91L/2.3", "slack:C024BE91L/2.4"}
    assert letter.stage == "quality" and "min-text" in letter.reason
    assert rows["slack:C024BE91L/2.3"]["quality_flags"] == ["no-lunch"]  # a typed column
    assert rows["slack:C024BE91L/2.1"]["quality_flags"] is None
    assert rows["slack:C024BE91L/2.4"]["sentiment_category"] is None  # the field was dropped
    assert rows["slack:C024BE91L/2.1"]["sentiment_category"] == "neutral"
    assert hits[0]["metadata"]["quality_flags"] == ["no-lunch"]
    c = f'collection="{SLACK}"'
    assert m[f"memory_worker_quality_checked_total{{{c}}}"] == 4
    assert m[f'memory_worker_quality_failed_total{{{c},rule="min-text"}}'] == 1
    assert m[f'memory_worker_quality_failed_total{{{c},rule="no-lunch"}}'] == 1
    # valid = no rule failed: the flagged and the trimmed documents are kept but not valid
    assert m[f"memory_worker_quality_valid_ratio{{{c}}}"] == pytest.approx(1 / 4)
    assert m['memory_worker_documents_dead_lettered_total{stage="quality"}'] == 1
    assert quality[SLACK]["checked"] == 4 and quality[SLACK]["valid_ratio"] == pytest.approx(0.25)
    assert quality[SLACK]["failed"] == {"min-text": 1, "no-lunch": 1, "known-sentiment": 1}


def test_a_pseudonymizing_policy_without_a_secret_is_a_config_error(tmp_path):
    from worker.errors import ConfigError

    with pytest.raises(ConfigError, match="pseudonym_secret"):
        make_config(tmp_path, bindings=bindings())
