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
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
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

    def chunk(self, docs: Sequence[FlowDocument]) -> list[ChunkedDocument]:
        """Chunk many documents with one tokenizer batch. Deletes yield no chunks."""
        plans: list[tuple[FlowDocument, list[Unit], dict[str, int]]] = []
        texts: list[str] = []
        for doc in docs:
            units = [] if doc.is_delete else [u for u in SPLITTERS[doc.chunker](doc) if u.text.strip()]
            header = header_of(doc)
            slots: dict[str, int] = {}
            if units:
                for line in {"", *(u.extra for u in units), *(u.cont for u in units)}:
                    slots[line] = len(texts)
                    texts.append(f"{header}\n{line}" if line else header)
            plans.append((doc, units, slots))
            for u in units:
                texts.append(u.text)
        encodings = self._tok.encode_batch(texts, add_special_tokens=False) if texts else []
        out: list[ChunkedDocument] = []
        cursor = 0
        for doc, units, slots in plans:
            n = len(slots)
            headers = {line: encodings[slot] for line, slot in slots.items()}
            cursor += n
            unit_enc = encodings[cursor:cursor + len(units)]
            cursor += len(units)
            chunks = self._pack(doc, units, unit_enc, headers)
            text_hash = digest("".join(c.content_hash for c in chunks).encode())
            out.append(ChunkedDocument(doc, tuple(chunks), text_hash, _meta_hash(doc)))
        return out

    def _pack(self, doc: FlowDocument, units: list[Unit], unit_enc: list[Encoding],
              headers: dict[str, Encoding]) -> list[Chunk]:
        pieces: list[tuple[str, str, list[int]]] = []  # (header line, body text, body ids)
        cur_line, cur_texts, cur_ids = "", [], []

        def header_budget(line: str) -> tuple[list[int], int]:
            ids = list(headers[line].ids)[: self.max_tokens // _MAX_HEADER_FRACTION]
            return ids, self.max_tokens - self._fixed - len(ids)

        def flush() -> None:
            nonlocal cur_texts, cur_ids
            if cur_texts:
                pieces.append((cur_line, "\n".join(cur_texts), cur_ids))
            cur_texts, cur_ids = [], []

        for unit, enc in zip(units, unit_enc):
            ids = enc.ids
            if unit.hard_break:
                flush()
            if not cur_texts:
                cur_line = unit.extra
            _, budget = header_budget(cur_line)
            if cur_texts and len(cur_ids) + len(ids) <= budget:
                cur_texts.append(unit.text)
                cur_ids = cur_ids + ids
                continue
            flush()
            cur_line = unit.extra
            _, budget = header_budget(cur_line)
            if len(ids) <= budget:
                cur_texts, cur_ids = [unit.text], list(ids)
                continue
            # A unit longer than a chunk: token windows with overlap, cut at line breaks where
            # possible and never inside a word, so the text re-tokenizes to the same ids.
            offsets, line, first = enc.offsets, unit.extra, True
            for start, end in _windows(enc, unit.text, lambda line_: header_budget(line_)[1],
                                       unit.extra, unit.cont, self.overlap_tokens):
                line = unit.extra if first else unit.cont
                first = False
                pieces.append((line, unit.text[offsets[start][0]:offsets[end - 1][1]], ids[start:end]))
        flush()

        header = header_of(doc)
        chunks: list[Chunk] = []
        for index, (line, body, body_ids) in enumerate(pieces):
            head_ids, _ = header_budget(line)
            head_text = f"{header}\n{line}" if line else header
            if len(head_ids) < len(headers[line].ids):  # header was cut: cut its text to match
                head_text = head_text[: headers[line].offsets[len(head_ids) - 1][1]]
            token_ids = (self._cls, *self._prompt, *head_ids, *body_ids, self._sep)
            content = np.asarray(token_ids, dtype=np.int32).tobytes()
            chunks.append(Chunk(doc.doc_id, index, f"{head_text}\n{body}", token_ids, digest(content)))
        return chunks


def _windows(enc: Encoding, text: str, budget_of, first_line: str, cont_line: str,  # noqa: ANN001
             overlap: int) -> Iterator[tuple[int, int]]:
    """Token windows ``[start, end)`` over one long unit."""
    offsets, tokens, n = enc.offsets, enc.tokens, len(enc.ids)
    start, line = 0, first_line
    while start < n:
        budget = budget_of(line)
        end = min(start + budget, n)
        if end < n:
            floor = start + (end - start) * 3 // 4
            for j in range(end, floor, -1):  # prefer ending a window at a line break
                if "\n" in text[offsets[j - 1][1]:offsets[j][0]]:
                    end = j
                    break
            else:
                while end > start + 1 and tokens[end].startswith("##"):
                    end -= 1
        yield start, end
        if end == n:
            return
        nxt = max(end - overlap, start + 1)
        # Never start inside a word: when the overlap lies wholly inside one long word, start at
        # ``end`` (a word start) and give up the overlap rather than store text that re-tokenizes
        # to other ids.
        while nxt < end and tokens[nxt].startswith("##"):
            nxt += 1
        start, line = nxt, cont_line


def _meta_hash(doc: FlowDocument) -> str:
    payload = {"title": doc.title, "url": doc.url, "collection": doc.collection,
               "metadata": doc.metadata}
    return digest(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))
