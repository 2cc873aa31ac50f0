"""Kafka messages → the Estuary JSON documents the webhook would have delivered.

Both codecs walk the **writer schema** (from the schema registry, by the id in the Confluent
framing) together with the decoded datum, so each Estuary encoding is undone where its schema
says it was applied, never by guessing from a value's shape. The rules, as Estuary applies them
(``estuary/flow`` ``crates/avro/src/schema.rs`` and ``encode.rs``):

* ``key_to_avro``: the key is ``root.Key { _flow_key: root.Key.Parts { p1, p2, … } }``, one
  field per key component in key order → mapped back onto the binding's key pointers.
* ``raw_json_schema``: a location with several JSON types (string or array, untyped, …) is a
  record named ``…RawJSON`` with one string field ``json`` holding the JSON text → parsed back.
* ``object_to_avro``: properties outside the declared ones (or whose names Avro cannot hold)
  are in a trailing map field ``_flow_extra`` → merged back into their object; an object with
  only additional properties is an Avro ``map``.
* ``shape_to_avro``: ``format: date-time`` → ``timestamp-micros``, ``date`` → ``date``,
  ``uuid`` → ``uuid``, ``duration`` → Avro ``duration`` (months, days, millis); a nullable or
  optional location is a union ``[T, "null"]``; ``format: integer`` strings stay strings.
  ``encode.rs`` writes an absent optional property as null: nulls are dropped on the way back.

Dekaf (``crates/dekaf/src``): selected fields at the top level with ``/`` folded to ``_``
(``_meta/op`` → ``_meta_op``), the root document as a nested record ``flow_document``, deletes as
tombstones (``deletions: kafka``) or ``_is_deleted: 1`` (``cdc``).

materialize-kafka (``estuary/connectors`` ``materialize-kafka/src/transactor.rs``,
``binding_info.rs``): the key is a JSON object of the key fields (or the Avro key above); the
value holds every selected field by its field name (``_meta/op`` keeps its ``/``; in Avro such
names go to ``_flow_extra``), the root document as a JSON **string**; a delete is the key with
no payload; ``flow_checkpoints`` (``flow_checkpoints_v1`` in newer versions) is the connector's
own topic. Newer connector versions (``estuary/connectors`` 853e7ee34) write with an idempotent,
non-transactional producer; older ones with a transactional one. Reading with
``read_committed`` is right for both.

A tombstone carries no ``_meta``: its version is the message timestamp, as a v1 UUID at the end
of that millisecond (:func:`publish_uuid`).
"""

from __future__ import annotations

import datetime as dt
import io
import struct
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson

from worker.config import DekafSourceConfig, KafkaSourceConfig
from worker.documents import Binding

FLOW_KEY = "_flow_key"
FLOW_EXTRA = "_flow_extra"
#: The connector's own checkpoint topics (the ``_v1`` name in newer connector versions).
CHECKPOINT_TOPICS = ("flow_checkpoints", "flow_checkpoints_v1")
_GREGORIAN_TO_UNIX_TICKS = 0x01B21DD213814000
_TICKS_PER_MS = 10_000
_TOMBSTONE_NODE = 0x0000_4465_6B61  # marks versions made from a message timestamp
_ROOT_FIELDS = ("flow_document",)


class UndecodableMessage(ValueError):
    """The bytes are not what the source's format says (dead-lettered with this reason)."""


def publish_uuid(timestamp_ms: int) -> str:
    """A Flow-style v1 UUID for a publish time known to the millisecond (tombstones).

    The 100 ns timestamp is the last tick of that millisecond and the 4-bit tick counter
    (``clock_seq >> 10``) is at its maximum, so the version sorts after every document published
    in or before that millisecond.
    """
    ticks = timestamp_ms * _TICKS_PER_MS + _GREGORIAN_TO_UNIX_TICKS + _TICKS_PER_MS - 1
    clock_seq = 0xF << 10
    return str(uuidlib.UUID(fields=(ticks & 0xFFFFFFFF, (ticks >> 32) & 0xFFFF,
                                    ((ticks >> 48) & 0x0FFF) | 0x1000,
                                    0x80 | ((clock_seq >> 8) & 0x3F), clock_seq & 0xFF,
                                    _TOMBSTONE_NODE)))


# -- schema-directed decoding ---------------------------------------------------------------------

def _short_name(schema: Mapping[str, Any]) -> str:
    return str(schema.get("name", "")).rsplit(".", 1)[-1]


def _timestamp(value: Any) -> str:  # noqa: ANN401
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        value = value.astimezone(dt.timezone.utc)
        text = value.strftime("%Y-%m-%dT%H:%M:%S")
        if value.microsecond:  # the shortest fraction that holds it (".5", ".123", ".123456")
            text += f".{value.microsecond:06d}".rstrip("0")
        return text + "Z"
    if isinstance(value, int):  # micros, when read without logical types
        return _timestamp(dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=value))
    return str(value)


def _duration(value: Any) -> str:  # noqa: ANN401
    """Avro duration (little-endian u32 months, days, millis) → ISO 8601. ``encode.rs`` folds
    years into months and hours/minutes/seconds into millis; they are unfolded the same way
    (``P1Y2M3DT4H5M6.789S`` round-trips; ``PT90M`` comes back as ``PT1H30M``)."""
    if isinstance(value, (bytes, bytearray)) and len(value) == 12:
        months, days, millis = struct.unpack("<III", bytes(value))
    elif isinstance(value, (tuple, list)) and len(value) == 3:
        months, days, millis = value
    else:
        return str(value)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = rest / 1000
    years, months = divmod(months, 12)
    date = (f"{years}Y" if years else "") + (f"{months}M" if months else "") + (f"{days}D" if days else "")
    time = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "") + \
        (f"{seconds:g}S" if seconds else "")
    return "P" + date + ("T" + time if time else "") if (date or time) else "PT0S"


def from_avro(schema: Any, value: Any, named: Mapping[str, Any]) -> Any:  # noqa: ANN401, C901
    """``value`` as read by fastavro with ``schema`` → the JSON value Estuary encoded."""
    if value is None:
        return None
    if isinstance(schema, str):
        if schema in named:
            return from_avro(named[schema], value, named)
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return value
    if isinstance(schema, list):  # a union: Estuary's are [T, "null"]
        branches = [b for b in schema if b != "null"]
        return from_avro(branches[0], value, named) if len(branches) == 1 else _plain(value)
    kind = schema.get("type")
    logical = schema.get("logicalType")
    if logical in ("timestamp-micros", "timestamp-millis"):
        return _timestamp(value)
    if logical == "date":
        return value.isoformat() if isinstance(value, dt.date) else \
            (dt.date(1970, 1, 1) + dt.timedelta(days=int(value))).isoformat()
    if logical == "uuid":
        return str(value)
    if logical == "duration":
        return _duration(value)
    if kind == "record":
        if _short_name(schema) == "RawJSON":  # raw_json_schema: the value as JSON text
            text = value.get("json") if isinstance(value, Mapping) else value
            try:
                return orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise UndecodableMessage(f"{schema.get('name')}: not JSON: {exc}") from None
        out: dict[str, Any] = {}
        for f in schema["fields"]:
            name = f["name"]
            if name == FLOW_EXTRA:
                continue
            v = from_avro(f["type"], value.get(name), named)
            if v is not None:
                out[name] = v
        extra_field = next((f for f in schema["fields"] if f["name"] == FLOW_EXTRA), None)
        if extra_field is not None:
            for k, v in (value.get(FLOW_EXTRA) or {}).items():
                decoded = from_avro(extra_field["type"].get("values"), v, named) \
                    if isinstance(extra_field["type"], dict) else _plain(v)
                if decoded is not None:
                    out[k] = decoded
        return out
    if kind == "map":
        return {k: from_avro(schema["values"], v, named) for k, v in value.items()}
    if kind == "array":
        return [from_avro(schema["items"], v, named) for v in value]
    if kind in ("fixed", "bytes"):
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if isinstance(kind, (dict, list)) or (isinstance(kind, str) and kind in named):
        return from_avro(kind, value, named)
    return _plain(value)


def _plain(value: Any) -> Any:  # noqa: ANN401
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, uuidlib.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return _timestamp(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _collect_names(schema: Any, named: dict[str, Any]) -> None:  # noqa: ANN401
    if isinstance(schema, list):
        for s in schema:
            _collect_names(s, named)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed") and "name" in schema:
            named[schema["name"]] = schema
            if schema.get("namespace"):
                named[f"{schema['namespace']}.{schema['name']}"] = schema
        for f in schema.get("fields", ()):
            _collect_names(f["type"], named)
        for key in ("items", "values"):
            if key in schema:
                _collect_names(schema[key], named)
        if isinstance(schema.get("type"), (dict, list)):
            _collect_names(schema["type"], named)


class ConfluentAvro:
    """Confluent framing (magic 0, big-endian schema id) + writer schemas from the registry."""

    def __init__(self, registry: Any) -> None:  # noqa: ANN401
        self.registry = registry
        self._schemas: dict[int, tuple[Any, Any, dict[str, Any]]] = {}

    def _schema(self, schema_id: int) -> tuple[Any, Any, dict[str, Any]]:
        held = self._schemas.get(schema_id)
        if held is None:
            import fastavro

            raw = orjson.loads(self.registry.get_schema(schema_id).schema_str)  # registry errors propagate
            named: dict[str, Any] = {}
            _collect_names(raw, named)
            held = (fastavro.parse_schema(raw), raw, named)
            self._schemas[schema_id] = held
        return held

    def decode(self, data: bytes) -> tuple[Any, dict[str, Any]]:  # noqa: ANN401
        """(the JSON value, the writer schema) of one framed Avro message."""
        import fastavro

        if len(data) < 5 or data[0] != 0:
            raise UndecodableMessage("not Confluent-framed Avro (magic byte 0 and a schema id)")
        schema_id = int.from_bytes(data[1:5], "big")
        parsed, raw, named = self._schema(schema_id)
        try:
            datum = fastavro.schemaless_reader(io.BytesIO(data[5:]), parsed)
        except (EOFError, ValueError, IndexError, TypeError, struct.error) as exc:
            raise UndecodableMessage(f"Avro body does not match schema {schema_id}: {exc}") from None
        return from_avro(raw, datum, named), raw


def set_pointer(doc: dict[str, Any], pointer: str, value: Any) -> None:  # noqa: ANN401
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]
    node = doc
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = node[part] = {}
        node = nxt
    node[parts[-1]] = value


def key_parts(key: Mapping[str, Any], key_pointers: Sequence[str]) -> dict[str, Any]:
    """``{_flow_key: {p1, p2, …}}`` → ``{pointer: value}`` in key order (``key_to_avro``)."""
    parts = key.get(FLOW_KEY)
    if not isinstance(parts, Mapping):
        raise UndecodableMessage(f"key record has no {FLOW_KEY} record")
    out = {}
    for i, pointer in enumerate(key_pointers, 1):
        if f"p{i}" not in parts:
            raise UndecodableMessage(f"key has no p{i} for {pointer} ({len(parts)} parts, "
                                     f"{len(key_pointers)} key pointers)")
        out[pointer] = parts[f"p{i}"]
    return out


def tombstone(keys: Mapping[str, Any], timestamp_ms: int) -> dict[str, Any]:
    """The delete document for a key with no payload, versioned by the message timestamp."""
    doc: dict[str, Any] = {}
    for pointer, v in keys.items():
        set_pointer(doc, pointer, v)
    doc["_meta"] = {"uuid": publish_uuid(timestamp_ms), "op": "d"}
    return doc


def _meta_and_root(doc: dict[str, Any], fields: Mapping[str, Any], *, folded: bool) -> dict[str, Any]:
    """Selected fields over the root document; ``_meta`` fields gathered into ``_meta``."""
    meta = dict(doc.get("_meta") or {})
    for name, value in fields.items():
        if name in _ROOT_FIELDS or name in ("_is_deleted", "flow_published_at"):
            continue
        if folded and name.startswith("_meta_"):
            meta[name[len("_meta_"):]] = value
        elif not folded and name.startswith("_meta/"):
            meta[name[len("_meta/"):]] = value
        elif name == "_meta" and isinstance(value, Mapping):
            meta.update(value)
        elif not folded and "/" in name:
            set_pointer(doc, "/" + name, value)
        else:
            doc[name] = value
    if meta:
        doc["_meta"] = meta
    return doc


class DekafCodec:
    """Dekaf's Avro (key and value through the registry)."""

    def __init__(self, config: DekafSourceConfig, bindings: Mapping[str, Binding], registry: Any) -> None:  # noqa: ANN401
        self.config = config
        self.collections = {t.topic: t.collection for t in config.topics}
        self.bindings = bindings
        self.avro = ConfluentAvro(registry)

    def decode(self, message: Any) -> dict[str, Any] | None:  # noqa: ANN401
        binding = self.bindings[self.collections[message.topic()]]
        raw_key, raw_value = message.key(), message.value()
        if not raw_key:
            raise UndecodableMessage("message without a key")
        key, _ = self.avro.decode(raw_key)
        keys = key_parts(key, binding.key_pointers)
        _, timestamp_ms = message.timestamp()
        if raw_value is None:  # deletions: kafka
            return tombstone(keys, timestamp_ms)
        value, _ = self.avro.decode(raw_value)
        root = value.get("flow_document")
        doc = dict(root) if isinstance(root, Mapping) else {}
        doc = _meta_and_root(doc, value, folded=True)
        for pointer, v in keys.items():  # the key record is authoritative for the key
            set_pointer(doc, pointer, v)
        meta = doc.setdefault("_meta", {})
        if "uuid" not in meta:  # `_meta/uuid` not selected: the message timestamp orders it
            meta["uuid"] = publish_uuid(timestamp_ms)
        # cdc: `_is_deleted` with a field selection; `_meta.is_deleted` in the legacy layout that
        # sends the whole document (crates/dekaf/src/utils.rs)
        if self.config.deletions == "cdc" and (value.get("_is_deleted") in (1, True)
                                               or meta.pop("is_deleted", None) in (1, True)):
            meta["op"] = "d"
        return doc


class MaterializeKafkaCodec:
    """``materialize-kafka``'s JSON or Avro messages."""

    def __init__(self, config: KafkaSourceConfig, bindings: Mapping[str, Binding], registry: Any) -> None:  # noqa: ANN401
        self.config = config
        self.collections = {t.topic: t.collection for t in config.topics}
        self.bindings = bindings
        self.avro = ConfluentAvro(registry) if config.message_format == "avro" else None

    def _read(self, data: bytes) -> Any:  # noqa: ANN401
        if self.avro is not None:
            return self.avro.decode(data)[0]
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UndecodableMessage(f"not JSON: {exc}") from None

    def decode(self, message: Any) -> dict[str, Any] | None:  # noqa: ANN401
        if message.topic() in CHECKPOINT_TOPICS:
            return None
        binding = self.bindings[self.collections[message.topic()]]
        raw_key, raw_value = message.key(), message.value()
        if not raw_key:
            raise UndecodableMessage("message without a key")
        key = self._read(raw_key)
        if not isinstance(key, Mapping):
            raise UndecodableMessage("key is not an object")
        if FLOW_KEY in key:  # Avro keys use key_to_avro's parts
            keys = key_parts(key, binding.key_pointers)
        else:  # JSON keys: {field name: value}, field names = key pointers without the "/"
            keys = {}
            for pointer in binding.key_pointers:
                name = pointer[1:]
                if name not in key:
                    raise UndecodableMessage(f"key has no field {name!r}")
                keys[pointer] = key[name]
        _, timestamp_ms = message.timestamp()
        if raw_value is None:  # a delete: the key, no payload
            return tombstone(keys, timestamp_ms)
        value = self._read(raw_value)
        if not isinstance(value, Mapping):
            raise UndecodableMessage("value is not an object")
        root = value.get("flow_document")
        if isinstance(root, str):  # the root document is always a JSON string here
            try:
                root = orjson.loads(root)
            except orjson.JSONDecodeError as exc:
                raise UndecodableMessage(f"flow_document is not JSON: {exc}") from None
        doc = dict(root) if isinstance(root, Mapping) else {}
        doc = _meta_and_root(doc, value, folded=False)
        for pointer, v in keys.items():
            set_pointer(doc, pointer, v)
        doc.setdefault("_meta", {}).setdefault("uuid", publish_uuid(timestamp_ms))
        return doc
