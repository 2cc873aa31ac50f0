"""Token-budget batching (worker/batch.py): pure, so every invariant is checked exhaustively."""

from __future__ import annotations

import random

import pytest

from worker.batch import TokenBudgetQueue, padded_tokens, plan_batches


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def chunker_like_lengths(rng: random.Random, n: int) -> list[int]:
    """Most chunks near the 256 cap, a tail of short ones (Slack messages, section ends)."""
    return [rng.randint(200, 256) if rng.random() < 0.8 else rng.randint(8, 199) for _ in range(n)]


@pytest.mark.parametrize("seed", range(20))
def test_plan_never_exceeds_budget_and_uses_every_item_once(seed):
    rng = random.Random(seed)
    budget = rng.choice([256, 1000, 4096, 16384])
    lengths = [rng.randint(1, 256) for _ in range(rng.randint(1, 400))]
    batches = plan_batches(lengths, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= budget
        assert b, "empty batch"


def test_plan_is_longest_first_and_fills_batches():
    lengths = [10, 250, 30, 250, 120, 249]
    batches = plan_batches(lengths, 500)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)
    # Greedy fill: merging any batch with the next one would break the budget.
    for a, b in zip(batches, batches[1:]):
        assert max(lengths[i] for i in a + b) * (len(a) + len(b)) > 500


def test_an_item_longer_than_the_budget_gets_a_batch_of_its_own():
    assert plan_batches([600, 10, 10], 512) == [[0], [1, 2]]
    assert plan_batches([], 512) == []


def test_sorting_keeps_padding_within_five_percent_on_chunker_like_lengths():
    lengths = chunker_like_lengths(random.Random(7), 3000)
    batches = plan_batches(lengths, 4096)
    assert padded_tokens(lengths, batches) / sum(lengths) <= 1.05
    # ...which arrival order alone would not give (this is what the sort buys).
    unsorted = [list(range(i, min(i + 16, len(lengths)))) for i in range(0, len(lengths), 16)]
    assert padded_tokens(lengths, unsorted) / sum(lengths) > 1.1


def test_queue_flushes_when_the_budget_is_reached_not_before():
    clock = FakeClock()
    q: TokenBudgetQueue[str] = TokenBudgetQueue(max_batch_tokens=1000, max_wait_s=0.05, clock=clock)
    assert not q.ready() and q.deadline() is None
    q.put("a", 600)
    assert not q.ready()
    q.put("b", 399)
    assert not q.ready()
    q.put("c", 1)
    assert q.ready()


def test_queue_flushes_a_small_item_at_its_deadline():
    clock = FakeClock()
    q: TokenBudgetQueue[str] = TokenBudgetQueue(max_batch_tokens=16384, max_wait_s=0.05, clock=clock)
    q.put("lonely", 12)
    assert q.deadline() == pytest.approx(1000.05)
    clock.now += 0.049
    assert not q.ready()
    clock.now += 0.001
    assert q.ready()
    assert [[x.item for x in b] for b in q.take()] == [["lonely"]]
    assert len(q) == 0 and q.pending_tokens == 0 and not q.ready()


def test_the_deadline_is_the_oldest_items():
    clock = FakeClock()
    q: TokenBudgetQueue[str] = TokenBudgetQueue(max_batch_tokens=16384, max_wait_s=0.05, clock=clock)
    q.put("first", 5)
    clock.now += 0.03
    q.put_many([("second", 5), ("third", 5)])
    assert q.deadline() == pytest.approx(1000.05)
    q.take(max_tokens=5)
    assert q.deadline() == pytest.approx(1000.08)


def test_take_sorts_across_requests_takes_oldest_first_and_respects_the_budget():
    clock = FakeClock()
    q: TokenBudgetQueue[tuple[str, int]] = TokenBudgetQueue(max_batch_tokens=512, max_wait_s=1,
                                                            clock=clock)
    rng = random.Random(3)
    lengths = chunker_like_lengths(rng, 60)
    for i, n in enumerate(lengths):
        q.put(("req%d" % (i % 3), i), n)
    first = q.take(max_tokens=2000)
    taken = [x.item[1] for b in first for x in b]
    # Oldest first: the items taken are a prefix of arrival order, up to the token limit.
    assert sorted(taken) == list(range(len(taken)))
    assert sum(lengths[:len(taken)]) <= 2000 < sum(lengths[:len(taken) + 1])
    for b in first:
        assert max(x.n_tokens for x in b) * len(b) <= 512
    # Items from different requests share batches.
    assert any(len({x.item[0] for x in b}) > 1 for b in first)
    rest = q.take()
    assert sorted(x.item[1] for b in rest for x in b) == list(range(len(taken), 60))
    assert q.pending_tokens == 0
