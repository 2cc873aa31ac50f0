"""Retrieval quality on the sample stream: paraphrased questions find their document.

examples/queries.json pairs a question, worded unlike the document, with the collection key of
the document that answers it. Documents are ranked by their best chunk (the query asks the local
store for 50 chunks, then keeps the first hit of each document).
"""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from worker.config import BindingConfig
from worker.documents import Binding
from worker.ids import document_id
from worker.records import QueryFilter

PRESETS = {"sophia-ai/gong-calls-enriched": "gong_call",
           "sophia-ai/slack-messages-enriched": "slack_message",
           "sophia-ai/github-enriched": "github_document"}
QUERIES = json.loads((REPO / "examples" / "queries.json").read_text(encoding="utf-8"))
TOP = 3


def intended(query: dict) -> str:
    binding = Binding(BindingConfig(collection=query["collection"], preset=PRESETS[query["collection"]]))
    return document_id(binding.source, tuple(str(k) for k in query["key"]))


def ranked_documents(indexed_stream, text: str, where: QueryFilter) -> list[str]:
    hits = indexed_stream.sink.query(indexed_stream.embedder.embed_query(text), 50, where)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    return list(dict.fromkeys(h.doc_id for h in hits))


def test_there_are_enough_paraphrased_queries():
    assert len(QUERIES) >= 12
    assert {q["collection"] for q in QUERIES} == set(PRESETS)


@pytest.mark.parametrize("query", QUERIES, ids=[q["doc_id_hint"] for q in QUERIES])
def test_intended_document_is_in_the_top_3_of_its_collection(indexed_stream, query):
    docs = ranked_documents(indexed_stream, query["query"], QueryFilter(collection=query["collection"]))
    want = intended(query)
    assert want in docs[:TOP], f"{want} ranked {docs.index(want) + 1 if want in docs else '>50'}: {docs[:5]}"


def test_most_queries_find_their_document_across_all_collections(indexed_stream):
    found = [q["doc_id_hint"] for q in QUERIES
             if intended(q) in ranked_documents(indexed_stream, q["query"], QueryFilter())[:TOP]]
    assert len(found) >= 12, found
