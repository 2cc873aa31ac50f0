"""Chunking with the embedding model's own tokenizer.

Each document's text is cut into *units* by a source-specific splitter (speaker turns for calls,
one message for Slack, headings/paragraphs/fenced code blocks for GitHub markdown, paragraphs for
plain text). Units are tokenized once, in one tokenizer call per group of documents, and packed
greedily into chunks of at most ``max_tokens`` tokens (special tokens, passage prompt and header
included). A unit longer than that is cut into token windows with ``overlap_tokens`` of overlap.
A hard break (a heading) always starts a new chunk.

Every chunk starts with a short header (title, source and context, plus the speaker or heading
when the chunk starts in the middle of one) so it means something on its own.

Tokenize once: ``Chunk.token_ids`` are exactly the ids the model gets, built by concatenating
the ids of header and units. For WordPiece tokenizers (all specs in ``models/``) that equals
tokenizing ``prompt + chunk.text`` (a test checks this), so the stored text is what was embedded.

The tokenizer's cost is most of the chunker's (bench/chunker.py), so its batch is laid out for
it and runs beside the packing (``worker.chunk_tokens``): a call's documents are tokenized in
groups of about ``_GROUP_CHARS`` characters, each by one ``encode_batch`` on a thread of its own
while this one packs the group before. Windows read a unit's offsets one token at a time, only
where they cut (``TextTokens.span``), so nothing is tokenized twice and no list of offsets or
token strings is built.
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import orjson
from tokenizers import Tokenizer

from worker.chunk_tokens import (TextTokens, Tokenized, Tokenizing, continuation_ids,
                                 splits_at_whitespace)
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
# int32 array; the embedding cache and the ledger are keyed by it), packed by ``_int32s``.
@functools.cache
def _int32s(n: int) -> struct.Struct:
    return struct.Struct(f"={n}i")


# Characters of section text per tokenizer call. A ``chunk`` call's first group is tokenized
# before any packing starts and its last one is packed after the tokenizer is done, so smaller
# groups overlap more; each group is one more ``encode_batch`` (waking the tokenizer's threads)
# and one hand-over between threads.
_GROUP_CHARS = 1 << 16


@dataclass(frozen=True, slots=True)
class _DocPlan:
    """A document's units and the header lines its chunks use, in the order of their texts."""

    doc: FlowDocument
    units: list[Unit]
    lines: list[str]


@dataclass(frozen=True, slots=True)
class _Header:
    """A chunk header line of one document: its ids (cut to 1/4 of a chunk), text and budget."""

    prefix: tuple[int, ...]  # [CLS] prompt header
    text: str
    budget: int  # body tokens a chunk with this header can hold


class Chunker:
    """Packs documents into token-bounded chunks; pure apart from the (thread-safe) tokenizer,
    which a call of more than one group of documents runs on a thread of its own."""

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
        self._split = splits_at_whitespace(tok)
        self._cont = continuation_ids(tok)

    def chunk(self, docs: Sequence[FlowDocument]) -> list[ChunkedDocument]:
        """Chunk many documents, each text tokenized once. Deletes yield no chunks."""
        bounds = [0]
        size = 0
        for i, doc in enumerate(docs):
            size += sum(len(s.text) for s in doc.sections)
            if size >= _GROUP_CHARS:
                bounds.append(i + 1)
                size = 0
        if bounds[-1] < len(docs):
            bounds.append(len(docs))
        out: list[ChunkedDocument] = []
        with Tokenizing(self._tok, splits=self._split, threaded=len(bounds) > 2) as tokenizing:
            groups = []
            for a, b in zip(bounds, bounds[1:]):
                plans, texts = self._plan(docs[a:b])
                groups.append((plans, tokenizing.submit(texts)))
            for plans, pending in groups:
                tokens = pending.result()
                t = 0  # index of the document's first text in the group
                for plan in plans:
                    heads = self._headers(plan.doc, plan.lines, tokens, t)
                    t += len(plan.lines)
                    chunks = self._pack(plan.doc, plan.units, tokens, t, heads)
                    t += len(plan.units)
                    text_hash = digest("".join(c.content_hash for c in chunks).encode())
                    out.append(ChunkedDocument(plan.doc, tuple(chunks), text_hash,
                                               _meta_hash(plan.doc)))
        return out

    @staticmethod
    def _plan(docs: Sequence[FlowDocument]) -> tuple[list[_DocPlan], list[str]]:
        """Every document's plan, and the texts to tokenize: per document its header lines
        (header and line), then its units."""
        plans: list[_DocPlan] = []
        texts: list[str] = []
        for doc in docs:
            units = [] if doc.is_delete else [u for u in SPLITTERS[doc.chunker](doc) if u.text.strip()]
            header = header_of(doc)
            lines = list({"", *(u.extra for u in units), *(u.cont for u in units)}) if units else []
            texts += [f"{header}\n{line}" if line else header for line in lines]
            texts += [u.text for u in units]
            plans.append(_DocPlan(doc, units, lines))
        return plans, texts

    def _headers(self, doc: FlowDocument, lines: list[str], tokens: Tokenized,
                 first: int) -> dict[str, _Header]:
        """Every header line's ids, text and budget; text ``first + k`` is line ``k``'s."""
        header = header_of(doc)
        cap = self.max_tokens // _MAX_HEADER_FRACTION
        out: dict[str, _Header] = {}
        starts = tokens.starts
        for t, line in enumerate(lines, first):
            a, b = starts[t], starts[t + 1]
            ids = tokens.ids[a:min(b, a + cap)]
            text = f"{header}\n{line}" if line else header
            if len(ids) < b - a:  # header was cut: cut its text to match
                text = text[: tokens.text(t).span(len(ids) - 1)[1]]
            out[line] = _Header((self._cls, *self._prompt, *ids), text,
                                self.max_tokens - self._fixed - len(ids))
        return out

    def _pack(self, doc: FlowDocument, units: list[Unit], tokens: Tokenized, first: int,
              heads: dict[str, _Header]) -> list[Chunk]:
        """The document's chunks; text ``first + k`` of ``tokens`` is unit ``k``'s. A chunk's
        body is a run of consecutive units, or a window of one, so its ids are one slice of
        ``tokens.ids``."""
        pieces: list[tuple[str, str, int, int]] = []  # (header line, body text, body ids a:b)
        cur_line, cur_texts, cur_a, cur_b = "", [], 0, 0
        starts = tokens.starts
        for t, unit in enumerate(units, first):
            a, b = starts[t], starts[t + 1]
            n = b - a
            if unit.hard_break and cur_texts:
                pieces.append((cur_line, "\n".join(cur_texts), cur_a, cur_b))
                cur_texts = []
            if not cur_texts:
                cur_line = unit.extra
            elif cur_b - cur_a + n <= heads[cur_line].budget:
                cur_texts.append(unit.text)
                cur_b = b
                continue
            else:
                pieces.append((cur_line, "\n".join(cur_texts), cur_a, cur_b))
                cur_texts = []
                cur_line = unit.extra
            if n <= heads[cur_line].budget:
                cur_texts, cur_a, cur_b = [unit.text], a, b
                continue
            # A unit longer than a chunk: token windows with overlap, cut at line breaks where
            # possible and never inside a word, so the text re-tokenizes to the same ids.
            toks = tokens.text(t)
            if self._cont is not None:
                cont, keys = self._cont, toks.ids
            else:
                cont, keys = [s.startswith("##") for s in toks.tokens()], range(n)
            line = unit.extra
            for start, end in _windows(toks, unit.text, cont, keys, heads, unit.extra, unit.cont,
                                       self.overlap_tokens, ordered=self._split):
                body = unit.text[toks.span(start)[0]:toks.span(end - 1)[1]]
                pieces.append((line, body, a + start, a + end))
                line = unit.cont
        if cur_texts:
            pieces.append((cur_line, "\n".join(cur_texts), cur_a, cur_b))

        chunks: list[Chunk] = []
        ids, sep = tokens.ids, self._sep
        for index, (line, body, a, b) in enumerate(pieces):
            head = heads[line]
            token_ids = (*head.prefix, *ids[a:b], sep)
            chunks.append(Chunk(doc.doc_id, index, f"{head.text}\n{body}", token_ids,
                                digest(_int32s(len(token_ids)).pack(*token_ids))))
        return chunks


def _windows(toks: TextTokens, text: str, cont: Sequence[int], keys: Sequence[int],
             heads: dict[str, _Header], first_line: str, cont_line: str, overlap: int, *,
             ordered: bool) -> Iterator[tuple[int, int]]:
    """Token windows ``[start, end)`` over one long unit. ``cont[keys[j]]``: token ``j`` is a
    ``##`` word piece (``keys`` are the ids when ``cont`` is indexed by id). ``ordered``: no token
    holds a line break and tokens follow the text (``splits_at_whitespace``), so the last line
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


def _meta_hash(doc: FlowDocument) -> str:
    payload = {"title": doc.title, "url": doc.url, "collection": doc.collection,
               "metadata": doc.metadata}
    return digest(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))
