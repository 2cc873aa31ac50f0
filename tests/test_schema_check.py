"""``memory-worker schema check``: compatible, renamed-key and retyped-text schemas; drift warnings."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest

from worker.config import BindingConfig
from worker.documents import Binding
from worker.schema_check import DriftWatch, check_schema

DATA = Path(__file__).parent / "data" / "estuary"
GONG = "sophia-ai/gong-calls-enriched"
SCHEMAS = {p.name.split(".")[0]: json.loads(p.read_text()) for p in DATA.glob("*.schema.json")}
BINDINGS = {"gong-calls-enriched": Binding(BindingConfig(collection=GONG, preset="gong_call")),
            "slack-messages-enriched": Binding(BindingConfig(collection="s", preset="slack_message")),
            "github-enriched": Binding(BindingConfig(collection="g", preset="github_document"))}


@pytest.mark.parametrize("name", sorted(BINDINGS))
def test_the_collections_schemas_are_compatible(name):
    report = check_schema(BINDINGS[name], SCHEMAS[name])
    assert report.compatible, report.errors
    assert all(state == "ok" for f, state in report.fields.items() if f in ("/call_id", "/channel_id", "/ts", "/id"))


@pytest.mark.parametrize("name", sorted(BINDINGS))
def test_the_check_agrees_with_what_estuary_schema_serves(name):
    """GET /estuary/schema serves binding.json_schema(): a collection with exactly that schema fits."""
    served = BINDINGS[name].json_schema()
    assert check_schema(BINDINGS[name], served).compatible


def test_a_renamed_key_is_an_error_that_says_everything_is_dead_lettered():
    schema = copy.deepcopy(SCHEMAS["gong-calls-enriched"])
    schema["properties"]["callId"] = schema["properties"].pop("call_id")
    schema["required"] = ["_meta", "callId"]
    report = check_schema(BINDINGS["gong-calls-enriched"], schema)
    assert not report.compatible and report.fields["/call_id"] == "missing"
    assert any("/call_id" in e and "dead-lettered" in e for e in report.errors)


def test_a_retyped_text_field_is_an_error_and_a_retyped_metadata_field_a_warning():
    schema = copy.deepcopy(SCHEMAS["gong-calls-enriched"])
    schema["properties"]["transcript"] = {"type": "object", "properties": {"url": {"type": "string"}}}
    schema["properties"]["account_name"] = {"type": "integer"}
    report = check_schema(BINDINGS["gong-calls-enriched"], schema)
    assert not report.compatible and report.fields["/transcript"] == "incompatible"
    assert any("/transcript" in e and "every document is dead-lettered" in e for e in report.errors)
    assert report.fields["/account_name"] == "incompatible"
    assert any("/account_name" in w for w in report.warnings)


def test_the_cli_exits_1_on_an_incompatible_schema(tmp_path, capsys):
    from worker.cli import main

    schema = copy.deepcopy(SCHEMAS["slack-messages-enriched"])
    schema["required"] = ["_meta", "channel_id"]  # ts no longer required
    path = tmp_path / "slack.json"
    path.write_text(json.dumps(schema))
    assert main(["schema", "check", "--collection", "sophia-ai/slack-messages-enriched", "--schema", str(path),
                 "--config", "configs/local.yaml", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["compatible"] is False and out["fields"]["/ts"] == "not required"
    good = tmp_path / "good.json"
    good.write_text(json.dumps(SCHEMAS["slack-messages-enriched"]))
    assert main(["schema", "check", "--collection", "sophia-ai/slack-messages-enriched", "--schema", str(good),
                 "--config", "configs/local.yaml"]) == 0


def test_drift_warns_once_per_collection_and_field(caplog):
    watch = DriftWatch(warmup=2, expected={GONG: {"call_id": {"type": "string"}}})
    caplog.set_level(logging.WARNING, logger="worker.schema_check")
    watch.observe(GONG, {"call_id": "1", "title": "a"})  # the warm-up documents set the baseline
    watch.observe(GONG, {"call_id": "2", "title": "a", "account_name": "Acme"})
    for i in range(50):
        watch.observe(GONG, {"call_id": str(i), "title": "b", "deal_stage": "won", "duration_s": 3})
    watch.observe(GONG, {"call_id": "x", "title": 7})  # a changed type
    watch.observe(GONG, {"call_id": "y", "title": None})  # null is not a change of type
    messages = [(r.getMessage(), getattr(r, "field", None)) for r in caplog.records]
    assert messages.count(("new field in the stream", "deal_stage")) == 1
    assert messages.count(("new field in the stream", "duration_s")) == 1
    assert messages.count(("field changed type in the stream", "title")) == 1
    assert watch.changes == 3
    assert not any(f == "account_name" for _, f in messages)  # part of the warm-up baseline
