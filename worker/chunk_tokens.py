"""The chunker's tokenizer batch: texts laid out as tokenizer inputs, tokenized on a thread beside
the packing, and each text's tokens found again by their offsets.

Every text the chunker hands over (header lines and units) is tokenized once. With a tokenizer
for which it changes no id and no offset (``splits_at_whitespace``), the texts are laid out for
the tokenizer's cost: short texts share one input, joined by line breaks, and long ones are cut
into pieces at whitespace (``_layout``). Each text's tokens are then found in the batch by their
offsets, which the chunker also reads one token at a time where it cuts (``TextTokens.span``), so
no list of offsets or token strings is built.

The chunker tokenizes a call's documents in groups (``Tokenizing``): the encoding of one group
runs, on the tokenizer's own threads and without the GIL, while the caller packs the group before.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain

from tokenizers import Encoding, Tokenizer

# How texts become tokenizer inputs: the tokenizer's cost grows with the number of inputs (~7 µs
# each) and, per character, with the length of one input (~1.5x at 270k characters), so short
# texts share an input, joined by line breaks, up to ``_SEQ_CHARS``, and a text longer than
# ``2 * _PIECE_CHARS`` is cut into pieces of at least ``_PIECE_CHARS`` (one input each), each cut
# just before a space or line break.
_SEQ_CHARS = 2048
_PIECE_CHARS = 2048
_PIECE_CUT = re.compile(r"[ \n]")


@dataclass(slots=True)
class _Layout:
    """Texts as tokenizer inputs. Every text is one part or, cut, several; a part sits in one
    input, where it starts at character ``base`` and its text's character ``at`` (0 unless cut)."""

    inputs: list[str]
    part_input: list[int]
    part_base: list[int]
    part_at: list[int]
    owner: list[int]  # per text: index of its first part, and one past the last text's

    @classmethod
    def one_input_per_text(cls, texts: list[str]) -> _Layout:
        n = len(texts)
        return cls(texts, list(range(n)), [0] * n, [0] * n, list(range(n + 1)))


class Tokenized:
    """A group of texts tokenized: their ids one text after another (the tokens of texts joined
    or cut at whitespace are those of each text alone), and the offsets, read one token at a
    time. Text ``t``'s ids are ``ids[starts[t]:starts[t + 1]]``."""

    __slots__ = ("ids", "starts", "_encodings", "_layout", "_part_first", "_input_first")

    def __init__(self, layout: _Layout, encodings: list[Encoding]) -> None:
        part_input, owner = layout.part_input, layout.owner
        ids: list[int] = []
        input_first: list[int] = []  # index in ``ids`` of every input's first token
        for enc in encodings:
            input_first.append(len(ids))
            ids += enc.ids
        input_first.append(len(ids))
        # A part starts at its input's first token that starts at or after the part's first
        # character (the input's first token when it is the input's first part).
        part_first = [0] * (len(part_input) + 1)
        for p, i in enumerate(part_input):
            if p and i == part_input[p - 1]:
                local = _first_token_at(encodings[i], layout.part_base[p],
                                        part_first[p - 1] - input_first[i], len(encodings[i]))
                part_first[p] = input_first[i] + local
            else:
                part_first[p] = input_first[i]
        part_first[-1] = len(ids)
        self.ids = ids
        self.starts = [part_first[p] for p in owner]
        self._encodings = encodings
        self._layout = layout
        self._part_first = part_first
        self._input_first = input_first

    def text(self, t: int) -> TextTokens:
        """Text ``t``'s tokens, to read their offsets (``TextTokens.span``)."""
        layout, first = self._layout, self.starts[t]
        runs: list[tuple[Encoding, int, int]] = []
        firsts: list[int] = []
        for p in range(layout.owner[t], layout.owner[t + 1]):
            i = layout.part_input[p]
            runs.append((self._encodings[i], self._part_first[p] - self._input_first[i],
                         layout.part_at[p] - layout.part_base[p]))
            firsts.append(self._part_first[p] - first)
        return TextTokens(self.ids[first:self.starts[t + 1]], runs, firsts)


@dataclass(slots=True)
class TextTokens:
    """One text's token ids and where its offsets live: one or more runs of tokens of its
    group's encodings (a share of an input of joined texts, or the pieces of a long text)."""

    ids: list[int]
    runs: list[tuple[Encoding, int, int]]  # (encoding, its index of our first token, char shift)
    firsts: list[int]  # index in ``ids`` of each run's first token

    def span(self, j: int) -> tuple[int, int]:
        """Character offsets of token ``j`` in the text (what ``Encoding.offsets[j]`` would be
        had the text been tokenized alone)."""
        if j < 0:
            j += len(self.ids)
        k = 0 if len(self.runs) == 1 else bisect_right(self.firsts, j) - 1
        enc, first, shift = self.runs[k]
        start, end = enc.token_to_chars(first + j - self.firsts[k])
        return start + shift, end + shift

    def tokens(self) -> list[str]:
        return [t for (enc, first, _), n in zip(self.runs, self._lengths())
                for t in enc.tokens[first:first + n]]

    def _lengths(self) -> list[int]:
        return [b - a for a, b in zip(self.firsts, [*self.firsts[1:], len(self.ids)])]


class Tokenizing:
    """One chunker call's groups of texts, each tokenized by one ``encode_batch``, in the order
    submitted, on one thread (``threaded``) so the caller lays out and packs beside it, or else in
    the calling thread. The thread is started by the caller, so it inherits the caller's
    priority (``worker.priority``). Use as a context manager: leaving it waits for the thread."""

    def __init__(self, tok: Tokenizer, *, splits: bool, threaded: bool) -> None:
        self._tok = tok
        self._splits = splits
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="chunk-tokenizer") if threaded else None

    def __enter__(self) -> Tokenizing:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=exc[0] is not None)

    def submit(self, texts: list[str]) -> PendingTokens:
        """Lay ``texts`` out and queue their ``encode_batch``; returns at once when threaded."""
        layout = _layout(texts) if self._splits else _Layout.one_input_per_text(texts)
        if self._pool is None or not layout.inputs:
            encodings: Future[list[Encoding]] = Future()
            encodings.set_result(self._tok.encode_batch(layout.inputs, add_special_tokens=False)
                                 if layout.inputs else [])
        else:
            encodings = self._pool.submit(self._tok.encode_batch, layout.inputs,
                                          add_special_tokens=False)
        return PendingTokens(encodings, layout)


@dataclass(slots=True)
class PendingTokens:
    """A submitted group of texts: :meth:`result` waits for its ``encode_batch``."""

    encodings: Future[list[Encoding]]
    layout: _Layout

    def result(self) -> Tokenized:
        """The texts' tokens (waits for the tokenizer)."""
        return Tokenized(self.layout, self.encodings.result())


def _layout(texts: Sequence[str]) -> _Layout:
    """The texts joined and cut into tokenizer inputs (see ``_SEQ_CHARS``)."""
    out = _Layout([], [], [], [], [])
    inputs, part_input, part_base, part_at = out.inputs, out.part_input, out.part_base, out.part_at
    joined: list[str] = []
    size = 0
    for text in texts:
        out.owner.append(len(part_input))
        cuts = _piece_starts(text) if len(text) > 2 * _PIECE_CHARS else [0]
        for a, b in zip(cuts, [*cuts[1:], len(text)]):
            piece = text if len(cuts) == 1 else text[a:b]
            if joined and size + 1 + len(piece) > _SEQ_CHARS:
                inputs.append("\n".join(joined))
                joined, size = [], 0
            base = size + 1 if joined else 0
            part_input.append(len(inputs))
            part_base.append(base)
            part_at.append(a)
            joined.append(piece)
            size = base + len(piece)
    if joined:
        inputs.append("\n".join(joined))
    out.owner.append(len(part_input))
    return out


def _first_token_at(enc: Encoding, pos: int, lo: int, hi: int) -> int:
    """The first token in ``[lo, hi)`` of ``enc`` that starts at or after character ``pos``
    (``hi`` if none), where every token before it starts before ``pos``."""
    t = enc.char_to_token(pos)  # usually the text's first character starts its first token
    if (t is not None and lo <= t < hi and enc.token_to_chars(t)[0] == pos
            and (t == lo or enc.token_to_chars(t - 1)[0] < pos)):
        return t
    while lo < hi:
        mid = (lo + hi) // 2
        if enc.token_to_chars(mid)[0] >= pos:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _piece_starts(text: str) -> list[int]:
    """Offsets of pieces of ``text`` of at least ``_PIECE_CHARS`` characters; every piece but the
    first starts with a space or line break."""
    starts = [0]
    while True:
        m = _PIECE_CUT.search(text, starts[-1] + _PIECE_CHARS)
        if m is None or len(text) - m.start() < _PIECE_CHARS:
            return starts
        starts.append(m.start())


def splits_at_whitespace(tok: Tokenizer) -> bool:
    """True when the tokens of texts joined by a line break are those of each text alone, one
    after the other (offsets shifted), and the tokens of a text cut just before a space or line
    break are those of its pieces: a BERT normalizer works character by character (a character
    it removes joins the kept one before it: the same one in a piece or joined text), a BERT
    pre-tokenizer ends every word at whitespace, WordPiece works word by word, and no added token
    contains or strips whitespace. Then, too, no token holds a line break and tokens come in text
    order (the chunker's windows rely on that). Any other tokenizer gets every text as its own
    input."""
    config = json.loads(tok.to_str())
    normalizer = config.get("normalizer")
    return ((normalizer is None or normalizer.get("type") == "BertNormalizer")
            and (config.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
            and config["model"].get("type") == "WordPiece"
            and all(not (t.get("lstrip") or t.get("rstrip") or t.get("single_word"))
                    and not any(c.isspace() for c in t["content"])
                    for t in config.get("added_tokens") or ()))


def continuation_ids(tok: Tokenizer) -> bytearray | None:
    """``cont[id]``: the token string of ``id`` starts with ``##`` (what ``Encoding.tokens``
    shows), or None when two strings share an id, so that only the tokens can tell."""
    strings: dict[int, str] = {}
    added = ((t.content, i) for i, t in tok.get_added_tokens_decoder().items())
    for token, i in chain(tok.get_vocab(with_added_tokens=False).items(), added):
        if strings.setdefault(i, token) != token:
            return None
    cont = bytearray(max(strings, default=-1) + 1)
    for i, token in strings.items():
        cont[i] = token.startswith("##")
    return cont
