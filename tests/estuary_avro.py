"""Test fixtures encoded the way Estuary encodes them: Avro schemas derived from a collection's
JSON schema, and datums from its documents, by the rules of Estuary's own code.

Each rule cites where it was read (``estuary/flow`` at the stored revision):

* ``crates/avro/src/schema.rs`` ``shape_to_avro``: a nullable location (``null`` among its
  types, or optional without a default) is ``[T, "null"]``; strings with ``format`` date /
  date-time / uuid / duration become ``date`` / ``timestamp-micros`` / ``uuid`` / ``duration``;
  ``integer`` → ``long``, ``number`` → ``double``; several types → ``raw_json_schema``.
* ``schema.rs`` ``raw_json_schema``: a record named ``<location>.RawJSON`` with one string field
  ``json``; ``encode.rs`` ``maybe_encode`` writes the JSON serialization of the value there.
* ``schema.rs`` ``object_to_avro``: a record named by its location (``root.a.b``) with one field
  per declared property (sorted: ``doc::Shape`` keeps properties sorted and ``encode.rs`` merges
  them in order), then, when other properties are allowed, a trailing ``_flow_extra`` map whose
  values are the union of what is allowed (``anything`` → RawJSON); an object with only
  additional properties is an Avro ``map``. ``encode.rs`` puts every undeclared property of the
  instance in ``_flow_extra`` and writes a declared-but-absent one as its default or null.
* ``schema.rs`` ``array_to_avro``: items at ``<location>._items``.
* ``schema.rs`` ``key_to_avro``: ``root.Key { _flow_key: root.Key.Parts { p1 … pN } }``, each
  part's shape at its key pointer, required.
* ``schema.rs`` ``location_to_name``: names are ``root`` plus ``.<property>`` per step.
* ``encode.rs``: date-time → microseconds since the epoch (RFC 3339 parse), date → days since the
  epoch, duration → little-endian u32 months (years × 12 + months), days, millis.
* Dekaf (``crates/dekaf/src``, and shared/reference/estuary.md §3): the value record holds the
  selected fields with ``/`` folded to ``_`` (``_meta/op`` → ``_meta_op``); ``cdc`` deletions add
  an integer ``_is_deleted``; a ``kafka``-mode delete is a tombstone (key, null value).

Only what the tests need is covered: ``type`` (string or list), ``properties``, ``required``,
``items``, ``format``, ``additionalProperties``, ``oneOf`` (its branches' types are unioned, as
``doc::Shape`` does), ``default``.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import struct
from typing import Any

import orjson

_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")
_FORMATS = {"date-time": ("long", "timestamp-micros"), "date": ("int", "date"), "uuid": ("string", "uuid")}


def _types(schema: dict) -> set[str]:
    if schema is True or schema == {}:
        return set(_TYPES)
    if "oneOf" in schema or "anyOf" in schema:
        out: set[str] = set()
        for branch in schema.get("oneOf", schema.get("anyOf")):
            out |= _types(branch)
        return out
    t = schema.get("type")
    if t is None:
        return {"object"} if "properties" in schema else set(_TYPES)
    return {t} if isinstance(t, str) else set(t)


def _raw_json(loc: str) -> dict:
    return {"type": "record", "name": f"{loc}.RawJSON", "fields": [{"name": "json", "type": "string"}]}


def _string_format(schema: dict) -> str | None:
    if "oneOf" in schema or "anyOf" in schema:
        for branch in schema.get("oneOf", schema.get("anyOf")):
            fmt = _string_format(branch)
            if fmt:
                return fmt
        return None
    return schema.get("format")


def shape_to_avro(schema: dict, loc: str, required: bool) -> Any:  # noqa: ANN401
    types = _types(schema)
    nullable = "null" in types or (not required and "default" not in schema)
    types.discard("null")
    fmt = _string_format(schema)
    if "string" in types:
        rest = types - {"string"}
        if rest and fmt in ("number", "integer") and rest <= {"integer", "number"}:
            # shape_to_avro: a number-like string is a double, an integer-like one stays a string
            base: Any = "double" if "number" in rest else "string"
        elif rest:
            base = _raw_json(loc)
        elif fmt in _FORMATS:
            base = {"type": _FORMATS[fmt][0], "logicalType": _FORMATS[fmt][1]}
        elif fmt == "duration":
            base = {"type": "fixed", "name": f"{loc}.Duration", "size": 12, "logicalType": "duration"}
        else:
            base = "string"
    elif len(types) == 1:
        (t,) = types
        base = {"boolean": "boolean", "integer": "long", "number": "double"}.get(t)
        if t == "array":
            base = {"type": "array", "items": shape_to_avro(schema.get("items", {}), f"{loc}._items", True)}
        elif t == "object":
            base = object_to_avro(schema, loc)
    elif types == {"integer", "number"}:
        base = "double"
    elif not types and nullable:
        return "null"
    else:
        base = _raw_json(loc)
    return [base, "null"] if nullable else base


def object_to_avro(schema: dict, loc: str) -> dict:
    props = schema.get("properties", {})
    required = set(schema.get("required", ()))
    addl = schema.get("additionalProperties", True)
    if not props and addl is not False:
        return {"type": "map", "values": shape_to_avro(addl if isinstance(addl, dict) else {}, loc, True)}
    fields = []
    extra: list[dict] = [] if addl is False else [addl if isinstance(addl, dict) else {}]
    for name in sorted(props):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            extra.append(props[name])  # object_to_avro: such names go to _flow_extra
            continue
        field: dict[str, Any] = {"name": name, "type": shape_to_avro(props[name], f"{loc}.{name}", name in required)}
        if "default" in props[name]:
            field["default"] = props[name]["default"]
        fields.append(field)
    if extra:
        union = extra[0] if len(extra) == 1 else {"oneOf": extra}
        fields.append({"name": "_flow_extra", "type": {"type": "map", "values": shape_to_avro(
            union, f"{loc}._flow_extra", True)}})
    return {"type": "record", "name": loc, "fields": fields}


def locate(schema: dict, pointer: str) -> tuple[dict, bool]:
    """The sub-schema at a JSON pointer, and whether it is required all the way down."""
    node, required = schema, True
    for part in pointer[1:].split("/"):
        required = required and part in node.get("required", ())
        node = node.get("properties", {}).get(part, {})
    return node, required


def key_schema(schema: dict, key: list[str]) -> dict:
    parts = [{"name": f"p{i}", "type": shape_to_avro(locate(schema, ptr)[0], f"root.Key.Parts.p{i}", True)}
             for i, ptr in enumerate(key, 1)]
    return {"type": "record", "name": "root.Key", "fields": [
        {"name": "_flow_key", "type": {"type": "record", "name": "root.Key.Parts", "fields": parts}}]}


def dekaf_value_schema(schema: dict, fields: list[str], *, cdc: bool = False, root_document: bool = False) -> dict:
    """The value record of a Dekaf binding selecting ``fields`` (JSON pointers)."""
    props, required = {}, []
    for ptr in fields:
        sub, req = locate(schema, ptr)
        name = ptr[1:].replace("/", "_")
        props[name] = sub
        if req:
            required.append(name)
    if cdc:
        props["_is_deleted"] = {"type": "integer"}
        required.append("_is_deleted")
    if root_document:
        props["flow_document"] = schema
        required.append("flow_document")
    return object_to_avro({"type": "object", "properties": props, "required": required,
                           "additionalProperties": False}, "root")


# -- encoding JSON into datums (what encode.rs writes, as fastavro expects it) -------------------

def datum(avro: Any, value: Any) -> Any:  # noqa: ANN401
    if isinstance(avro, list):
        return None if value is None else datum(avro[0], value)
    if avro == "null":
        return None
    if isinstance(avro, str):
        return value
    kind, logical = avro.get("type"), avro.get("logicalType")
    if logical == "timestamp-micros":
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if logical == "date":
        return dt.date.fromisoformat(value)
    if logical == "uuid":
        return value
    if logical == "duration":
        m = re.fullmatch(r"P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?T?(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?", value)
        y, mo, d, h, mi, s = (x or "0" for x in m.groups())
        return struct.pack("<III", int(y) * 12 + int(mo), int(d),
                           int(h) * 3_600_000 + int(mi) * 60_000 + int(float(s) * 1000))
    if kind == "record" and avro["name"].endswith("RawJSON"):
        return {"json": orjson.dumps(value).decode()}
    if kind == "record":
        names = {f["name"] for f in avro["fields"]}
        out = {}
        for f in avro["fields"]:
            if f["name"] == "_flow_extra":
                values = f["type"]["values"]
                out["_flow_extra"] = {k: datum(values, v) for k, v in value.items() if k not in names}
            else:
                out[f["name"]] = datum(f["type"], value.get(f["name"], f.get("default")))
        return out
    if kind == "map":
        return {k: datum(avro["values"], v) for k, v in value.items()}
    if kind == "array":
        return [datum(avro["items"], v) for v in value]
    return value


def framed(registry, subject: str, avro: dict, value: Any) -> bytes:  # noqa: ANN001, ANN401
    """Confluent framing: magic 0, the registered schema id (big-endian), the Avro body."""
    import fastavro
    from confluent_kafka.schema_registry import Schema

    schema_id = registry.register_schema(subject, Schema(orjson.dumps(avro).decode(), "AVRO"))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(avro), datum(avro, value))
    return b"\0" + schema_id.to_bytes(4, "big") + buf.getvalue()


def dekaf_message(registry, topic: str, schema: dict, key: list[str], fields: list[str], doc: dict, *,  # noqa: ANN001
                  deletions: str = "kafka") -> tuple[bytes, bytes | None]:
    """(key bytes, value bytes or None) for one document, as Dekaf would serve it."""
    key_avro = key_schema(schema, key)
    parts = {}
    for i, ptr in enumerate(key, 1):
        node: Any = doc
        for step in ptr[1:].split("/"):
            node = node[step]
        parts[f"p{i}"] = node
    k = framed(registry, f"{topic}-key", key_avro, {"_flow_key": parts})
    deleted = doc.get("_meta", {}).get("op") == "d"
    if deleted and deletions == "kafka":
        return k, None
    value_avro = dekaf_value_schema(schema, fields, cdc=deletions == "cdc")
    record = {}
    for ptr in fields:
        node = doc
        for step in ptr[1:].split("/"):
            node = node.get(step) if isinstance(node, dict) else None
        record[ptr[1:].replace("/", "_")] = node
    if deletions == "cdc":
        record["_is_deleted"] = 1 if deleted else 0
    return k, framed(registry, f"{topic}-value", value_avro, record)


def materialize_kafka_json(doc: dict, key: list[str], fields: list[str]) -> tuple[bytes, bytes | None]:
    """``materialize-kafka`` JSON (transactor.rs ``msg_for_store``): key = the key fields by
    name; value = keys, values and the root document (a JSON string) by field name."""
    def at(ptr: str) -> Any:  # noqa: ANN401
        node: Any = doc
        for step in ptr[1:].split("/"):
            node = node.get(step) if isinstance(node, dict) else None
        return node

    k = orjson.dumps({ptr[1:]: at(ptr) for ptr in key})
    if doc.get("_meta", {}).get("op") == "d":
        return k, None
    value = {ptr[1:]: at(ptr) for ptr in [*key, *fields]}
    value["flow_document"] = orjson.dumps(doc).decode()
    return k, orjson.dumps(value)
