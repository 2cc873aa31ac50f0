"""What the Pinecone and Weaviate sinks share: bounded parallel requests, our retry policy
around every vendor call, Retry-After parsing, and the one-attempt probe used by ``check``.

A vendor sink subclasses :class:`VendorSink` and implements :meth:`VendorSink._attempt`: one
call, with the vendor's exceptions translated into :mod:`worker.errors` at that boundary.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from worker.configbase import RetryConfig
from worker.retry import retrying
from worker.sinks.base import OnRetry

log = logging.getLogger(__name__)
T = TypeVar("T")


def parse_retry_after(raw: str | None) -> float | None:
    """Seconds from a numeric ``Retry-After`` (an HTTP date, rare, falls back to our backoff)."""
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


class VendorSink:
    """Base of the sinks that talk to a service over the network."""

    name = "vendor"

    def __init__(self, retry: RetryConfig, *, max_parallel_requests: int,
                 on_retry: OnRetry | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self._retry = retry
        # check/readiness probes: one attempt, never our retry budget
        self._probe = RetryConfig(max_attempts=1, max_elapsed_s=retry.max_elapsed_s)
        self._on_retry = on_retry
        self._sleep = sleep
        self._max_parallel = max_parallel_requests
        self._pool = ThreadPoolExecutor(max_parallel_requests, thread_name_prefix=self.name)

    def _attempt(self, what: str, fn: Callable[..., T]) -> T:
        """One vendor call; raise only :mod:`worker.errors` exceptions. Implemented per vendor."""
        raise NotImplementedError

    def _call(self, what: str, fn: Callable[..., T], *, policy: RetryConfig | None = None) -> T:
        """``fn`` under our retry policy (attempts, total time, jitter, Retry-After)."""

        def on_retry(exc: BaseException, sleep_s: float) -> None:
            log.warning("sink call failed; retrying", extra={
                "sink": self.name, "op": what, "error": str(exc)[:200], "sleep_s": round(sleep_s, 3)})
            if self._on_retry is not None:
                self._on_retry(exc, sleep_s)

        return retrying(policy or self._retry, on_retry=on_retry,
                        sleep=self._sleep)(lambda: self._attempt(what, fn))

    def _parallel(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        """``fn`` over ``items``, ``max_parallel_requests`` at a time, results in order.

        The first error is raised after the calls in flight finish; calls not yet started are
        cancelled (fail fast: one request out of retries fails the whole call, whose work is
        idempotent and redone later).
        """
        if len(items) <= 1 or self._max_parallel == 1:
            return [fn(item) for item in items]
        futures = [self._pool.submit(fn, item) for item in items]
        results: list[T] = []
        error: BaseException | None = None
        for future in futures:
            if future.cancelled():
                continue
            try:
                results.append(future.result())
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                if error is None:
                    error = exc
                    for pending in futures:
                        pending.cancel()
        if error is not None:
            raise error
        return results

    def _close_pool(self) -> None:
        self._pool.shutdown(wait=True)
