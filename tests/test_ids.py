"""Deterministic, Pinecone-safe ids (worker/ids.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from worker.ids import MAX_ID_CHARS, chunk_id, chunk_prefix, chunk_uuid, document_id

MAX_CHUNK_INDEX = 9_999_999  # ids leave room for 7 digits of chunk index


def pinecone_safe(record_id: str) -> bool:
    return 1 <= len(record_id) <= MAX_ID_CHARS and record_id.isascii()


def test_ids_are_literal_functions_of_source_key_and_index():
    # Literal expectations: the same key gives these ids in every run, process and sink.
    assert document_id("gong", ("7782342274025937895",)) == "gong:7782342274025937895"
    assert document_id("slack", ("C024BE91L", "1732550400.000200")) == "slack:C024BE91L/1732550400.000200"
    assert chunk_id("gong:7782342274025937895", 3) == "gong:7782342274025937895#3"
    assert chunk_prefix("github:I_kwDOAbc123") == "github:I_kwDOAbc123#"


def test_ids_are_stable_across_processes():
    """No per-process salt (hash randomization, dict order) leaks into an id."""
    key = ("Café #1: a/b", "x" * 600)
    code = ("from worker.ids import document_id, chunk_id, chunk_uuid;"
            f"d = document_id('slack', {key!r}); print(d, chunk_uuid(chunk_id(d, 7)))")
    outputs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, check=True).stdout
        outputs.add(out)
    here = document_id("slack", key)
    assert outputs == {f"{here} {chunk_uuid(chunk_id(here, 7))}\n"}


@pytest.mark.parametrize("key", [
    ("a#b",), ("a:b",), ("a/b",), ("a b",), ("100%",), ("Zürich",), ("東京",), ("مرحبا",),
    ("🚀",), ("it's",), ("a\nb",), ("a", "b"), ("",), ("x\x00y",),
])
def test_every_key_gives_an_ascii_id_without_separators(key):
    doc = document_id("slack", key)
    source, _, rest = doc.partition(":")
    assert source == "slack"
    assert pinecone_safe(chunk_id(doc, MAX_CHUNK_INDEX))
    assert "#" not in doc  # '<doc id>#' must be an exact prefix of the document's chunks
    assert ":" not in rest  # the first ':' separates the source
    assert "/" not in rest or len(key) > 1  # '/' only joins the parts of a composite key


def test_escaping_keeps_distinct_keys_distinct():
    keys = [("a/b",), ("a", "b"), ("a%2Fb",), ("a#b",), ("a%23b",), ("a:b",), ("a b",), ("a+b",),
            ("A/B",)]
    ids = [document_id("slack", k) for k in keys]
    assert len(set(ids)) == len(keys), ids


def test_one_document_is_never_a_prefix_match_of_another():
    one, eleven = document_id("gong", ("1",)), document_id("gong", ("11",))
    assert not chunk_id(eleven, 0).startswith(chunk_prefix(one))
    assert chunk_id(one, 12).startswith(chunk_prefix(one))


def test_long_keys_are_hashed_to_fit_pinecone_ids():
    key = ("k" * 600,)
    doc = document_id("github", key)
    assert doc == "github:h-" + hashlib.sha256(b'["' + key[0].encode() + b'"]').hexdigest()
    assert pinecone_safe(chunk_id(doc, MAX_CHUNK_INDEX))
    assert document_id("github", ("k" * 601,)) != doc


def test_hashed_composite_keys_cannot_collide_through_the_separator():
    long = "x" * 600
    assert document_id("s", (f"a\x1f{long}",)) != document_id("s", ("a", long))


def test_escaping_counts_towards_the_limit():
    # 200 CJK characters are 600 bytes, 1,800 characters once percent-encoded: hashed.
    doc = document_id("slack", ("東" * 200,))
    assert doc.startswith("slack:h-")
    assert pinecone_safe(chunk_id(doc, MAX_CHUNK_INDEX))


def test_the_longest_unhashed_id_still_fits():
    for n in range(480, 520):
        doc = document_id("s", ("a" * n,))
        assert pinecone_safe(chunk_id(doc, MAX_CHUNK_INDEX)), n
    assert document_id("s", ("a" * 400,)) == "s:" + "a" * 400  # short keys stay readable


def test_chunk_uuid_equals_weaviate_generate_uuid5():
    from weaviate.util import generate_uuid5

    assert chunk_uuid("d1#0") == "82cb5bd0-23b4-558d-ae5a-73d50bcaa48b"  # from the reference
    for cid in ["gong:7782342274025937895#0", chunk_id(document_id("slack", ("C1", "1.2")), 41),
                chunk_id(document_id("github", ("é" * 300,)), 3)]:
        assert chunk_uuid(cid) == generate_uuid5(cid)
