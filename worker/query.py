"""A query request as it arrives (HTTP body, CLI flags, MCP arguments) → :class:`QueryRequest`.

Validation errors become :class:`~worker.filters.FilterInvalid` (a 400) naming the field;
retrieval itself is :class:`worker.retrieve.Retriever`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from worker.contract import QueryRequest, field_of
from worker.fields import parse_time as _parse_time
from worker.filters import FilterInvalid


def parse_request(payload: Any) -> QueryRequest:  # noqa: ANN401
    if not isinstance(payload, dict):
        raise FilterInvalid("query body must be a JSON object", field="body")
    try:
        return QueryRequest.model_validate(payload)
    except ValidationError as exc:
        field, message = field_of(exc)
        raise FilterInvalid(message, field=field) from None


def parse_time(value: str | float | None) -> float | None:
    """ISO 8601 or unix seconds → unix seconds (``None`` passes); ValueError if not a time."""
    if value is None:
        return None
    seconds = _parse_time(value)
    if seconds is None:
        raise ValueError(f"{value!r} is not a time (ISO 8601 or unix seconds)")
    return seconds
