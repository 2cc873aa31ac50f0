"""The chunker's tokenizer batch (worker/chunk_tokens.py).

The invariant the chunker's output rests on: however texts are laid out as tokenizer inputs
(joined, cut into pieces, grouped, tokenized on a thread or not), every text's ids, offsets and
token strings are exactly those of the text tokenized alone.
"""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer

import worker.chunk_tokens as chunk_tokens
from worker.chunk_tokens import Tokenizing, splits_at_whitespace

WORDS = ["the", "renewal", "SOC", "2", "🚀", "東京", "שלום", "naïve", "e\u0301", "\x00", "[SEP]",
         "x" * 150, "https://example.com/a?b=c", "foo_bar.baz(qux)", "\n", "\n\n", "\t", " "]


def random_texts(rng: random.Random, n: int) -> list[str]:
    texts = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.choice([1, 3, 40, 400, 3000]))]
        texts.append("".join(w + rng.choice([" ", "", "\n"]) for w in words).strip() or "a")
    return texts


@pytest.fixture(scope="module")
def tok(embedder) -> Tokenizer:
    tok = Tokenizer.from_str(embedder.tokenizer.to_str())
    tok.no_padding()
    tok.no_truncation()
    return tok


@pytest.mark.parametrize("layout", ["default", "tiny inputs"])
@pytest.mark.parametrize("threaded", [False, True])
def test_every_text_gets_the_tokens_it_gets_alone(tok, monkeypatch, layout, threaded):
    assert splits_at_whitespace(tok)
    if layout == "tiny inputs":
        monkeypatch.setattr(chunk_tokens, "_SEQ_CHARS", 64)
        monkeypatch.setattr(chunk_tokens, "_PIECE_CHARS", 64)
    rng = random.Random(3)
    groups = [random_texts(rng, 30) for _ in range(3)]
    with Tokenizing(tok, splits=True, threaded=threaded) as tokenizing:
        pending = [tokenizing.submit(texts) for texts in groups]
        results = [p.result() for p in pending]
    for texts, tokens in zip(groups, results):
        assert tokens.starts[-1] == len(tokens.ids)
        for t, text in enumerate(texts):
            alone = tok.encode(text, add_special_tokens=False)
            view = tokens.text(t)
            assert view.ids == alone.ids == tokens.ids[tokens.starts[t]:tokens.starts[t + 1]]
            assert [view.span(j) for j in range(len(alone.ids))] == alone.offsets
            assert view.tokens() == alone.tokens


def test_other_tokenizers_get_one_input_per_text(tok):
    texts = ["first text", "a second one", "3"]
    with Tokenizing(tok, splits=False, threaded=False) as tokenizing:
        tokens = tokenizing.submit(texts).result()
    for t, text in enumerate(texts):
        alone = tok.encode(text, add_special_tokens=False)
        assert tokens.text(t).ids == alone.ids
        assert [tokens.text(t).span(j) for j in range(len(alone.ids))] == alone.offsets


def test_no_texts_need_no_tokenizer_call(tok):
    with Tokenizing(tok, splits=True, threaded=True) as tokenizing:
        tokens = tokenizing.submit([]).result()
    assert tokens.ids == [] and tokens.starts == [0]


def test_the_tokenizer_thread_ends_with_the_call(tok):
    import threading

    with Tokenizing(tok, splits=True, threaded=True) as tokenizing:
        tokenizing.submit(["some text"] * 10).result()
        assert any(t.name.startswith("chunk-tokenizer") for t in threading.enumerate())
    assert not any(t.name.startswith("chunk-tokenizer") for t in threading.enumerate())
