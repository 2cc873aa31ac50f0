"""The query contract (worker/contract.py): the committed OpenAPI copy cannot drift, and a bad
request is refused naming its field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.contract import QueryRequest, openapi
from worker.fields import FieldCatalog, PRESET_FIELDS
from worker.filters import FilterInvalid, lance_sql, parse_filter, pinecone_filter
from worker.query import parse_request

COMMITTED = Path(__file__).resolve().parent.parent / "worker" / "openapi.json"
CATALOG = FieldCatalog({"sophia-ai/github-enriched": {**PRESET_FIELDS["github_document"]},
                        "sophia-ai/gong-calls-enriched": {**PRESET_FIELDS["gong_call"]}})


def test_the_committed_openapi_document_matches_the_models():
    committed = json.loads(COMMITTED.read_text())
    assert committed == json.loads(json.dumps(openapi())), (
        "worker/openapi.json is stale: run `memory-worker openapi > worker/openapi.json`")


def test_the_openapi_document_describes_the_query_endpoint():
    doc = openapi()
    post = doc["paths"]["/query"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/QueryRequest")
    request = doc["components"]["schemas"]["QueryRequest"]
    assert request["required"] == ["text"]
    assert request["properties"]["mode"]["default"] == "hybrid"
    assert request["properties"]["group"]["default"] == "document"
    assert "ErrorResponse" in doc["components"]["schemas"]


@pytest.mark.parametrize(("body", "field"), [
    ({"text": ""}, "text"),
    ({"text": "x", "k": 0}, "k"),
    ({"text": "x", "k": "five"}, "k"),
    ({"text": "x", "mode": "fuzzy"}, "mode"),
    ({"text": "x", "colour": "red"}, "colour"),
    ({"text": "x", "filter": {"labels": {"$near": 1}}}, "filter.labels.$near"),
    ({"text": "x", "filter": {"labels": {"$in": []}}}, "filter.labels.$in"),
    ({"text": "x", "chunks_per_doc": 0}, "chunks_per_doc"),
])
def test_a_bad_request_names_its_field(body, field):
    with pytest.raises(FilterInvalid) as err:
        parse_request(body)
    assert err.value.field == field and field in str(err.value)


@pytest.mark.parametrize(("flt", "field"), [
    ({"no_such_field": 1}, "filter.no_such_field"),
    ({"number": {"$gte": "many"}}, "filter.number.$gte"),
    ({"labels": {"$gte": "a"}}, "filter.labels.$gte"),  # ranges need a numeric field
    ({"number": 3.5}, "filter.number"),  # an integer field
    ({"published_at": {"$lt": "not a time"}}, "filter.published_at.$lt"),
    ({"started_at": {"$gte": "yesterday"}}, "filter.started_at.$gte"),
])
def test_a_bad_filter_names_its_field(flt, field):
    req = QueryRequest.model_validate({"text": "x", "filter": flt})
    with pytest.raises(FilterInvalid) as err:
        parse_filter(req.filter_dict(), CATALOG)
    assert err.value.field == field, str(err.value)


def test_filters_render_the_same_conditions_for_each_store():
    where = parse_filter({"labels": {"$in": ["bug", "memory"]}, "number": {"$gte": 400, "$lt": 500},
                          "repo": "sophia-ai/ai-memory", "started_at": {"$gte": "2026-11-20T00:00:00Z"},
                          "published_after": 1.7e9}, CATALOG)
    sql = lance_sql(where.conditions())
    assert sql == ("array_has_any(labels, ['bug', 'memory']) AND number >= 400 AND number < 500 AND "
                   "repo = 'sophia-ai/ai-memory' AND started_at >= 1795132800.0 AND published_at >= 1700000000.0")
    assert pinecone_filter(where.conditions()) == {"$and": [
        {"labels": {"$in": ["bug", "memory"]}}, {"number": {"$gte": 400.0}}, {"number": {"$lt": 500.0}},
        {"repo": {"$eq": "sophia-ai/ai-memory"}}, {"started_at": {"$gte": 1795132800.0}},
        {"published_at": {"$gte": 1.7e9}}]}


def test_sql_values_are_quoted_not_interpolated():
    where = parse_filter({"repo": "x' OR '1'='1", "labels": "a'b"}, CATALOG)
    assert lance_sql(where.conditions()) == "repo = 'x'' OR ''1''=''1' AND array_has(labels, 'a''b')"
