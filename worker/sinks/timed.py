"""A sink whose calls are timed: ``memory_worker_sink_call_seconds{sink,operation}``.

Wraps any :class:`worker.sinks.base.Sink` (``runtime.build_sinks`` does it when there are
metrics). Each protocol call is timed whole, retries and backoff included, because that is what
a delivery pass or a query waits for; failed calls are timed too. Everything else (``name``,
``target``, a sink's own extras such as the local store's ``rows``) passes through unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: The timed operations (the Sink protocol's calls that reach the store).
OPERATIONS = ("ensure", "upsert", "delete_document", "delete_tail", "fetch_documents", "search",
              "fetch_chunks", "query")


class TimedSink:
    def __init__(self, sink: Any, observe: Callable[[str, float], None]) -> None:  # noqa: ANN401
        self.inner = sink
        self._observe = observe
        for op in OPERATIONS:
            if hasattr(sink, op):
                setattr(self, op, self._timed(op, getattr(sink, op)))

    def _timed(self, op: str, call: Callable[..., Any]) -> Callable[..., Any]:
        observe = self._observe

        def timed(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                observe(op, time.perf_counter() - started)

        timed.__name__ = op
        return timed

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - only reached for what is not timed
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"TimedSink({self.inner!r})"
