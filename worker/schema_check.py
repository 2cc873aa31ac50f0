"""Schema compatibility: can a binding read a collection's JSON schema? And schema drift at run time.

:func:`check_schema` compares a collection's schema, as ``flowctl`` or the Estuary UI shows it,
with what the binding expects (the same document :meth:`worker.documents.Binding.json_schema`
serves at ``GET /estuary/schema``): the key pointers must exist and be required, the text and
metadata fields must exist with types the binding can read; anything else is reported as what
would be dead-lettered. ``memory-worker schema check`` prints it.

:class:`DriftWatch` notices, in the running stream, a top-level field never seen before or a
field whose JSON type changed, and logs one warning per (collection, field, type): not one per
document.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.documents import Binding

log = logging.getLogger(__name__)

_ALL = frozenset({"array", "boolean", "integer", "null", "number", "object", "string"})


def json_types(schema: Any) -> frozenset[str]:  # noqa: ANN401
    """The JSON types a (sub)schema allows (``oneOf``/``anyOf`` unioned; none given: any)."""
    if schema is True or not isinstance(schema, Mapping) or not schema:
        return _ALL
    if "oneOf" in schema or "anyOf" in schema:
        out: set[str] = set()
        for branch in schema.get("oneOf") or schema.get("anyOf") or ():
            out |= json_types(branch)
        return frozenset(out)
    if "enum" in schema and "type" not in schema:
        return frozenset({_type_of(v) for v in schema["enum"]})
    t = schema.get("type")
    if t is None:
        return frozenset({"object"}) if "properties" in schema else _ALL
    types = {t} if isinstance(t, str) else set(t)
    if "number" in types:  # JSON Schema: every integer is a number
        types.add("integer")
    return frozenset(types)


def _type_of(value: Any) -> str:  # noqa: ANN401
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def locate(schema: Mapping[str, Any], pointer: str) -> tuple[Mapping[str, Any] | None, bool]:
    """The sub-schema at ``pointer`` (``None`` if undeclared) and whether it is required."""
    node: Any = schema
    required = True
    for part in pointer[1:].split("/"):
        props = node.get("properties", {}) if isinstance(node, Mapping) else {}
        if part not in props:
            return None, False
        required = required and part in node.get("required", ())
        node = props[part]
    return node, required


@dataclass
class SchemaReport:
    collection: str
    errors: list[str] = field(default_factory=list)  # the binding cannot read such documents
    warnings: list[str] = field(default_factory=list)  # some documents would be dead-lettered
    fields: dict[str, str] = field(default_factory=dict)  # field -> ok | missing | incompatible

    @property
    def compatible(self) -> bool:
        return not self.errors

    def as_json(self) -> dict[str, Any]:
        return {"collection": self.collection, "compatible": self.compatible, "errors": self.errors,
                "warnings": self.warnings, "fields": self.fields}


def check_schema(binding: Binding, schema: Mapping[str, Any]) -> SchemaReport:
    report = SchemaReport(binding.collection)
    expected = binding.json_schema()
    if "schema" in schema and "properties" not in schema and isinstance(schema["schema"], Mapping):
        schema = schema["schema"]  # a collection spec, not only its schema
    for pointer in binding.key_pointers:
        sub, required = locate(schema, pointer)
        if sub is None:
            report.errors.append(f"key {pointer} is not in the schema: every document is dead-lettered "
                                 "(key field is missing)")
            report.fields[pointer] = "missing"
        elif not required:
            report.errors.append(f"key {pointer} is not required: documents without it are dead-lettered")
            report.fields[pointer] = "not required"
        elif not json_types(sub) & {"string", "integer", "number", "boolean"}:
            report.errors.append(f"key {pointer} is {sorted(json_types(sub))}, not a scalar")
            report.fields[pointer] = "incompatible"
        else:
            report.fields[pointer] = "ok"
    keys = {p[1:].split("/")[0] for p in binding.key_pointers}
    text_fields = _text_fields(binding)
    for name, want in expected.get("properties", {}).items():
        if name in keys or name == "_meta":
            continue
        sub, required = locate(schema, f"/{name}")
        pointer = f"/{name}"
        is_text = pointer in text_fields
        if sub is None:
            (report.errors if is_text and len(text_fields) == 1 else report.warnings).append(
                f"{pointer} is not in the schema" + (": every document is dead-lettered (no text)"
                                                     if is_text and len(text_fields) == 1 else ""))
            report.fields[pointer] = "missing"
            continue
        have, accept = json_types(sub), json_types(want) | {"null"}
        bad = have - accept
        if bad and not have & accept:
            (report.errors if is_text else report.warnings).append(
                f"{pointer} is {sorted(have)}, the binding reads {sorted(accept - {'null'})}: "
                + ("every document is dead-lettered" if is_text else "the field is ignored"))
            report.fields[pointer] = "incompatible"
        elif bad:
            report.warnings.append(f"{pointer} may be {sorted(bad)}: such documents are dead-lettered"
                                   if is_text else f"{pointer} may be {sorted(bad)}: then it is stored as JSON text")
            report.fields[pointer] = "partly compatible"
        else:
            report.fields[pointer] = "ok"
        if is_text and not required and len(text_fields) == 1:
            report.warnings.append(f"{pointer} is optional: documents without it are dead-lettered")
    return report


def _text_fields(binding: Binding) -> set[str]:
    preset = binding.config.preset
    if preset == "gong_call":
        return {"/transcript"}
    if preset == "slack_message":
        return {"/text"}
    if preset == "github_document":
        return {"/body", "/title"}
    return set(binding.config.text or ())


class DriftWatch:
    """Top-level fields and their JSON types per collection; warns once per novelty.

    The first ``warmup`` documents of a collection (and the binding's expected properties, when
    given) make the baseline silently: a collection whose documents vary by kind (GitHub issues,
    comments, releases) does not warn for fields that are simply normal for it.
    """

    def __init__(self, *, warmup: int = 100, expected: Mapping[str, Any] | None = None) -> None:
        self._seen: dict[str, dict[str, set[str]]] = {}
        self._count: dict[str, int] = {}
        self._expected = expected or {}
        self._lock = threading.Lock()
        self.warmup = warmup
        self.changes = 0

    def observe(self, collection: str, raw: Mapping[str, Any]) -> None:
        with self._lock:
            n = self._count.get(collection, 0)
            self._count[collection] = n + 1
            first = n < self.warmup
            if collection not in self._seen:
                self._seen[collection] = {name: set(json_types(sub)) for name, sub in
                                          self._expected.get(collection, {}).items()}
            fields = self._seen[collection]
            for name, value in raw.items():
                kind = _type_of(value)
                held = fields.get(name)
                if held is None:
                    fields[name] = {kind}
                    if not first:
                        self.changes += 1
                        log.warning("new field in the stream", extra={"collection": collection,
                                                                      "field": name, "type": kind})
                elif kind not in held:
                    before = sorted(held)
                    held.add(kind)
                    if kind != "null" and not first:  # a field turning up null is no change of type
                        self.changes += 1
                        log.warning("field changed type in the stream", extra={
                            "collection": collection, "field": name, "type": kind, "before": before})
