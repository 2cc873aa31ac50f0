"""Dekaf and materialize-kafka messages, encoded by Estuary's rules (tests/estuary_avro.py cites
each), decode to the documents the webhook would carry: the binding parses both the same."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
import pytest

from conftest import COLLECTIONS, load_stream
from estuary_avro import dekaf_message, dekaf_value_schema, key_schema, materialize_kafka_json, shape_to_avro
from worker.config import BindingConfig, DekafSourceConfig, KafkaSourceConfig
from worker.documents import Binding
from worker.errors import DocumentInvalid
from worker.sources.codecs import DekafCodec, MaterializeKafkaCodec, UndecodableMessage, publish_uuid

DATA = Path(__file__).parent / "data" / "estuary"
PRESETS = {"sophia-ai/gong-calls-enriched": "gong_call", "sophia-ai/slack-messages-enriched": "slack_message",
           "sophia-ai/github-enriched": "github_document"}
SCHEMAS = {c: orjson.loads((DATA / f"{c.split('/')[1]}.schema.json").read_bytes()) for c in COLLECTIONS}


def key_of(collection: str) -> list[str]:
    return list(Binding(BindingConfig(collection=collection, preset=PRESETS[collection])).key_pointers)


def selected(collection: str) -> list[str]:
    """What a user selects: every top-level property, plus _meta/op and _meta/uuid (README)."""
    props = sorted(p for p in SCHEMAS[collection]["properties"] if p != "_meta")
    return [f"/{p}" for p in props] + ["/_meta/op", "/_meta/uuid"]


class Message:
    def __init__(self, topic: str, key: bytes, value: bytes | None, timestamp_ms: int = 1_795_000_000_000) -> None:
        self._topic, self._key, self._value, self._ts = topic, key, value, timestamp_ms

    def topic(self):
        return self._topic

    def key(self):
        return self._key

    def value(self):
        return self._value

    def timestamp(self):
        return (1, self._ts)


@pytest.fixture
def registry():
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient.new_client({"url": f"mock://codecs-{id(object())}"})


def bindings() -> dict[str, Binding]:
    return {c: Binding(BindingConfig(collection=c, preset=p)) for c, p in PRESETS.items()}


def encodable(collection: str, doc: dict) -> bool:
    """Estuary validates documents at capture: one its schema refuses never reaches Dekaf."""
    return all(isinstance(doc.get(p[1:]), str) and doc.get(p[1:]) for p in key_of(collection))


def parsed(binding: Binding, raw: dict):  # noqa: ANN001, ANN201
    try:
        return dataclasses.replace(binding.parse(raw))
    except DocumentInvalid as exc:
        return ("invalid", str(exc))


@pytest.mark.parametrize("collection", list(COLLECTIONS))
@pytest.mark.parametrize("deletions", ["kafka", "cdc"])
def test_dekaf_messages_decode_to_what_the_webhook_carries(collection, deletions, registry):
    topic = collection
    config = DekafSourceConfig(group_id="g", deletions=deletions, topics=[{"collection": collection}])
    codec = DekafCodec(config, bindings(), registry)
    binding = bindings()[collection]
    checked = deletes = 0
    for raw in load_stream(collection):
        if not encodable(collection, raw):
            continue
        k, v = dekaf_message(registry, topic, SCHEMAS[collection], key_of(collection), selected(collection), raw,
                             deletions=deletions)
        doc = codec.decode(Message(topic, k, v))
        want, got = parsed(binding, raw), parsed(binding, doc)
        if raw["_meta"].get("op") == "d":
            deletes += 1
            assert got.op == "d" and got.key == want.key
            if deletions == "cdc":  # the whole delete document, with its own _meta
                assert got.version == want.version
            continue
        assert got == want, raw.get("call_id") or raw.get("id") or raw.get("ts")
        checked += 1
    assert checked >= 5 and (deletes >= 1 or collection.endswith("gong-calls-enriched"))


def test_the_key_is_flow_key_parts_in_key_order_not_the_field_names(registry):
    slack = "sophia-ai/slack-messages-enriched"
    schema = key_schema(SCHEMAS[slack], key_of(slack))
    assert schema["fields"][0]["name"] == "_flow_key"
    assert [f["name"] for f in schema["fields"][0]["type"]["fields"]] == ["p1", "p2"]
    raw = next(d for d in load_stream(slack) if d["_meta"]["op"] != "d")
    k, _ = dekaf_message(registry, slack, SCHEMAS[slack], key_of(slack), selected(slack), raw)
    tombstone = DekafCodec(DekafSourceConfig(group_id="g", topics=[{"collection": slack}]), bindings(),
                           registry).decode(Message(slack, k, None, timestamp_ms=1_800_000_000_123))
    assert (tombstone["channel_id"], tombstone["ts"]) == (raw["channel_id"], raw["ts"])
    assert tombstone["_meta"] == {"uuid": publish_uuid(1_800_000_000_123), "op": "d"}


def test_a_mixed_type_field_is_a_raw_json_record_and_extras_ride_in_flow_extra(registry):
    gong = "sophia-ai/gong-calls-enriched"
    value = dekaf_value_schema(SCHEMAS[gong], selected(gong))
    fields = {f["name"]: f["type"] for f in value["fields"]}
    assert fields["transcript"][0]["name"] == "root.transcript.RawJSON"  # string or list of turns
    assert fields["started_at"][0]["logicalType"] == "timestamp-micros"
    assert "_meta_op" in fields and "_meta_uuid" in fields
    raw = next(d for d in load_stream(gong) if d["_meta"]["op"] != "d" and isinstance(d.get("transcript"), list))
    raw = {**raw, "participants": [{**raw["participants"][0], "linkedin": "dana-w"}]}  # an undeclared property
    k, v = dekaf_message(registry, gong, SCHEMAS[gong], key_of(gong), selected(gong), raw)
    doc = DekafCodec(DekafSourceConfig(group_id="g", topics=[{"collection": gong}]), bindings(),
                     registry).decode(Message(gong, k, v))
    assert doc["transcript"] == raw["transcript"]
    assert doc["participants"][0]["linkedin"] == "dana-w"  # merged back from _flow_extra
    assert doc["started_at"] == raw["started_at"]


def test_a_real_property_named_json_is_not_taken_for_raw_json(registry):
    schema = {"type": "object", "properties": {"id": {"type": "string"}, "_meta": SCHEMAS["sophia-ai/github-enriched"]
                                               ["properties"]["_meta"],
                                               "payload": {"type": "object", "properties": {"json": {"type": "string"}},
                                                           "additionalProperties": False},
                                               "body": {"type": "string"}},
              "required": ["id", "_meta"]}
    collection = "sophia-ai/github-enriched"
    raw = {"_meta": {"uuid": "0b7c9e40-ab13-11ef-8000-0242ac120002", "op": "u"}, "id": "I_1",
           "payload": {"json": "[1, 2]"}, "body": "text"}
    fields = ["/body", "/id", "/payload", "/_meta/op", "/_meta/uuid"]
    assert shape_to_avro(schema["properties"]["payload"], "root.payload", False)[0]["name"] == "root.payload"
    k, v = dekaf_message(registry, "t", schema, ["/id"], fields, raw)
    doc = DekafCodec(DekafSourceConfig(group_id="g", topics=[{"collection": collection, "topic_name": "t"}]),
                     bindings(), registry).decode(Message("t", k, v))
    assert doc["payload"] == {"json": "[1, 2]"}  # a string, not parsed


def test_date_uuid_and_duration_logical_types_come_back_as_strings(registry):
    schema = {"type": "object", "required": ["id", "_meta"], "properties": {
        "id": {"type": "string"}, "_meta": SCHEMAS["sophia-ai/github-enriched"]["properties"]["_meta"],
        "due": {"type": "string", "format": "date"}, "ref": {"type": "string", "format": "uuid"},
        "sla": {"type": "string", "format": "duration"}, "at": {"type": "string", "format": "date-time"}}}
    raw = {"_meta": {"uuid": "0b7c9e40-ab13-11ef-8000-0242ac120002", "op": "u"}, "id": "I_2", "due": "2026-12-24",
           "ref": "a0b0c0d0-1000-2000-3000-400000000000", "sla": "P3DT4H5M6.5S", "at": "2026-11-20T15:00:00.25Z"}
    k, v = dekaf_message(registry, "t", schema, ["/id"], ["/at", "/due", "/id", "/ref", "/sla", "/_meta/op",
                                                          "/_meta/uuid"], raw)
    doc = DekafCodec(DekafSourceConfig(group_id="g", topics=[{"collection": "sophia-ai/github-enriched",
                                                               "topic_name": "t"}]),
                     bindings(), registry).decode(Message("t", k, v))
    assert (doc["due"], doc["ref"], doc["sla"], doc["at"]) == ("2026-12-24", raw["ref"], "P3DT4H5M6.5S",
                                                               "2026-11-20T15:00:00.25Z")


@pytest.mark.parametrize("collection", list(COLLECTIONS))
def test_materialize_kafka_json_messages_decode_to_what_the_webhook_carries(collection):
    config = KafkaSourceConfig(bootstrap_servers="x:9092", group_id="g", topics=[{"collection": collection}])
    codec = MaterializeKafkaCodec(config, bindings(), None)
    binding = bindings()[collection]
    fields = [f for f in selected(collection) if f not in key_of(collection)]
    n = 0
    for raw in load_stream(collection):
        if not encodable(collection, raw):
            continue
        k, v = materialize_kafka_json(raw, key_of(collection), fields)
        got = parsed(binding, codec.decode(Message(collection, k, v)))
        want = parsed(binding, raw)
        if raw["_meta"].get("op") == "d":
            assert got.op == "d" and got.key == want.key
        else:
            assert got == want
            n += 1
    assert n >= 5
    assert codec.decode(Message("flow_checkpoints", b'{"materialization":"m"}', b"{}")) is None


def test_undecodable_bytes_raise_a_clear_error(registry):
    codec = DekafCodec(DekafSourceConfig(group_id="g", topics=[{"collection": "sophia-ai/github-enriched"}]),
                       bindings(), registry)
    with pytest.raises(UndecodableMessage, match="Confluent-framed"):
        codec.decode(Message("sophia-ai/github-enriched", b"plain", b"bytes"))
    json_codec = MaterializeKafkaCodec(KafkaSourceConfig(bootstrap_servers="x:9092", group_id="g",
                                                         topics=[{"collection": "sophia-ai/github-enriched"}]),
                                       bindings(), None)
    with pytest.raises(UndecodableMessage, match="not JSON"):
        json_codec.decode(Message("sophia-ai/github-enriched", b'{"id": "I_1"}', b"{nope"))


def test_materialize_kafka_avro_messages_decode_too(registry):
    """Avro mode (binding_info.rs): the key is key_to_avro's record; the value a record of the
    selected fields by field name, where a name Avro cannot hold (``_meta/op``) rides in
    ``_flow_extra``; the root document is a string."""
    from estuary_avro import framed, key_schema, object_to_avro

    slack = "sophia-ai/slack-messages-enriched"
    schema = SCHEMAS[slack]
    fields = ["/channel_id", "/text", "/ts", "/user_name", "/_meta/op", "/_meta/uuid"]
    props = {f[1:]: (schema["properties"][f[1:]] if "/" not in f[1:] else {"type": "string"}) for f in fields}
    props["flow_document"] = {"type": "string"}
    value_avro = object_to_avro({"type": "object", "properties": props,
                                 "required": ["channel_id", "ts", "flow_document"]}, "root")
    assert [f["name"] for f in value_avro["fields"]][-1] == "_flow_extra"  # `_meta/op` goes there
    codec = MaterializeKafkaCodec(KafkaSourceConfig(bootstrap_servers="x:9092", group_id="g", message_format="avro",
                                                    schema_registry_url="mock://x", topics=[{"collection": slack}]),
                                  bindings(), registry)
    binding = bindings()[slack]
    raw = next(d for d in load_stream(slack) if d["_meta"]["op"] != "d" and encodable(slack, d))
    value = {"channel_id": raw["channel_id"], "ts": raw["ts"], "text": raw.get("text"),
             "user_name": raw.get("user_name"), "_meta/op": raw["_meta"]["op"], "_meta/uuid": raw["_meta"]["uuid"],
             "flow_document": orjson.dumps(raw).decode()}
    k = framed(registry, f"{slack}-k", key_schema(schema, key_of(slack)),
               {"_flow_key": {"p1": raw["channel_id"], "p2": raw["ts"]}})
    v = framed(registry, f"{slack}-v", value_avro, value)
    assert parsed(binding, codec.decode(Message(slack, k, v))) == parsed(binding, raw)
    assert codec.decode(Message(slack, k, None))["_meta"]["op"] == "d"


# Estuary's own bytes: crates/avro/src/encode.rs test_basic_types (fixture schema and instance) and
# its value snapshot (avro__encode__test__basic_types-2.snap), as a hexdump.
BASIC_SCHEMA = {
    "type": "object",
    "properties": {
        "a": {"type": "null"}, "b": {"type": "boolean"},
        "c1_neg": {"type": "integer"}, "c2_pos": {"type": "integer"}, "c3_def": {"type": "integer", "default": 42},
        "d1_neg": {"type": "number"}, "d2_pos": {"type": "number"}, "d3_f64": {"type": "number"},
        "d4_str": {"oneOf": [{"type": "number"}, {"type": "string", "format": "number"}]},
        "e1_str": {"type": "string"}, "e2_str_def": {"type": "string", "default": "the-default"},
        "e4_pos_int": {"oneOf": [{"type": "integer"}, {"type": "string", "format": "integer"}]},
        "e5_neg_int": {"oneOf": [{"type": "integer"}, {"type": "string", "format": "integer"}]},
        "e6_int_str": {"oneOf": [{"type": "integer"}, {"type": "string", "format": "integer"}]},
        "f": {"type": "string", "format": "date"}, "g": {"type": "string", "format": "duration"},
        "h": {"type": "string", "format": "date-time"}, "i": {"type": "string", "format": "uuid"},
        "j": {"oneOf": [{"type": "number"}, {"type": "string"}]},
        "k": {"type": "object", "additionalProperties": {"type": "integer"}},
        "l": {"type": "array", "items": {"type": "boolean"}},
        "m1_with_addl": {"type": "array", "items": {"type": "object", "properties": {
            "d": {"type": "boolean"}, "f": {"type": "boolean"}}}},
        "m2_no_addl": {"type": "object", "properties": {"d": {"type": "boolean"}}, "additionalProperties": False},
        "m2_disallowed_field": {"type": "object", "properties": {"not valid": {"type": "boolean"}},
                                "additionalProperties": False},
        "int_with_zero_frac": {"type": "integer"},
    },
    "required": ["b", "c2_pos", "e1_str", "j", "m1_with_addl"],
}
BASIC_VALUE_HEX = """
0100ffff ffffffff ffffff01 feffffff ffffffff ff015400 00000000 0000e0c3 00000000 000000e0 43006e86 1bf0f921
09400077 be9f1a2f dd5e4010 61207374 72696e67 16746865 2d646566 61756c74 00263932 32333337 32303336 38353437
37353830 3700282d 39323233 33373230 33363835 34373735 38303800 0c313233 34353600 e4aa0200 0e000000 03000000
6568e000 008080f3 bbb5d8c1 05004861 30623063 3064302d 31303030 2d323030 302d3330 30302d34 30303030 30303030
30303000 02142272 6177206a 736f6e22 00020a6a 656e6e79 daffa208 00000401 00000802 02000001 02020261 001e226c
65616469 6e672065 78747261 22000001 00010202 65001c22 6d696464 6c652065 78747261 22000200 0102027a 00202274
7261696c 696e6720 65787472 61220000 0002126e 6f742076 616c6964 01000000 01020e7a 7a202d20 65780016 5b226578
74726122 2c335d00
"""


def test_estuarys_own_snapshot_bytes_decode_with_the_schema_built_by_its_rules(registry):
    """Not our encoder's bytes: Estuary's. The schema built here by schema.rs's rules must be the
    one those bytes were written with (else fastavro fails or reads garbage)."""
    from confluent_kafka.schema_registry import Schema

    from estuary_avro import shape_to_avro as build

    writer = build(BASIC_SCHEMA, "root", True)
    schema_id = registry.register_schema("basic-value", Schema(orjson.dumps(writer).decode(), "AVRO"))
    data = b"\0" + schema_id.to_bytes(4, "big") + bytes.fromhex("".join(BASIC_VALUE_HEX.split()))
    from worker.sources.codecs import ConfluentAvro

    out, _ = ConfluentAvro(registry).decode(data)
    i64_min, i64_max = -(2 ** 63), 2 ** 63 - 1
    assert out == {
        "b": True, "c1_neg": i64_min, "c2_pos": i64_max, "c3_def": 42, "d1_neg": float(i64_min),
        "d2_pos": float(i64_max), "d3_f64": 3.14159, "d4_str": 123.456, "e1_str": "a string",
        "e2_str_def": "the-default", "e4_pos_int": str(i64_max), "e5_neg_int": str(i64_min), "e6_int_str": "123456",
        "f": "2022-05-10", "g": "P1Y2M3DT4H5M6.789S", "h": "2019-03-06T00:00:00Z",
        "i": "a0b0c0d0-1000-2000-3000-400000000000", "j": "raw json", "k": {"jenny": 8675309}, "l": [True, False],
        "m1_with_addl": [{}, {"a": "leading extra", "d": True}, {"d": True, "e": "middle extra", "f": True},
                         {"f": True, "z": "trailing extra"}],
        "m2_no_addl": {"d": True}, "m2_disallowed_field": {"not valid": True}, "zz - ex": ["extra", 3],
        "int_with_zero_frac": 1}
