"""Queries as AI Memory V2 asks them: the request's arguments, parsed once for HTTP and the CLI,
and :func:`run_query` (query embedding, with priority over ingest, then the sink's k-NN)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from worker.errors import RequestInvalid
from worker.records import Chunk, QueryFilter, QueryHit

FILTER_KEYS = ("source", "collection", "published_after", "published_before")


def parse_time(value: str | float | None) -> float | None:
    """ISO 8601 (``Z`` allowed, naive means UTC) or unix seconds → unix seconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a time")
    try:
        return float(value)
    except ValueError:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()


def query_args(payload: Any, sinks: list[str]) -> tuple[QueryFilter, str, int, str]:  # noqa: ANN401
    """``POST /query``'s body → (filter, text, k, sink); :class:`RequestInvalid` names the field."""
    if not isinstance(payload, dict):
        raise RequestInvalid("query body must be a JSON object")
    text = payload.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RequestInvalid("'text' must be a non-empty string")
    k = payload.get("k", 5)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 1000:
        raise RequestInvalid("'k' must be an integer between 1 and 1000")
    sink = payload.get("sink", sinks[0])
    if sink not in sinks:
        raise RequestInvalid(f"'sink' must be one of {', '.join(sinks)}")
    f = payload.get("filter") or {}
    if not isinstance(f, dict):
        raise RequestInvalid("'filter' must be an object")
    unknown = set(f) - set(FILTER_KEYS)
    if unknown:
        raise RequestInvalid(f"unknown filter keys: {', '.join(sorted(unknown))}")
    try:
        where = QueryFilter(source=f.get("source"), collection=f.get("collection"),
                            published_after=parse_time(f.get("published_after")),
                            published_before=parse_time(f.get("published_before")))
    except (TypeError, ValueError) as exc:
        raise RequestInvalid(f"bad time in filter: {exc}") from None
    return where, text, k, sink


def run_query(embedder: Any, engine: Any, sink: Any, text: str, k: int,  # noqa: ANN401
              where: QueryFilter, *, screen: Any = None) -> list[QueryHit]:  # noqa: ANN401
    """Embed the query (query prompt, ahead of any ingest batch) and search ``sink``.

    With a ``screen``, the text is masked first exactly as documents are (a pseudonymized email
    or name in the query becomes the same token the stored chunks carry)."""
    if screen is not None:
        text = screen.mask_query(text, where.collection)
    ids = embedder.query_ids(text)
    chunk = Chunk(doc_id="", index=0, text=text, token_ids=ids, content_hash="")
    vector = engine.embed([chunk], use_cache=False, priority=True)[0]
    return sink.query(vector, k, where)
