"""A query request as it arrives (HTTP body, CLI flags, MCP arguments) → :class:`QueryRequest`.

Validation errors become :class:`~worker.filters.FilterInvalid` (a 400) naming the field;
retrieval itself is :class:`worker.retrieve.Retriever`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from worker.contract import QueryRequest, field_of
from worker.filters import FilterInvalid


def parse_request(payload: Any) -> QueryRequest:  # noqa: ANN401
    if not isinstance(payload, dict):
        raise FilterInvalid("query body must be a JSON object", field="body")
    try:
        return QueryRequest.model_validate(payload)
    except ValidationError as exc:
        field, message = field_of(exc)
        raise FilterInvalid(message, field=field) from None
