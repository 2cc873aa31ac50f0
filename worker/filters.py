"""The query filter grammar, checked against the typed fields, and its rendering for each sink.

Grammar (a JSON object; every entry must hold)::

    {"field": value}                          equal (on a string[] field: contains)
    {"field": {"$in": [v1, v2]}}              one of (on a string[] field: contains any)
    {"field": {"$gte": a, "$lt": b}}          range: $gt $gte $lt $lte, on number, integer, time
    {"field": {"$eq": value}}                 equal, spelled out

Fields are the built-ins (``source``, ``collection``, ``doc_id``, ``published_at``) and every
binding's metadata fields (:class:`worker.fields.FieldCatalog`). Time values are ISO 8601 or unix
seconds. ``published_after`` / ``published_before`` are kept as shorthands for
``published_at`` ``$gte`` / ``$lt``. Anything else is a :class:`FilterInvalid` naming the field.

Renderers: :func:`lance_sql` (a LanceDB / DataFusion SQL predicate, values quoted),
:func:`pinecone_filter` (Pinecone's metadata filter language) and :func:`weaviate_filter`
(``weaviate.classes.query.Filter``). All three give the same answers (tested against each other).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from worker.errors import RequestInvalid
from worker.fields import FieldCatalog, FieldSpec, coerce, _NOT
from worker.records import Condition, QueryFilter

RANGE_OPS = {"$gte": "gte", "$gt": "gt", "$lte": "lte", "$lt": "lt"}
OPS = ("$eq", "$in", *RANGE_OPS)
SHORTHANDS = {"published_after": "$gte", "published_before": "$lt"}
MAX_IN = 256


class FilterInvalid(RequestInvalid):
    """A filter entry that cannot be applied; ``field`` names it (``filter.<name>``)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


def _scalar(spec: FieldSpec, value: Any, where: str) -> object:  # noqa: ANN401
    """A filter operand as the field stores it (a list field's operand is one element)."""
    kind = "string" if spec.is_list else spec.type
    if isinstance(value, (dict, list)) or value is None:
        raise FilterInvalid(f"{where}: expected a {kind} value, got {type(value).__name__}", field=where)
    typed = coerce(kind, value)
    if typed is _NOT or (kind in ("number", "integer", "time") and isinstance(value, str)
                         and kind != "time"):
        raise FilterInvalid(f"{where}: {value!r} is not a {kind}", field=where)
    return typed


def parse_filter(raw: Mapping[str, Any] | None, catalog: FieldCatalog) -> QueryFilter:
    """A request's ``filter`` object → :class:`QueryFilter`; unknown fields are refused by name."""
    if not raw:
        return QueryFilter()
    if not isinstance(raw, Mapping):
        raise FilterInvalid("filter must be an object of field: condition", field="filter")
    conditions: list[Condition] = []
    for name, cond in raw.items():
        op_alias = SHORTHANDS.get(name)
        field_name = "published_at" if op_alias else name
        where = f"filter.{name}"
        spec = catalog.get(field_name)
        if spec is None:
            known = ", ".join(sorted(catalog.fields))
            raise FilterInvalid(f"{where}: unknown field {name!r}; filterable fields: {known}",
                                field=where)
        if op_alias:
            cond = {op_alias: cond}
        if not isinstance(cond, Mapping):
            conditions.append(Condition(field_name, spec.type, "eq", _scalar(spec, cond, where)))
            continue
        if not cond:
            raise FilterInvalid(f"{where}: empty condition", field=where)
        for op, operand in cond.items():
            at = where if op_alias else f"{where}.{op}"
            if op == "$eq":
                conditions.append(Condition(field_name, spec.type, "eq", _scalar(spec, operand, at)))
            elif op == "$in":
                if not isinstance(operand, list) or not operand:
                    raise FilterInvalid(f"{at}: expected a non-empty list", field=at)
                if len(operand) > MAX_IN:
                    raise FilterInvalid(f"{at}: at most {MAX_IN} values", field=at)
                values = tuple(dict.fromkeys(_scalar(spec, v, at) for v in operand))
                conditions.append(Condition(field_name, spec.type, "in", values))
            elif op in RANGE_OPS:
                if not spec.is_numeric:
                    raise FilterInvalid(f"{at}: range operators apply to number, integer and time "
                                        f"fields; {field_name!r} is {spec.type}", field=at)
                conditions.append(Condition(field_name, spec.type, RANGE_OPS[op], _scalar(spec, operand, at)))
            else:
                raise FilterInvalid(f"{at}: unknown operator; use one of {', '.join(OPS)}", field=at)
    return QueryFilter(where=tuple(conditions))


# -- renderers ------------------------------------------------------------------------------------

def _sql_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(float(value)) if isinstance(value, float) else str(int(value))
    return "'" + str(value).replace("'", "''") + "'"


_SQL_OPS = {"gte": ">=", "gt": ">", "lte": "<=", "lt": "<", "eq": "="}


def lance_sql(conditions: Sequence[Condition]) -> str | None:
    """A LanceDB (DataFusion) predicate: ``array_has``/``array_has_any`` for list fields."""
    parts = []
    for c in conditions:
        if c.kind == "string[]":
            if c.op == "eq":
                parts.append(f"array_has({c.field}, {_sql_value(c.value)})")
            else:
                values = ", ".join(_sql_value(v) for v in c.value)  # type: ignore[attr-defined]
                parts.append(f"array_has_any({c.field}, [{values}])")
        elif c.op == "in":
            values = ", ".join(_sql_value(v) for v in c.value)  # type: ignore[attr-defined]
            parts.append(f"{c.field} IN ({values})")
        else:
            parts.append(f"{c.field} {_SQL_OPS[c.op]} {_sql_value(c.value)}")
    return " AND ".join(parts) or None


def pinecone_filter(conditions: Sequence[Condition]) -> dict[str, Any] | None:
    """Pinecone's filter language; a list-valued field matches ``$eq``/``$in`` on any element."""
    clauses: list[dict[str, Any]] = []
    for c in conditions:
        op = "$" + c.op
        value = list(c.value) if c.op == "in" else c.value  # type: ignore[call-overload]
        if c.kind in ("number", "integer", "time") and c.op != "in":
            value = float(value)  # type: ignore[arg-type]
        elif c.kind in ("number", "integer", "time"):
            value = [float(v) for v in value]
        clauses.append({c.field: {op: value}})
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def weaviate_filter(conditions: Sequence[Condition]) -> Any:  # noqa: ANN401
    """``weaviate.classes.query.Filter``: text fields use field tokenization (exact values)."""
    from weaviate.classes.query import Filter

    parts = []
    for c in conditions:
        prop = Filter.by_property(c.field)
        value: Any = c.value
        if c.kind in ("number", "time"):
            value = [float(v) for v in value] if c.op == "in" else float(value)
        if c.kind == "string[]":
            parts.append(prop.contains_any([value] if c.op == "eq" else list(value)))
        elif c.op == "in":
            parts.append(prop.contains_any(list(value)))
        elif c.op == "eq":
            parts.append(prop.equal(value))
        else:
            method = {"gte": "greater_or_equal", "gt": "greater_than", "lte": "less_or_equal",
                      "lt": "less_than"}[c.op]
            parts.append(getattr(prop, method)(value))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Filter.all_of(parts)
