"""Token-budget batching across documents: pure, clock injected, no threads, no model.

The padded cost of a batch is ``longest chunk × number of chunks`` (what a padded forward pass
computes). :func:`plan_batches` sorts inputs by length, longest first, and cuts them into batches
whose padded cost stays within ``max_batch_tokens``; sorting is what keeps padding near zero.
:class:`TokenBudgetQueue` gathers items from many callers and says when to flush: when the
pending tokens reach the budget, or when the oldest item has waited ``max_wait_s``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


def plan_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches, longest first; padded cost ≤ budget.

    Because the order is longest first, a batch's first item is its widest, so its padded cost
    is ``lengths[first] × size``. An item longer than the budget on its own still gets a batch
    (of one); the config check keeps the budget at or above the model's max sequence, so that
    never happens in practice.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        if current and width * (len(current) + 1) > max_batch_tokens:
            batches.append(current)
            current = []
        if not current:
            width = lengths[i]
        current.append(i)
    if current:
        batches.append(current)
    return batches


def padded_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """What the batches cost a padded forward pass: ``Σ longest × size``."""
    return sum(max(lengths[i] for i in b) * len(b) for b in batches if b)


@dataclass(slots=True)
class Queued(Generic[T]):
    item: T
    n_tokens: int
    enqueued_at: float


class TokenBudgetQueue(Generic[T]):
    """Pending items from many requests; flushes by budget or deadline (``now`` is injected).

    Not thread-safe: the engine holds its condition's lock around every call.
    """

    def __init__(self, *, max_batch_tokens: int, max_wait_s: float,
                 clock: Callable[[], float]) -> None:
        if max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be positive")
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._items: deque[Queued[T]] = deque()
        self._tokens = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def pending_tokens(self) -> int:
        return self._tokens

    def put(self, item: T, n_tokens: int) -> None:
        self._items.append(Queued(item, n_tokens, self._clock()))
        self._tokens += n_tokens

    def put_many(self, items: Sequence[tuple[T, int]]) -> None:
        """Enqueue several items with one clock reading (one request's chunks arrive together)."""
        now = self._clock()
        for item, n_tokens in items:
            self._items.append(Queued(item, n_tokens, now))
            self._tokens += n_tokens

    def deadline(self) -> float | None:
        """When the oldest item must be flushed; ``None`` when empty."""
        return self._items[0].enqueued_at + self.max_wait_s if self._items else None

    def ready(self) -> bool:
        """A full budget is pending, or the oldest item's deadline has passed."""
        if not self._items:
            return False
        return self._tokens >= self.max_batch_tokens or self._clock() >= self.deadline()  # type: ignore[operator]

    def take(self, max_tokens: int | None = None) -> list[list[Queued[T]]]:
        """Remove pending items (up to ``max_tokens`` real tokens, oldest first) as planned batches.

        The items taken together are sorted by length across requests, so a larger
        ``max_tokens`` means less padding but a later first batch.
        """
        limit = max_tokens if max_tokens is not None else self._tokens
        taken: list[Queued[T]] = []
        total = 0
        while self._items and (not taken or total + self._items[0].n_tokens <= limit):
            q = self._items.popleft()
            taken.append(q)
            total += q.n_tokens
        self._tokens -= total
        plan = plan_batches([q.n_tokens for q in taken], self.max_batch_tokens)
        return [[taken[i] for i in b] for b in plan]
