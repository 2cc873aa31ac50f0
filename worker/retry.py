"""Bounded retries with exponential backoff and full jitter, honouring Retry-After.

Only :class:`TransientError` is retried; everything else surfaces at once. Bounded by attempts
*and* by total time. When the budget is spent the last error is raised: the caller (a delivery loop)
leaves the work in the spool and tries again later, so nothing is lost and nothing retries
forever inside one call. ``sleep`` and ``random`` are injectable so tests never really sleep.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable
from typing import TypeVar

import tenacity

from worker.configbase import RetryConfig
from worker.errors import TransientError

T = TypeVar("T")


def full_jitter_s(initial_s: float, max_s: float, attempt: int, exc: BaseException | None,
                  rng: Callable[[float, float], float] = _random.uniform) -> float:
    """``uniform(0, min(max_s, initial_s · 2^(attempt-1)))``, never less than the error's
    Retry-After (capped at 3 × ``max_s``). Shared by sink calls and the delivery loops."""
    ceiling = min(max_s, initial_s * 2 ** min(max(attempt - 1, 0), 32))
    wait = rng(0.0, ceiling)
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after:
        wait = max(wait, min(float(retry_after), max_s * 3))
    return wait


class FullJitterWait(tenacity.wait.wait_base):
    """``uniform(0, min(cap, base * 2**(n-1)))``, but never less than the server's Retry-After."""

    def __init__(self, initial_s: float, max_s: float, rng: Callable[[float, float], float]) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.rng = rng

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        return full_jitter_s(self.initial_s, self.max_s, retry_state.attempt_number, exc, self.rng)


def retrying(policy: RetryConfig, *, on_retry: Callable[[BaseException, float], None] | None = None,
             sleep: Callable[[float], None] = time.sleep,
             rng: Callable[[float, float], float] = _random.uniform) -> tenacity.Retrying:
    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            on_retry(state.outcome.exception(), state.upcoming_sleep)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(TransientError),
        stop=tenacity.stop_after_attempt(policy.max_attempts) | tenacity.stop_after_delay(policy.max_elapsed_s),
        wait=FullJitterWait(policy.initial_backoff_s, policy.max_backoff_s, rng),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


def call_with_retry(policy: RetryConfig, fn: Callable[[], T], **kwargs) -> T:  # noqa: ANN003
    return retrying(policy, **kwargs)(fn)
