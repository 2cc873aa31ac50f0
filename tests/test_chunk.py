"""Token-bounded chunking with the model's own tokenizer (worker/chunk.py).

Invariants, checked over the sample stream, hostile text and seeded random documents:

* no chunk has more than ``max_tokens`` tokens (special tokens and prompt included);
* tokenize once: re-tokenizing ``prompt + chunk.text`` gives exactly ``chunk.token_ids``, so the
  stored text is what was embedded;
* every word of a document reaches some chunk; empty text gives no chunk;
* chunking is deterministic and does not depend on which other documents share the batch;
* the output is pinned (chunks, ids and hashes key the embedding cache and the ledger): the
  sample stream and the documents above chunk exactly as they did before the packing was
  rewritten for speed, however the tokenizer's batch is laid out.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re

import pytest

from conftest import COLLECTIONS, flow_uuid, load_stream
import worker.chunk as chunk_module
import worker.chunk_tokens as chunk_tokens
from worker.chunk import Chunker
from worker.config import BindingConfig
from worker.documents import Binding
from worker.records import FlowDocument, Section

PRESETS = {"sophia-ai/gong-calls-enriched": "gong_call",
           "sophia-ai/slack-messages-enriched": "slack_message",
           "sophia-ai/github-enriched": "github_document"}
SETTINGS = [(256, 32), (128, 16), (64, 8)]


def make_chunker(embedder, max_tokens: int, overlap: int, prompt: str = "") -> Chunker:
    prompt_ids = embedder.tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else ()
    return Chunker(embedder.tokenizer, max_tokens=max_tokens, overlap_tokens=overlap,
                   model_max_tokens=256, cls_id=embedder.info.cls_id, sep_id=embedder.info.sep_id,
                   prompt_ids=prompt_ids)


@pytest.fixture(scope="module")
def stream_docs() -> list[FlowDocument]:
    docs = []
    for collection, preset in PRESETS.items():
        binding = Binding(BindingConfig(collection=collection, preset=preset))
        docs += [binding.parse(raw) for raw in load_stream(collection)]
    return docs


def doc(text: str, *, chunker: str = "plain", title: str = "A title", label: str = "",
        doc_id: str = "test:1") -> FlowDocument:
    return FlowDocument(collection="c", source="test", key=(doc_id,), doc_id=doc_id, op="c",
                        uuid=flow_uuid(1_800_000_000), version=1, published_at=1_800_000_000.0,
                        title=title, sections=(Section(text, label),), chunker=chunker)


def assert_invariants(embedder, chunker: Chunker, chunked, prompt: str = "") -> None:
    for cd in chunked:
        for i, c in enumerate(cd.chunks):
            assert c.index == i and c.doc_id == cd.document.doc_id
            assert c.n_tokens <= chunker.max_tokens, (c.doc_id, c.index, c.n_tokens)
            reencoded = embedder.tokenizer.encode(prompt + c.text).ids
            assert list(reencoded) == list(c.token_ids), (c.doc_id, c.index, c.text[:200])


# -- the sample stream ---------------------------------------------------------------------------

@pytest.mark.parametrize("max_tokens, overlap", SETTINGS)
def test_sample_stream_chunks_fit_and_retokenize_exactly(embedder, stream_docs, max_tokens, overlap):
    chunker = make_chunker(embedder, max_tokens, overlap)
    chunked = chunker.chunk(stream_docs)
    assert sum(len(cd.chunks) for cd in chunked) > len(stream_docs)  # long calls and logs split
    assert_invariants(embedder, chunker, chunked)


def test_sample_stream_with_the_session_chunker(embedder, chunker, stream_docs, spec):
    """The exact check the issue states, with the session's chunker and the spec's prompt."""
    for cd in chunker.chunk(stream_docs):
        for c in cd.chunks:
            assert c.n_tokens <= 256
            assert embedder.tokenizer.encode(spec.prompts.passage + c.text).ids == list(c.token_ids)


def test_a_passage_prompt_is_part_of_the_budget_and_of_the_ids(embedder, stream_docs):
    chunker = make_chunker(embedder, 128, 16, prompt="passage: ")
    chunked = chunker.chunk(stream_docs[:12])
    assert_invariants(embedder, chunker, chunked, prompt="passage: ")
    prompt_ids = embedder.tokenizer.encode("passage: ", add_special_tokens=False).ids
    for c in chunked[0].chunks:
        assert list(c.token_ids[1:1 + len(prompt_ids)]) == prompt_ids


def test_every_word_of_the_stream_reaches_a_chunk(chunker, stream_docs):
    for cd in chunker.chunk(stream_docs):
        if cd.document.is_delete:
            assert cd.chunks == ()
            continue
        joined = "\n".join(c.text for c in cd.chunks)
        for section in cd.document.sections:
            for word in section.text.split():
                assert word in joined, (cd.document.doc_id, word)


# -- hostile text --------------------------------------------------------------------------------

_rng = random.Random(7)
HOSTILE = {
    "emoji": "🚀🔥 launch 👩‍👩‍👧‍👦 family 🏳️‍🌈 flags " * 400,
    "cjk": "我们的主要问题是数据安全与合规审查。" * 500,
    "rtl": "مرحبا بكم في الاجتماع السنوي שלום עולם " * 400,
    "nul": "abc\x00def\x00 ghi " * 2000,
    "200kb_one_word": "x" * 200_000,
    "200kb_no_spaces": "".join(_rng.choice("abcXYZ0123456789+/=_-.") for _ in range(200_000)),
    "long_identifiers": " ".join(base64.b32encode(hashlib.sha512(str(i).encode()).digest())
                                 .decode().lower()[:96] for i in range(200)),
    "combining": "e\u0301" * 3000 + " caf\u00e9 " * 300,
    "mixed_lines": "\n".join(["## Heading", "```", "x = 1  # 🚀", "```", "שלום", "", "東京"] * 200),
}


# Every splitter at the default size; the window logic (shared by all) again at a small size.
HOSTILE_GRID = [(kind, 256, 32) for kind in ("plain", "markdown", "transcript", "slack")] + [
    ("plain", 64, 8), ("transcript", 64, 8)]


@pytest.mark.parametrize("kind, max_tokens, overlap", HOSTILE_GRID)
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_text_respects_the_limit_and_retokenizes(embedder, name, kind, max_tokens, overlap):
    chunker = make_chunker(embedder, max_tokens, overlap)
    text = HOSTILE[name]
    # Hostile titles too: a header never takes more than a quarter of a chunk.
    chunked = chunker.chunk([doc(text, chunker=kind, title=text[:3000], label="Dana")])
    assert chunked[0].chunks, name
    if name == "long_identifiers" and max_tokens < 170:
        # Words of ~66 pieces do not fit a 64-token window: the limit holds, exact
        # re-tokenization cannot (see test_small_budgets_still_respect_the_limit).
        assert all(c.n_tokens <= max_tokens for c in chunked[0].chunks)
        return
    assert_invariants(embedder, chunker, chunked)


@pytest.mark.parametrize("kind", ["plain", "markdown", "transcript", "slack"])
@pytest.mark.parametrize("text", ["", "   ", "\n\n\t \n"])
def test_empty_text_gives_zero_chunks(chunker, kind, text):
    [cd] = chunker.chunk([doc(text, chunker=kind)])
    assert cd.chunks == ()


def test_a_delete_gives_zero_chunks(chunker):
    delete = doc("ignored text")
    delete = FlowDocument(**{**{f: getattr(delete, f) for f in delete.__slots__}, "op": "d"})
    assert chunker.chunk([delete])[0].chunks == ()


def test_long_identifiers_never_start_a_window_inside_a_word(embedder):
    # Regression: when the overlap fell wholly inside one long word (an id, a hash), the next
    # window started on a '##' piece, so its text re-tokenized to other ids than were embedded.
    chunker = make_chunker(embedder, 256, 32)
    [cd] = chunker.chunk([doc(HOSTILE["long_identifiers"])])
    assert len(cd.chunks) > 10
    for c in cd.chunks:
        assert list(embedder.tokenizer.encode(c.text).ids) == list(c.token_ids)


# -- seeded random documents ---------------------------------------------------------------------

PIECES = ["the", "renewal", "SOC", "2", "Type", "II", "report", "🚀", "東京", "שלום", "naïve",
          "https://example.com/a?b=c", "I_kwDOKx7Ajc6412", "7782342274025937895", "x" * 150,
          "\n", "\n\n", "## Steps", "```python", "```", "- item", "Dana:", "\x00", "\t", "e\u0301",
          "a" * 60 + "b" * 39, "foo_bar.baz(qux)", "2026-11-20T17:10:23.234Z"]


def pre_token_words(embedder, text: str) -> list[str]:
    """The words the tokenizer sees (split at whitespace and punctuation), as in the text."""
    return [w for w, _ in embedder.tokenizer.pre_tokenizer.pre_tokenize_str(text)]


def random_docs(rng: random.Random, n: int) -> list[FlowDocument]:
    docs = []
    for i in range(n):
        words = [rng.choice(PIECES) for _ in range(rng.randrange(0, 1500))]
        text = "".join(w if w.isspace() else w + rng.choice([" ", " ", "", "\n"]) for w in words)
        docs.append(doc(text, chunker=rng.choice(["plain", "markdown", "transcript", "slack"]),
                        title=" ".join(rng.choice(PIECES) for _ in range(rng.randrange(0, 60))),
                        label=rng.choice(["", "Dana Whitfield"]), doc_id=f"test:{i}"))
    return docs


@pytest.mark.parametrize("seed", range(4))
def test_random_documents_keep_every_invariant(embedder, seed):
    # Budgets of 170+ tokens hold any word the tokenizer does not map to [UNK] (at most 100
    # characters, so at most 100 pieces) next to the largest header, so no window cuts a word.
    rng = random.Random(seed)
    max_tokens = rng.choice([170, 200, 256])
    chunker = make_chunker(embedder, max_tokens, rng.randrange(0, max_tokens // 2 - 1))
    docs = random_docs(rng, 8)
    chunked = chunker.chunk(docs)
    assert_invariants(embedder, chunker, chunked)
    for d, cd in zip(docs, chunked):
        if not d.sections[0].text.strip():
            assert cd.chunks == ()
        joined = "\n".join(c.text for c in cd.chunks).replace("\x00", "")
        text = d.sections[0].text.replace("\x00", "")
        if d.chunker == "markdown":  # long headings lose words: see the xfail test below
            text = "\n".join(line for line in text.splitlines() if not HEADING.match(line))
        for word in pre_token_words(embedder, text):
            assert word in joined, (seed, d.doc_id, word)


HEADING = re.compile(r"^\s{0,3}#{1,6}\s+\S")


@pytest.mark.xfail(strict=True, reason="known: a heading lives only in the chunk header, which is "
                                      "capped at max_tokens/4, so the words of a long heading are "
                                      "never indexed")
def test_every_word_of_a_long_heading_reaches_a_chunk(embedder, chunker):
    heading = "## " + " ".join(f"step{i} renewal blocker" for i in range(40))
    [cd] = chunker.chunk([doc(f"Intro.\n\n{heading}\n\nBody of the section.", chunker="markdown")])
    joined = "\n".join(c.text for c in cd.chunks)
    missing = [w for w in heading.split() if w not in joined]
    assert missing == []


@pytest.mark.parametrize("seed", range(4))
def test_small_budgets_still_respect_the_limit(embedder, seed):
    # Below ~170 tokens a word with more pieces than a window is cut inside, and its second
    # half re-tokenizes differently (a known limitation); the limit itself always holds.
    rng = random.Random(100 + seed)
    max_tokens = rng.choice([16, 24, 48, 64, 100])
    chunker = make_chunker(embedder, max_tokens, rng.randrange(0, max_tokens // 2 - 1))
    for cd in chunker.chunk(random_docs(rng, 6)):
        assert all(c.n_tokens <= max_tokens for c in cd.chunks)


# -- structure -----------------------------------------------------------------------------------

def test_markdown_headings_start_chunks_and_label_their_section(chunker):
    body = "\n\n".join(["Intro paragraph."] + [f"## Section {i}\n\n" + f"Paragraph {i} words. " * 200
                                              for i in range(3)])
    [cd] = chunker.chunk([doc(body, chunker="markdown")])
    for c in cd.chunks:
        head, _, rest = c.text.partition("\n")
        assert head == "A title (test)"
        if "Paragraph" in rest:
            heading = rest.split("\n", 1)[0]
            numbers = set(re.findall(r"Paragraph (\d)", rest))
            assert heading.startswith("## Section") and numbers == {heading[-1]}, c.text[:120]


def test_fenced_code_blocks_stay_whole_when_they_fit(chunker):
    code = "```python\n" + "\n".join(f"value_{i} = compute({i})" for i in range(12)) + "\n```"
    text = "\n\n".join(["Some context. " * 40, code, "After the code. " * 40])
    [cd] = chunker.chunk([doc(text, chunker="markdown")])
    assert sum(code in c.text for c in cd.chunks) == 1


def test_long_speaker_turn_repeats_the_speaker_in_every_window(chunker):
    turn = "We need the SOC 2 bridge letter before signing. " * 120
    [cd] = chunker.chunk([doc(turn, chunker="transcript", label="Dana Whitfield")])
    assert len(cd.chunks) >= 3
    for c in cd.chunks:
        assert c.text.split("\n")[1].startswith("Dana Whitfield:")


def test_chunking_is_deterministic_and_independent_of_batch_neighbours(chunker, stream_docs):
    together = chunker.chunk(stream_docs)
    again = chunker.chunk(list(reversed(stream_docs)))[::-1]
    alone = [chunker.chunk([d])[0] for d in stream_docs[:10]]
    assert together == again
    assert together[:10] == alone


def test_hashes_track_text_and_metadata_separately(chunker):
    base = doc("Acme wants a three year term.")
    [a] = chunker.chunk([base])
    [b] = chunker.chunk([FlowDocument(**{**{f: getattr(base, f) for f in base.__slots__},
                                         "metadata": {"sentiment": 0.4}})])
    [c] = chunker.chunk([doc("Acme wants a two year term.")])
    assert a.text_hash == b.text_hash and a.meta_hash != b.meta_hash
    assert a.text_hash != c.text_hash
    assert a.chunks[0].content_hash == b.chunks[0].content_hash != c.chunks[0].content_hash


def test_chunker_refuses_max_tokens_above_the_model_maximum(embedder):
    with pytest.raises(ValueError, match="above the model's max sequence 256"):
        Chunker(embedder.tokenizer, max_tokens=300, overlap_tokens=32, model_max_tokens=256,
                cls_id=embedder.info.cls_id, sep_id=embedder.info.sep_id)


# -- pinned output -------------------------------------------------------------------------------

# blake2b-128 over every chunk of the sample stream (examples/stream, all three collections) and
# of the hostile and seeded random documents above, as written by ``output_digest``. Computed with
# the chunker at commit 55ce158, before its packing was rewritten for speed (issue 15).
# ``Chunk.content_hash`` keys the embedding cache and the ledger: any change in chunk boundaries,
# text, ids or hashes re-embeds every stored document, so it must be a deliberate one. Then
# recompute these constants and say so in the change.
PINNED_STREAM = {(256, 32, ""): "b734c90fa3f39814f8d2a24bac174bad",
                 (128, 16, ""): "e0234b3b460386f8785682cd493017dc",
                 (64, 8, ""): "c0439ba03c11af5a78465c7259bff69e",
                 (128, 16, "passage: "): "4aab87c55c36582f35204112ff2ddf90"}
PINNED_EDGE_CASES = "f634887e765521beda7b8bb12685bbd6"


def output_digest(chunked, h=None):
    h = h or hashlib.blake2b(digest_size=16)
    for cd in chunked:
        h.update(repr((cd.document.doc_id, cd.text_hash, cd.meta_hash)).encode())
        for c in cd.chunks:
            h.update(repr((c.doc_id, c.index, c.text, c.token_ids, c.content_hash)).encode())
    return h


@pytest.mark.parametrize("max_tokens, overlap, prompt", sorted(PINNED_STREAM))
def test_sample_stream_output_is_pinned(embedder, stream_docs, max_tokens, overlap, prompt):
    chunker = make_chunker(embedder, max_tokens, overlap, prompt)
    chunked = chunker.chunk(stream_docs)
    assert all(type(c.token_ids) is tuple for cd in chunked for c in cd.chunks)
    assert output_digest(chunked).hexdigest() == PINNED_STREAM[(max_tokens, overlap, prompt)]


@pytest.mark.parametrize("layout", ["default", "tiny inputs"])
def test_edge_case_output_is_pinned(embedder, monkeypatch, layout):
    if layout == "tiny inputs":  # how texts are joined, cut and grouped for the tokenizer
        monkeypatch.setattr(chunk_tokens, "_SEQ_CHARS", 64)  # changes nothing
        monkeypatch.setattr(chunk_tokens, "_PIECE_CHARS", 64)
        monkeypatch.setattr(chunk_module, "_GROUP_CHARS", 1)
    h = hashlib.blake2b(digest_size=16)
    for kind, max_tokens, overlap in HOSTILE_GRID:
        chunker = make_chunker(embedder, max_tokens, overlap)
        for name in sorted(HOSTILE):
            output_digest(chunker.chunk([doc(HOSTILE[name], chunker=kind, title=HOSTILE[name][:3000],
                                             label="Dana")]), h)
    for seed in range(4):  # the same documents and settings as the two random tests above
        rng = random.Random(seed)
        max_tokens = rng.choice([170, 200, 256])
        chunker = make_chunker(embedder, max_tokens, rng.randrange(0, max_tokens // 2 - 1))
        output_digest(chunker.chunk(random_docs(rng, 8)), h)
        rng = random.Random(100 + seed)
        max_tokens = rng.choice([16, 24, 48, 64, 100])
        chunker = make_chunker(embedder, max_tokens, rng.randrange(0, max_tokens // 2 - 1))
        output_digest(chunker.chunk(random_docs(rng, 6)), h)
    assert h.hexdigest() == PINNED_EDGE_CASES
