"""Chunking with the embedding model's own tokenizer.

Each document's text is cut into *units* by a source-specific splitter (speaker turns for calls,
one message for Slack, headings/paragraphs/fenced code blocks for GitHub markdown, paragraphs for
plain text). Units are tokenized once, in one batch across all documents, and packed greedily
into chunks of at most ``max_tokens`` tokens (special tokens, passage prompt and header
included). A unit longer than that is cut into token windows with ``overlap_tokens`` of overlap.
A hard break (a heading) always starts a new chunk.

Every chunk starts with a short header (title, source and context, plus the speaker or heading
when the chunk starts in the middle of one) so it means something on its own.

Tokenize once: ``Chunk.token_ids`` are exactly the ids the model gets, built by concatenating
the ids of header and units. For WordPiece tokenizers (all specs in ``models/``) that equals
tokenizing ``prompt + chunk.text`` (a test checks this), so the stored text is what was embedded.

The tokenizer's cost is most of the chunker's (bench/chunker.py), so its batch is laid out for
it: short texts share one input, joined by line breaks, and long ones are cut into pieces at
whitespace (``_tokenize``). For a BERT-style tokenizer that changes no id and no offset; each
text's tokens are then found in the batch by their offsets, which the packing also reads one
token at a time where it cuts (``_Tokens.span``), so nothing is tokenized twice and no list of
offsets or token strings is built.
"""

from __future__ import annotations

import hashlib
import json
import re
from array import array
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain

import orjson
from tokenizers import Encoding, Tokenizer

from worker.records import Chunk, ChunkedDocument, FlowDocument

_FENCE = re.compile(r"^\s{0,3}(```+|~~~+)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+\S")
_MAX_HEADER_FRACTION = 4  # a header never takes more than 1/4 of a chunk


@dataclass(frozen=True, slots=True)
class Unit:
    text: str
    extra: str = ""  # header line when a chunk starts at this unit ("## Steps" for section body)
    cont: str = ""  # header line for continuation windows of this unit ("Dana:" for a long turn)
    hard_break: bool = False  # start a new chunk here


# -- splitters: FlowDocument -> units ------------------------------------------------------------

def _transcript_units(doc: FlowDocument) -> Iterator[Unit]:
    for s in doc.sections:
        if s.label:
            yield Unit(f"{s.label}: {s.text}", cont=f"{s.label}:")
        else:
            yield Unit(s.text)


def _paragraph_units(text: str, cont: str = "") -> Iterator[Unit]:
    for para in _paragraphs(text):
        yield Unit(para, cont=cont)


def _markdown_units(doc: FlowDocument) -> Iterator[Unit]:
    """Paragraphs and whole fenced code blocks; a heading starts a new chunk and is shown in the
    header of every chunk of its section (so it is not repeated as a unit of its own)."""
    for s in doc.sections:
        heading = ""
        brk = False
        buf: list[str] = []
        fence: str | None = None

        def emit(text: str, *, code: bool = False) -> Iterator[Unit]:
            nonlocal brk
            parts = [text.strip("\n")] if code else _paragraphs(text)
            for part in parts:
                if part.strip():
                    yield Unit(part, extra=heading, cont=heading, hard_break=brk)
                    brk = False

        for line in s.text.splitlines():
            if fence is not None:
                buf.append(line)
                if line.strip().startswith(fence):
                    yield from emit("\n".join(buf), code=True)
                    buf, fence = [], None
                continue
            m = _FENCE.match(line)
            if m:
                yield from emit("\n".join(buf))
                buf, fence = [line], m.group(1)
            elif _HEADING.match(line):
                yield from emit("\n".join(buf))
                if brk:  # the previous heading had no body: keep it as text
                    yield Unit(heading, hard_break=True)
                buf, heading, brk = [], line.strip(), True
            else:
                buf.append(line)
        yield from emit("\n".join(buf), code=fence is not None)
        if brk and heading:
            yield Unit(heading, hard_break=True)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def _slack_units(doc: FlowDocument) -> Iterator[Unit]:
    for s in doc.sections:
        label = f"{s.label}: " if s.label else ""
        yield Unit(f"{label}{s.text}", cont=label.strip())


def _plain_units(doc: FlowDocument) -> Iterator[Unit]:
    for s in doc.sections:
        yield from _paragraph_units(s.text, cont=f"{s.label}:" if s.label else "")


SPLITTERS = {"transcript": _transcript_units, "markdown": _markdown_units,
             "slack": _slack_units, "plain": _plain_units}


def header_of(doc: FlowDocument) -> str:
    where = f"{doc.source} {doc.context}".strip()
    return f"{doc.title} ({where})" if doc.title else f"({where})"


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# -- the chunker ---------------------------------------------------------------------------------

# ``Chunk.content_hash`` is the digest of the token ids as native int32 (the bytes of a numpy
# int32 array; the embedding cache and the ledger are keyed by it), written by ``array``.
_INT32 = next(code for code in "ilq" if array(code).itemsize == 4)
# How texts become tokenizer inputs (with a tokenizer for which this changes no id and no offset,
# see ``_splits_at_whitespace``): the tokenizer's cost grows with the number of inputs (~7 µs
# each) and, per character, with the length of one input (~1.5x at 270k characters), so short
# texts share an input, joined by line breaks, up to ``_SEQ_CHARS``, and a text longer than
# ``2 * _PIECE_CHARS`` is cut into pieces of at least ``_PIECE_CHARS`` (one input each), each cut
# just before a space or line break.
_SEQ_CHARS = 2048
_PIECE_CHARS = 2048
_PIECE_CUT = re.compile(r"[ \n]")


@dataclass(frozen=True, slots=True)
class _Header:
    """A chunk header line of one document: its ids (cut to 1/4 of a chunk), text and budget."""

    prefix: tuple[int, ...]  # [CLS] prompt header
    text: str
    budget: int  # body tokens a chunk with this header can hold


@dataclass(slots=True)
class _Tokens:
    """One text's token ids and where its offsets live: one or more runs of tokens of the batch's
    encodings (a share of an input of joined texts, or the pieces of a long text)."""

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


class Chunker:
    """Packs documents into token-bounded chunks; pure apart from the (thread-safe) tokenizer."""

    def __init__(self, tokenizer: Tokenizer, *, max_tokens: int, overlap_tokens: int,
                 model_max_tokens: int, cls_id: int, sep_id: int,
                 prompt_ids: Sequence[int] = ()) -> None:
        if max_tokens > model_max_tokens:
            raise ValueError(f"chunking.max_tokens {max_tokens} is above the model's max sequence "
                             f"{model_max_tokens}; lower it to at most {model_max_tokens}")
        tok = Tokenizer.from_str(tokenizer.to_str())  # private copy: no padding, no truncation
        tok.no_padding()
        tok.no_truncation()
        self._tok = tok
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self._cls = cls_id
        self._sep = sep_id
        self._prompt = tuple(prompt_ids)
        self._fixed = 2 + len(self._prompt)  # [CLS] prompt ... [SEP]
        self._split = _splits_at_whitespace(tok)
        self._cont = _continuation_ids(tok)

    def chunk(self, docs: Sequence[FlowDocument]) -> list[ChunkedDocument]:
        """Chunk many documents with one tokenizer batch. Deletes yield no chunks."""
        plans: list[tuple[FlowDocument, list[Unit], list[str]]] = []
        texts: list[str] = []
        for doc in docs:
            units = [] if doc.is_delete else [u for u in SPLITTERS[doc.chunker](doc) if u.text.strip()]
            header = header_of(doc)
            lines = list({"", *(u.extra for u in units), *(u.cont for u in units)}) if units else []
            texts += [f"{header}\n{line}" if line else header for line in lines]
            texts += [u.text for u in units]
            plans.append((doc, units, lines))
        tokens = self._tokenize(texts)
        out: list[ChunkedDocument] = []
        cursor = 0
        for doc, units, lines in plans:
            headers = dict(zip(lines, tokens[cursor:cursor + len(lines)]))
            cursor += len(lines)
            chunks = self._pack(doc, units, tokens[cursor:cursor + len(units)], headers)
            cursor += len(units)
            text_hash = digest("".join(c.content_hash for c in chunks).encode())
            out.append(ChunkedDocument(doc, tuple(chunks), text_hash, _meta_hash(doc)))
        return out

    def _tokenize(self, texts: list[str]) -> list[_Tokens]:
        """Every text's tokens, from one ``encode_batch`` (its inputs: see ``_SEQ_CHARS``)."""
        if not texts:
            return []
        if not self._split:
            encodings = self._tok.encode_batch(texts, add_special_tokens=False)
            return [_Tokens(enc.ids, [(enc, 0, 0)], [0]) for enc in encodings]
        # Every text is one part or, cut, several; a part sits in one input, where it starts at
        # character ``base`` and its text's character ``at`` (0 unless cut).
        inputs: list[str] = []
        part_input: list[int] = []
        part_base: list[int] = []
        part_at: list[int] = []
        owner: list[int] = []  # per text: index of its first part
        joined: list[str] = []
        size = 0
        for text in texts:
            owner.append(len(part_input))
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
        inputs.append("\n".join(joined))
        owner.append(len(part_input))
        encodings = self._tok.encode_batch(inputs, add_special_tokens=False)
        ids_of = [enc.ids for enc in encodings]
        # Token range of every part: the tokens of the texts joined in one input are those of
        # each text alone, one after the other, so a part starts at its input's first token that
        # starts at or after the part's first character, and ends where the next part starts.
        firsts = [0] * len(part_input)
        ends = [len(ids_of[i]) for i in part_input]
        for p in range(1, len(part_input)):
            i = part_input[p]
            if i == part_input[p - 1]:
                firsts[p] = ends[p - 1] = _first_token_at(encodings[i], part_base[p],
                                                          firsts[p - 1], ends[p])
        out: list[_Tokens] = []
        for t in range(len(texts)):
            if owner[t + 1] == owner[t] + 1:  # the usual case: one part
                p = owner[t]
                i = part_input[p]
                out.append(_Tokens(ids_of[i][firsts[p]:ends[p]],
                                   [(encodings[i], firsts[p], part_at[p] - part_base[p])], [0]))
                continue
            ids: list[int] = []
            runs: list[tuple[Encoding, int, int]] = []
            starts: list[int] = []
            for p in range(owner[t], owner[t + 1]):
                i = part_input[p]
                starts.append(len(ids))
                runs.append((encodings[i], firsts[p], part_at[p] - part_base[p]))
                ids += ids_of[i][firsts[p]:ends[p]]
            out.append(_Tokens(ids, runs, starts))
        return out

    def _headers(self, doc: FlowDocument, headers: dict[str, _Tokens]) -> dict[str, _Header]:
        header = header_of(doc)
        cap = self.max_tokens // _MAX_HEADER_FRACTION
        out: dict[str, _Header] = {}
        for line, toks in headers.items():
            ids = toks.ids[:cap]
            text = f"{header}\n{line}" if line else header
            if len(ids) < len(toks.ids):  # header was cut: cut its text to match
                text = text[: toks.span(len(ids) - 1)[1]]
            out[line] = _Header((self._cls, *self._prompt, *ids), text,
                                self.max_tokens - self._fixed - len(ids))
        return out

    def _pack(self, doc: FlowDocument, units: list[Unit], tokens: list[_Tokens],
              headers: dict[str, _Tokens]) -> list[Chunk]:
        heads = self._headers(doc, headers)
        pieces: list[tuple[str, str, list[list[int]]]] = []  # (header line, body text, body ids)
        cur_line, cur_texts, cur_ids, cur_n = "", [], [], 0

        for unit, toks in zip(units, tokens):
            ids = toks.ids
            n = len(ids)
            if unit.hard_break and cur_texts:
                pieces.append((cur_line, "\n".join(cur_texts), cur_ids))
                cur_texts = []
            if not cur_texts:
                cur_line = unit.extra
            elif cur_n + n <= heads[cur_line].budget:
                cur_texts.append(unit.text)
                cur_ids.append(ids)
                cur_n += n
                continue
            else:
                pieces.append((cur_line, "\n".join(cur_texts), cur_ids))
                cur_texts = []
                cur_line = unit.extra
            if n <= heads[cur_line].budget:
                cur_texts, cur_ids, cur_n = [unit.text], [ids], n
                continue
            # A unit longer than a chunk: token windows with overlap, cut at line breaks where
            # possible and never inside a word, so the text re-tokenizes to the same ids.
            if self._cont is not None:
                cont, keys = self._cont, ids
            else:
                cont, keys = [t.startswith("##") for t in toks.tokens()], range(n)
            first = True
            for start, end in _windows(toks, unit.text, cont, keys, heads, unit.extra, unit.cont,
                                       self.overlap_tokens, ordered=self._split):
                line = unit.extra if first else unit.cont
                first = False
                body = unit.text[toks.span(start)[0]:toks.span(end - 1)[1]]
                pieces.append((line, body, [ids[start:end]]))
        if cur_texts:
            pieces.append((cur_line, "\n".join(cur_texts), cur_ids))

        chunks: list[Chunk] = []
        sep = self._sep
        for index, (line, body, parts) in enumerate(pieces):
            head = heads[line]
            if len(parts) == 1:
                token_ids = (*head.prefix, *parts[0], sep)
            else:
                token_ids = (*head.prefix, *chain.from_iterable(parts), sep)
            chunks.append(Chunk(doc.doc_id, index, f"{head.text}\n{body}", token_ids,
                                digest(array(_INT32, token_ids).tobytes())))
        return chunks


def _windows(toks: _Tokens, text: str, cont: Sequence[int], keys: Sequence[int],
             heads: dict[str, _Header], first_line: str, cont_line: str, overlap: int, *,
             ordered: bool) -> Iterator[tuple[int, int]]:
    """Token windows ``[start, end)`` over one long unit. ``cont[keys[j]]``: token ``j`` is a
    ``##`` word piece (``keys`` are the ids when ``cont`` is indexed by id). ``ordered``: no token
    holds a line break and tokens follow the text (``_splits_at_whitespace``), so the last line
    break before a window's end tells where to end it without testing every gap between tokens;
    otherwise every gap is tested, from the window's end back."""
    n = len(toks.ids)
    span = toks.span
    has_break = "\n" in text
    start, line = 0, first_line
    while start < n:
        end = min(start + heads[line].budget, n)
        if end < n:
            floor = start + (end - start) * 3 // 4
            cut = None  # prefer ending a window at a line break
            if has_break and ordered and floor < end:
                # The last break between token ``floor`` and token ``end``; the window ends at
                # the first token after it.
                brk = text.rfind("\n", span(floor)[1], span(end)[0])
                if brk >= 0:
                    lo, hi = floor + 1, end
                    while lo < hi:
                        mid = (lo + hi) // 2
                        if span(mid)[0] > brk:
                            hi = mid
                        else:
                            lo = mid + 1
                    cut = lo
            elif has_break:
                right = span(end)[0]
                for j in range(end, floor, -1):
                    left_start, left_end = span(j - 1)
                    if "\n" in text[left_end:right]:
                        cut = j
                        break
                    right = left_start
            if cut is not None:
                end = cut
            else:
                while end > start + 1 and cont[keys[end]]:
                    end -= 1
        yield start, end
        if end == n:
            return
        nxt = max(end - overlap, start + 1)
        # Never start inside a word: when the overlap lies wholly inside one long word, start at
        # ``end`` (a word start) and give up the overlap rather than store text that re-tokenizes
        # to other ids.
        while nxt < end and cont[keys[nxt]]:
            nxt += 1
        start, line = nxt, cont_line


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


def _splits_at_whitespace(tok: Tokenizer) -> bool:
    """True when the tokens of texts joined by a line break are those of each text alone, one
    after the other (offsets shifted), and the tokens of a text cut just before a space or line
    break are those of its pieces: a BERT normalizer works character by character (a character
    it removes joins the kept one before it: the same one in a piece or joined text), a BERT
    pre-tokenizer ends every word at whitespace, WordPiece works word by word, and no added token
    contains or strips whitespace. Then, too, no token holds a line break and tokens come in text
    order (``_windows`` relies on that). Any other tokenizer gets every text as its own input."""
    config = json.loads(tok.to_str())
    normalizer = config.get("normalizer")
    return ((normalizer is None or normalizer.get("type") == "BertNormalizer")
            and (config.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
            and config["model"].get("type") == "WordPiece"
            and all(not (t.get("lstrip") or t.get("rstrip") or t.get("single_word"))
                    and not any(c.isspace() for c in t["content"])
                    for t in config.get("added_tokens") or ()))


def _continuation_ids(tok: Tokenizer) -> bytearray | None:
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


def _meta_hash(doc: FlowDocument) -> str:
    payload = {"title": doc.title, "url": doc.url, "collection": doc.collection,
               "metadata": doc.metadata}
    return digest(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))
