"""Typed metadata fields: what every sink stores as a filterable column, property or key.

A binding declares its metadata fields with a type; a preset declares its own (``PRESET_FIELDS``)
and a generic binding gives ``metadata: {name: pointer}`` (a string field) or
``metadata: {name: {pointer: ..., type: ...}}``. :class:`FieldCatalog` is the union over every
binding (one name has one type everywhere, checked when the config loads), plus the built-in
fields every row carries (``source``, ``collection``, ``doc_id``, ``published_at``).

Types and how each sink stores them:

==========  ===================  ==================  ======================
type        LanceDB column       Weaviate property   Pinecone metadata
==========  ===================  ==================  ======================
string      utf8                 text (field tok.)   string
string[]    list<utf8>           text[] (field tok.) list of strings
number      float64              number              number
integer     int64                int                 number
boolean     bool                 boolean             boolean
time        float64 unix secs    number unix secs    number unix secs
==========  ===================  ==================  ======================

A value that cannot be coerced to its field's type (``"soon"`` for a time) is left out of the
stored metadata and counted per (collection, field) in ``memory_worker_metadata_dropped_total``
with a warning, never stored under the wrong type.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from worker.records import MetadataValue

log = logging.getLogger(__name__)

FieldType = Literal["string", "string[]", "number", "integer", "boolean", "time"]
FIELD_TYPES: tuple[str, ...] = ("string", "string[]", "number", "integer", "boolean", "time")
#: Field names every sink accepts as a column / property / key.
NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

#: Fields every row carries, filterable on every collection.
BUILTIN: dict[str, FieldType] = {"source": "string", "collection": "string", "doc_id": "string",
                                 "published_at": "time"}
#: Row fields that a binding's metadata may not shadow.
RESERVED = frozenset(("id", "uuid", "doc_id", "source", "collection", "chunk_index", "chunk_count",
                      "content_hash", "text_hash", "meta_hash", "version", "published_at", "title",
                      "url", "text", "extra", "vector", "sparse"))

PRESET_FIELDS: dict[str, dict[str, FieldType]] = {
    "gong_call": {"account_id": "string", "account_name": "string", "started_at": "time",
                  "duration_s": "number", "topics": "string[]", "action_items": "string[]",
                  "sentiment": "number", "sentiment_category": "string",
                  "participants": "string[]"},
    "slack_message": {"channel_id": "string", "channel_name": "string", "user_id": "string",
                      "user_name": "string", "ts": "string", "thread_ts": "string",
                      "reply_count": "integer", "sentiment": "number",
                      "sentiment_category": "string", "is_reply": "boolean"},
    "github_document": {"repo": "string", "number": "integer", "parent_number": "integer",
                        "kind": "string", "state": "string", "author": "string",
                        "labels": "string[]", "created_at": "time", "updated_at": "time",
                        "sentiment_category": "string"},
}


def parse_time(value: Any) -> float | None:  # noqa: ANN401
    """ISO 8601 (``Z`` allowed, naive means UTC) or unix seconds → unix seconds; None if not a time."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def format_time(seconds: float) -> str:
    """Unix seconds → ISO 8601 UTC with ``Z`` (whole seconds when exact)."""
    dt = datetime.fromtimestamp(float(seconds), tz=timezone.utc)
    text = dt.isoformat(timespec="seconds" if dt.microsecond == 0 else "milliseconds")
    return text.replace("+00:00", "Z")


_NOT = object()


def coerce(kind: str, value: Any) -> Any:  # noqa: ANN401
    """``value`` as ``kind`` stores it, or the ``_NOT`` sentinel when it does not fit."""
    if kind == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        return _NOT
    if kind == "string[]":
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return [v if isinstance(v, str) else str(v) for v in value]
        return _NOT
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return _NOT
    if kind in ("number", "integer"):
        if isinstance(value, bool):
            return _NOT
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return _NOT
        if not isinstance(value, (int, float)) or value != value:  # NaN
            return _NOT
        if kind == "integer":
            if isinstance(value, float) and not value.is_integer():
                return _NOT
            return int(value)
        return float(value)
    if kind == "time":
        seconds = parse_time(value)
        return _NOT if seconds is None else seconds
    raise ValueError(f"unknown field type {kind!r}")


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    type: FieldType
    collections: tuple[str, ...] = ()  # empty: built in, on every collection

    @property
    def is_list(self) -> bool:
        return self.type == "string[]"

    @property
    def is_numeric(self) -> bool:
        return self.type in ("number", "integer", "time")


class BindingFields:
    """One binding's declared metadata fields; coerces a parsed document's metadata to them."""

    def __init__(self, collection: str, declared: Mapping[str, FieldType]) -> None:
        self.collection = collection
        self.declared = dict(declared)
        self.dropped: Counter[str] = Counter()

    def coerce(self, metadata: Mapping[str, MetadataValue], key: str = "") -> dict[str, MetadataValue]:
        out: dict[str, MetadataValue] = {}
        for name, value in metadata.items():
            kind = self.declared.get(name)
            if kind is None:
                continue  # not declared: not stored (the catalog is the schema)
            typed = coerce(kind, value)
            if typed is _NOT:
                self.dropped[name] += 1
                log.warning("metadata value does not fit its field type; left out",
                            extra={"collection": self.collection, "field": name, "type": kind,
                                   "key": key})
                continue
            out[name] = typed
        return out


class FieldCatalog:
    """Every filterable field across the bindings: name → :class:`FieldSpec`."""

    def __init__(self, bindings: Mapping[str, Mapping[str, FieldType]]) -> None:
        fields: dict[str, FieldSpec] = {n: FieldSpec(n, t) for n, t in BUILTIN.items()}
        owners: dict[str, list[str]] = {}
        types: dict[str, str] = {}
        for collection, declared in bindings.items():
            for name, kind in declared.items():
                if name in types and types[name] != kind:
                    raise ValueError(f"metadata field {name!r} is {types[name]} in "
                                     f"{owners[name][0]!r} but {kind} in {collection!r}: one name "
                                     "has one type in every sink; rename one of them")
                types[name] = kind
                owners.setdefault(name, []).append(collection)
        for name, kind in types.items():
            fields[name] = FieldSpec(name, kind, tuple(owners[name]))  # type: ignore[arg-type]
        self.fields = fields

    @property
    def metadata(self) -> dict[str, FieldSpec]:
        """The bindings' fields (no built-ins): the typed columns a sink must create."""
        return {n: f for n, f in self.fields.items() if n not in BUILTIN}

    def get(self, name: str) -> FieldSpec | None:
        return self.fields.get(name)

    def for_collection(self, collection: str) -> dict[str, FieldSpec]:
        return {n: f for n, f in self.fields.items() if not f.collections or collection in f.collections}

    def output(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """Stored metadata as a query answers it: times back to ISO 8601, ints as ints."""
        out: dict[str, Any] = {}
        for name, value in metadata.items():
            spec = self.fields.get(name)
            if value is None:
                continue
            if spec is not None and spec.type == "time" and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                out[name] = format_time(value)
            elif spec is not None and spec.type == "integer" and isinstance(value, float) \
                    and value.is_integer():
                out[name] = int(value)
            else:
                out[name] = value
        return out


def check_name(name: str, where: str) -> None:
    if not NAME.match(name):
        raise ValueError(f"{where}: metadata field name {name!r} must match {NAME.pattern} "
                         "(lower case, digits and _, as every sink accepts)")
    if name in RESERVED:
        raise ValueError(f"{where}: metadata field name {name!r} is reserved for the row's own "
                         f"fields ({', '.join(sorted(RESERVED))}); rename it")
