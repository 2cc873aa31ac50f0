"""The Weaviate emulator, driven only through the real ``weaviate-client`` 4.24.1.

These tests pin what the worker's Weaviate sink relies on: the client accepts the emulator's
schema and gRPC replies, filters follow Weaviate's tokenization (``word`` over-matches id-like
values; ``field`` does not), ``delete_many`` stops at 10,000 matches per call, per-object batch
errors come back in the result instead of raising, one ``UNAVAILABLE`` is retried by the client,
and an outage makes calls fail. BM25 and hybrid scores are checked against the server's formulas
computed by hand here (usecases/traverser/hybrid, adapters/repos/db/inverted/bm25_searcher*.go).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any, Iterator

import numpy as np
import pytest
import weaviate
from weaviate.classes.config import (
    Configure, DataType, Property, StopwordsPreset, Tokenization, VectorDistances, Vectorizers,
)
from weaviate.classes.data import DataObject
from weaviate.classes.init import AdditionalConfig, Auth, Timeout
from weaviate.classes.query import Filter, HybridFusion, MetadataQuery
from weaviate.exceptions import (
    UnexpectedStatusCodeError,
    WeaviateDeleteManyError,
    WeaviateQueryError,
)
from weaviate.util import generate_uuid5

try:  # with `pythonpath = ["."]` in the pytest config
    from tests.emulators.weaviate import QUERY_MAXIMUM_RESULTS, WeaviateEmulator
except ModuleNotFoundError:  # rootdir-relative import when tests/ has no __init__.py
    from emulators.weaviate import QUERY_MAXIMUM_RESULTS, WeaviateEmulator  # type: ignore[no-redef]

DIM = 16
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def connect(emu: WeaviateEmulator, *, api_key: str | None = None, query_timeout_s: float = 5) -> weaviate.WeaviateClient:
    return weaviate.connect_to_custom(
        http_host="127.0.0.1",
        http_port=emu.http_port,
        http_secure=False,
        grpc_host="127.0.0.1",
        grpc_port=emu.grpc_port,
        grpc_secure=False,
        skip_init_checks=True,
        auth_credentials=Auth.api_key(api_key) if api_key else None,
        additional_config=AdditionalConfig(timeout=Timeout(init=2, query=query_timeout_s, insert=10)),
    )


@pytest.fixture
def emu() -> Iterator[WeaviateEmulator]:
    with WeaviateEmulator(seed=1) as emulator:
        yield emulator


@pytest.fixture
def client(emu: WeaviateEmulator) -> Iterator[weaviate.WeaviateClient]:
    c = connect(emu)
    yield c
    c.close()


def create_docs(client: weaviate.WeaviateClient, name: str = "docs") -> Any:
    return client.collections.create(
        name,
        properties=[
            Property(name="doc_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
            Property(name="title", data_type=DataType.TEXT),
            Property(name="n", data_type=DataType.INT),
            Property(name="score", data_type=DataType.NUMBER),
            Property(name="at", data_type=DataType.DATE),
            Property(name="tags", data_type=DataType.TEXT_ARRAY),
            Property(name="flag", data_type=DataType.BOOL),
        ],
        vector_config=Configure.Vectors.self_provided(),
    )


def doc(i: int, vector: np.ndarray) -> DataObject:
    return DataObject(
        properties={
            "doc_id": f"doc-{i}",
            "title": ["Red apple", "green apple", "red pear"][i % 3],
            "n": i,
            "score": i * 1.5,
            "at": T0 + dt.timedelta(days=i),
            "tags": ["all", f"t{i % 5}"],
            "flag": i % 2 == 0,
        },
        uuid=generate_uuid5(f"doc-{i}"),
        vector=vector.tolist(),
    )


def insert_docs(coll: Any, count: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    result = coll.data.insert_many([doc(i, vectors[i]) for i in range(count)])
    assert not result.has_errors, result.errors
    return vectors


def ids(objects: Any) -> set[str]:
    return {str(o.uuid) for o in objects}


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


def test_create_collection_serves_a_fully_defaulted_config(client: weaviate.WeaviateClient) -> None:
    coll = create_docs(client, "docs")

    assert coll.name == "Docs"  # capitalised
    assert client.collections.exists("Docs") and client.collections.exists("docs")
    assert not client.collections.exists("Missing")
    cfg = coll.config.get()
    assert {p.name: (p.data_type, p.tokenization) for p in cfg.properties} == {
        "doc_id": (DataType.TEXT, Tokenization.FIELD),
        "title": (DataType.TEXT, Tokenization.WORD),
        "n": (DataType.INT, None),
        "score": (DataType.NUMBER, None),
        "at": (DataType.DATE, None),
        "tags": (DataType.TEXT_ARRAY, Tokenization.WORD),
        "flag": (DataType.BOOL, None),
    }
    assert all(p.index_filterable for p in cfg.properties)
    default = cfg.vector_config["default"]
    assert default.vectorizer.vectorizer == Vectorizers.NONE
    assert default.vector_index_config.distance_metric == VectorDistances.COSINE
    assert cfg.inverted_index_config.bm25.b == 0.75
    assert cfg.replication_config.factor == 1
    assert cfg.sharding_config.desired_count == 1
    assert "Docs" in client.collections.list_all()
    with pytest.raises(UnexpectedStatusCodeError):
        create_docs(client, "Docs")  # already exists: 422


# --------------------------------------------------------------------------------------------
# Writes and reads
# --------------------------------------------------------------------------------------------


def test_insert_many_round_trips_through_fetch(client: weaviate.WeaviateClient, emu: WeaviateEmulator) -> None:
    coll = create_docs(client)
    vectors = insert_docs(coll, 20)

    uid = generate_uuid5("doc-3")
    obj = coll.query.fetch_object_by_id(uid, include_vector=True)
    assert obj is not None and str(obj.uuid) == uid
    assert obj.properties["n"] == 3 and type(obj.properties["n"]) is int  # Struct doubles coerced by schema
    assert obj.properties["score"] == 4.5
    assert obj.properties["at"] == T0 + dt.timedelta(days=3)
    assert obj.properties["tags"] == ["all", "t3"]
    assert obj.properties["flag"] is False
    assert np.allclose(obj.vector["default"], vectors[3])
    assert obj.metadata.creation_time is not None and obj.metadata.last_update_time is not None
    stored_vector, stored_props = emu.objects("Docs")[uid]
    assert np.allclose(stored_vector, vectors[3]) and type(stored_props["n"]) is int

    flagged = coll.query.fetch_objects(
        filters=Filter.by_property("n").greater_or_equal(10) & Filter.by_property("flag").equal(True), limit=100
    )
    assert sorted(o.properties["n"] for o in flagged.objects) == [10, 12, 14, 16, 18]
    assert len(coll.query.fetch_objects().objects) == 10  # QUERY_DEFAULTS_LIMIT without a limit
    assert coll.query.fetch_object_by_id(generate_uuid5("missing")) is None


def test_reinserting_a_uuid_overwrites_the_object(client: weaviate.WeaviateClient, emu: WeaviateEmulator) -> None:
    coll = create_docs(client)
    vector = np.ones(DIM, np.float32)
    uid = generate_uuid5("doc-1")
    coll.data.insert_many([DataObject(properties={"doc_id": "doc-1", "n": 1}, uuid=uid, vector=vector.tolist())])
    coll.data.insert_many([DataObject(properties={"doc_id": "doc-1", "n": 2}, uuid=uid, vector=(2 * vector).tolist())])

    assert coll.aggregate.over_all(total_count=True).total_count == 1
    assert emu.objects("Docs")[uid][1] == {"doc_id": "doc-1", "n": 2}
    assert np.allclose(emu.objects("Docs")[uid][0], 2 * vector)


def test_bad_objects_fail_alone_in_the_batch(client: weaviate.WeaviateClient, emu: WeaviateEmulator) -> None:
    coll = create_docs(client)
    good = DataObject(properties={"n": 1}, uuid=generate_uuid5("good"), vector=[0.1] * DIM)
    fractional_int = DataObject(properties={"n": 1.5}, uuid=generate_uuid5("frac"), vector=[0.1] * DIM)
    wrong_dim = DataObject(properties={"n": 2}, uuid=generate_uuid5("dim"), vector=[0.1] * (DIM + 1))

    result = coll.data.insert_many([good, fractional_int, wrong_dim])

    assert sorted(result.errors) == [1, 2]
    assert "invalid integer property 'n'" in result.errors[1].message
    assert "vector with length" in result.errors[2].message
    assert set(emu.objects("Docs")) == {generate_uuid5("good")}


def test_single_object_rest_calls(client: weaviate.WeaviateClient, emu: WeaviateEmulator) -> None:
    coll = create_docs(client)
    uid = generate_uuid5("rest-1")
    coll.data.insert({"doc_id": "rest-1", "n": 1, "title": "first"}, uuid=uid, vector=[0.5] * DIM)
    assert coll.data.exists(uid)

    coll.data.update(uid, properties={"n": 5})
    assert emu.objects("Docs")[uid][1] == {"doc_id": "rest-1", "n": 5, "title": "first"}
    coll.data.replace(uid, properties={"doc_id": "rest-1", "n": 6})
    assert emu.objects("Docs")[uid][1] == {"doc_id": "rest-1", "n": 6}

    assert coll.data.delete_by_id(uid) is True
    assert not coll.data.exists(uid)
    assert coll.data.delete_by_id(uid) is False


# --------------------------------------------------------------------------------------------
# Filters and search
# --------------------------------------------------------------------------------------------


def test_filters_match_a_python_reference(client: weaviate.WeaviateClient) -> None:
    coll = create_docs(client)
    count = 30
    insert_docs(coll, count)
    props = {generate_uuid5(f"doc-{i}"): doc(i, np.zeros(DIM)).properties for i in range(count)}
    cutoff = T0 + dt.timedelta(days=7)
    cases = [
        (Filter.by_property("n").not_equal(3), lambda p: p["n"] != 3),
        (Filter.by_property("n").less_or_equal(5) | Filter.by_property("score").greater_than(39.0),
         lambda p: p["n"] <= 5 or p["score"] > 39.0),
        (Filter.by_property("at").less_than(cutoff), lambda p: p["at"] < cutoff),
        (Filter.by_property("tags").contains_any(["t1", "t2"]), lambda p: {"t1", "t2"} & set(p["tags"])),
        (Filter.by_property("tags").contains_all(["all", "t3"]), lambda p: "t3" in p["tags"]),
        (Filter.by_property("doc_id").like("doc-1*"), lambda p: p["doc_id"].startswith("doc-1")),
        (Filter.by_property("title").equal("RED"), lambda p: "red" in p["title"].lower().split()),
        (Filter.by_property("flag").equal(False), lambda p: not p["flag"]),
        (Filter.by_id().contains_any([generate_uuid5("doc-0"), generate_uuid5("doc-5")]),
         lambda p: p["doc_id"] in ("doc-0", "doc-5")),
        (Filter.by_id().equal(generate_uuid5("doc-7")), lambda p: p["doc_id"] == "doc-7"),
    ]
    for where, reference in cases:
        got = ids(coll.query.fetch_objects(filters=where, limit=100).objects)
        want = {u for u, p in props.items() if reference(p)}
        assert got == want, where


def test_typed_metadata_filters_match_a_python_reference(client: weaviate.WeaviateClient) -> None:
    coll = create_docs(client)
    count = 30
    insert_docs(coll, count)
    props = {generate_uuid5(f"doc-{i}"): doc(i, np.zeros(DIM)).properties for i in range(count)}
    since = T0 + dt.timedelta(days=10)
    cases = [
        (Filter.by_property("tags").equal("t1"), lambda p: "t1" in p["tags"]),
        (Filter.by_property("tags").contains_any(["t1", "t4"]) & Filter.by_property("flag").equal(True),
         lambda p: bool({"t1", "t4"} & set(p["tags"])) and p["flag"]),
        (Filter.by_property("tags").contains_all(["all", "t2"]), lambda p: "t2" in p["tags"]),
        (Filter.by_property("doc_id").equal("doc-1"), lambda p: p["doc_id"] == "doc-1"),  # field: not doc-10..19
        (Filter.by_property("doc_id").contains_any(["doc-1", "doc-22", "nope"]), lambda p: p["doc_id"] in ("doc-1", "doc-22")),
        (Filter.by_property("n").greater_or_equal(5) & Filter.by_property("n").less_than(9), lambda p: 5 <= p["n"] < 9),
        (Filter.by_property("score").greater_than(40.0) | Filter.by_property("score").less_or_equal(1.5),
         lambda p: p["score"] > 40.0 or p["score"] <= 1.5),
        (Filter.by_property("at").greater_or_equal(since) & Filter.by_property("at").less_than(since + dt.timedelta(days=3)),
         lambda p: since <= p["at"] < since + dt.timedelta(days=3)),
        (Filter.any_of([Filter.by_property("flag").equal(False), Filter.by_property("doc_id").equal("doc-4")]),
         lambda p: not p["flag"] or p["doc_id"] == "doc-4"),
    ]
    for where, reference in cases:
        got = ids(coll.query.fetch_objects(filters=where, limit=100).objects)
        want = {u for u, p in props.items() if reference(p)}
        assert got == want, where
        assert want, where  # every case selects something


def test_filter_values_are_typed_the_way_the_server_types_them(client: weaviate.WeaviateClient) -> None:
    coll = create_docs(client)
    insert_docs(coll, 6)

    def selected(where: Any) -> list[int]:
        return sorted(o.properties["n"] for o in coll.query.fetch_objects(filters=where, limit=100).objects)

    assert selected(Filter.by_property("n").equal(3.0)) == [3]  # a whole float on an int property
    assert selected(Filter.by_property("score").equal(3)) == [2]  # an int on a number property (2 * 1.5)
    assert selected(Filter.by_property("title").contains_any(["the", "pear"])) == [2, 5]  # the stopword value is skipped
    refused = {
        "floating point number": Filter.by_property("n").equal(2.5),
        "could not parse string": Filter.by_property("n").equal("three"),
        "expected value to be string, got 'int'": Filter.by_property("title").equal(5),
        "expected value to be bool, got string": Filter.by_property("flag").equal("yes"),
        "only stopwords provided": Filter.by_property("title").equal("The"),
    }
    for message, where in refused.items():
        with pytest.raises(WeaviateQueryError, match=message):
            coll.query.fetch_objects(filters=where)


def test_filters_need_the_index_the_server_needs(client: weaviate.WeaviateClient) -> None:
    coll = create_docs(client)
    insert_docs(coll, 3)
    with pytest.raises(WeaviateQueryError, match="indexTimestamps|IndexTimestamps"):
        coll.query.fetch_objects(filters=Filter.by_creation_time().greater_than(T0))


def test_near_vector_returns_the_exact_top_k(client: weaviate.WeaviateClient) -> None:
    coll = create_docs(client)
    count, k = 400, 10
    vectors = insert_docs(coll, count, seed=3)
    uuids = [generate_uuid5(f"doc-{i}") for i in range(count)]
    query = np.random.default_rng(4).standard_normal(DIM).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = 1 - unit @ (query / np.linalg.norm(query))

    res = coll.query.near_vector(query.tolist(), limit=k, return_metadata=MetadataQuery(distance=True, certainty=True))
    want = np.argsort(cosine)[:k]
    assert [str(o.uuid) for o in res.objects] == [uuids[i] for i in want]
    assert np.allclose([o.metadata.distance for o in res.objects], cosine[want], atol=1e-5)
    assert np.allclose([o.metadata.certainty for o in res.objects], 1 - cosine[want] / 2, atol=1e-5)

    res = coll.query.near_vector(query.tolist(), limit=k, filters=Filter.by_property("tags").contains_any(["t2"]))
    eligible = np.array([i % 5 == 2 for i in range(count)])  # doc() tags t{i % 5}
    masked = np.where(eligible, cosine, np.inf)
    filtered_want = [uuids[i] for i in np.argsort(masked)[:k]]
    assert [str(o.uuid) for o in res.objects] == filtered_want
    assert filtered_want != [uuids[i] for i in want]  # the filter changes the answer


# --------------------------------------------------------------------------------------------
# Keyword (BM25F) and hybrid search
# --------------------------------------------------------------------------------------------

K1, B = 1.2, 0.75  # the class defaults (invertedIndexConfig.bm25)
FOXES = ["the quick brown fox", "quick quick fox jumps", "lazy dog sleeps", "brown dog and the fox"]
FOX_TITLES = ["fox", "dog report", "lazy fox fox", "brown dog"]
FOX_VECTORS = np.array(
    [[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 1.0, 0.0], [0.0, 0.6, 0.8]], dtype=np.float32
)
FOX_QUERY = np.array([0.9, 0.3, 0.1], dtype=np.float32)


def idf(n: int, total: int) -> float:
    return math.log(1 + (total - n + 0.5) / (n + 0.5))


def saturation(tf: float, length: int, avg_length: float, k1: float = K1, b: float = B) -> float:
    """Weaviate's BM25 term frequency part: ``tf / (tf + k1 * (1 - b + b * len / avg))`` (no k1 + 1)."""
    return tf / (tf + k1 * (1 - b + b * length / avg_length))


def create_foxes(client: weaviate.WeaviateClient, name: str = "Foxes", **kwargs: Any) -> tuple[Any, list[str]]:
    coll = client.collections.create(
        name,
        properties=[
            Property(name="text", data_type=DataType.TEXT),
            Property(name="title", data_type=DataType.TEXT),
            Property(name="source", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
            Property(name="n", data_type=DataType.INT),
        ],
        vector_config=Configure.Vectors.self_provided(name="main"),
        **kwargs,
    )
    uuids = [generate_uuid5(f"fox-{i}") for i in range(len(FOXES))]
    result = coll.data.insert_many(
        [
            DataObject(
                properties={"text": t, "title": FOX_TITLES[i], "source": f"s{i % 2}", "n": i},
                uuid=uuids[i],
                vector={"main": FOX_VECTORS[i].tolist()},
            )
            for i, t in enumerate(FOXES)
        ]
    )
    assert not result.has_errors, result.errors
    return coll, uuids


def ranked(objects: Any) -> list[tuple[str, float]]:
    return [(str(o.uuid), o.metadata.score) for o in objects]


def fox_bm25_on_text() -> dict[int, float]:
    """BM25 of "quick fox" on ``text``, by hand: N = 4, lengths 4, 4, 3, 5 (avg 4)."""
    avg = (4 + 4 + 3 + 5) / 4
    quick, fox = idf(2, 4), idf(3, 4)
    return {
        1: quick * saturation(2, 4, avg) + fox * saturation(1, 4, avg),
        0: quick * saturation(1, 4, avg) + fox * saturation(1, 4, avg),
        3: fox * saturation(1, 5, avg),
    }


def test_bm25_scores_are_weaviates_bm25(client: weaviate.WeaviateClient) -> None:
    coll, uuids = create_foxes(client)
    want = fox_bm25_on_text()

    # "the" is an English stopword: dropped from the query, still counted in the lengths.
    res = coll.query.bm25("The quick fox", query_properties=["text"], return_metadata=MetadataQuery(score=True))
    assert [u for u, _ in ranked(res.objects)] == [uuids[1], uuids[0], uuids[3]]  # "lazy dog" matches nothing
    assert [s for _, s in ranked(res.objects)] == pytest.approx([want[1], want[0], want[3]], rel=1e-6)

    # The filter removes candidates, not documents from N and n: the scores stay the same.
    res = coll.query.bm25(
        "quick fox", query_properties=["text"], filters=Filter.by_property("source").equal("s1"),
        return_metadata=MetadataQuery(score=True),
    )
    assert ranked(res.objects) == [(uuids[1], pytest.approx(want[1], rel=1e-6)), (uuids[3], pytest.approx(want[3], rel=1e-6))]
    assert [str(o.uuid) for o in coll.query.bm25("quick fox", query_properties=["text"], limit=1).objects] == [uuids[1]]
    assert coll.query.bm25("the and", query_properties=["text"]).objects == []  # only stopwords


def test_bm25_reads_k1_b_and_stopwords_from_the_class(client: weaviate.WeaviateClient) -> None:
    coll, uuids = create_foxes(
        client, inverted_index_config=Configure.inverted_index(bm25_k1=2.0, bm25_b=0.5, stopwords_preset=StopwordsPreset.NONE)
    )
    avg = 4.0
    # Without stopwords "the" is a term (in d0 and d3); repeated in the query, it counts twice.
    res = coll.query.bm25("the the fox", query_properties=["text"], return_metadata=MetadataQuery(score=True))
    the, fox = idf(2, 4), idf(3, 4)
    d0 = 2 * the * saturation(1, 4, avg, 2.0, 0.5) + fox * saturation(1, 4, avg, 2.0, 0.5)
    d3 = 2 * the * saturation(1, 5, avg, 2.0, 0.5) + fox * saturation(1, 5, avg, 2.0, 0.5)
    d1 = fox * saturation(1, 4, avg, 2.0, 0.5)
    assert ranked(res.objects) == [
        (uuids[0], pytest.approx(d0, rel=1e-6)), (uuids[3], pytest.approx(d3, rel=1e-6)), (uuids[1], pytest.approx(d1, rel=1e-6))
    ]


def test_bm25_scores_each_property_on_its_own_and_sums(client: weaviate.WeaviateClient) -> None:
    coll, uuids = create_foxes(client)
    # BlockMax WAND (the default): per property its own average length (title: 1, 2, 3, 2 -> 2;
    # text: 4), the term's n averaged over the properties holding it ((2 + 3) // 2 = 2), the
    # boost as a factor, then the per-property scores summed.
    fox = idf((2 + 3) // 2, 4)
    want = {
        0: 2 * fox * saturation(1, 1, 2.0) + fox * saturation(1, 4, 4.0),
        2: 2 * fox * saturation(2, 3, 2.0),
        1: fox * saturation(1, 4, 4.0),
        3: fox * saturation(1, 5, 4.0),
    }
    res = coll.query.bm25("fox", query_properties=["title^2", "text"], return_metadata=MetadataQuery(score=True))
    order = sorted(want, key=lambda i: -want[i])
    assert ranked(res.objects) == [(uuids[i], pytest.approx(want[i], rel=1e-6)) for i in order]

    # Without query_properties every searchable text property is searched, unboosted.
    res = coll.query.bm25("fox", return_metadata=MetadataQuery(score=True))
    assert dict(ranked(res.objects))[uuids[2]] == pytest.approx(fox * saturation(2, 3, 2.0), rel=1e-6)
    with pytest.raises(WeaviateQueryError, match="requires inverted index"):
        coll.query.bm25("fox", query_properties=["n"])
    with pytest.raises(WeaviateQueryError, match="must have query set"):
        coll.query.bm25("", query_properties=["text"])


def test_bm25_legacy_wand_merges_properties_per_term(client: weaviate.WeaviateClient) -> None:
    client.collections.create_from_dict({
        "class": "Legacy",
        "invertedIndexConfig": {"usingBlockMaxWAND": False},
        "properties": [{"name": "title", "dataType": ["text"]}, {"name": "text", "dataType": ["text"]}],
        "vectorizer": "none",
    })
    coll = client.collections.get("Legacy")
    coll.data.insert_many([DataObject(properties={"title": FOX_TITLES[i], "text": t}, uuid=generate_uuid5(f"l{i}"))
                           for i, t in enumerate(FOXES)])
    # One term over both properties: frequencies and lengths (distinct tokens) added, n = the
    # objects holding it anywhere (4), avg = mean of the properties' mean distinct counts.
    avg = ((1 + 2 + 2 + 2) / 4 + (4 + 3 + 3 + 5) / 4) / 2
    fox = idf(4, 4)
    want = {0: fox * saturation(2, 1 + 4, avg), 2: fox * saturation(2, 2, avg), 1: fox * saturation(1, 3, avg),
            3: fox * saturation(1, 5, avg)}
    res = coll.query.bm25("fox", query_properties=["title", "text"], return_metadata=MetadataQuery(score=True))
    got = {str(o.uuid): o.metadata.score for o in res.objects}
    assert got == {generate_uuid5(f"l{i}"): pytest.approx(s, rel=1e-6) for i, s in want.items()}


def test_bm25_auto_limit_cuts_at_the_first_score_jump(client: weaviate.WeaviateClient) -> None:
    coll = client.collections.create(
        "Jumps", properties=[Property(name="text", data_type=DataType.TEXT)], vector_config=Configure.Vectors.self_provided()
    )
    texts = ["zebra zebra zebra", "zebra zebra zebra", "zebra " + "grass " * 30, "zebra " + "grass " * 31]
    coll.data.insert_many([DataObject(properties={"text": t}, uuid=generate_uuid5(t + str(i)), vector=[1.0, 0.0])
                           for i, t in enumerate(texts)])
    everything = coll.query.bm25("zebra", return_metadata=MetadataQuery(score=True)).objects
    scores = [o.metadata.score for o in everything]
    assert len(scores) == 4 and scores[1] > 2 * scores[2]  # two strong, two weak
    cut = coll.query.bm25("zebra", auto_limit=1).objects
    assert [str(o.uuid) for o in cut] == [str(o.uuid) for o in everything[:2]]


def normalised(values: dict[int, float]) -> dict[int, float]:
    high, low = max(values.values()), min(values.values())
    return {k: (v - low) / (high - low) for k, v in values.items()}


def fox_cosine() -> dict[int, float]:
    unit = FOX_VECTORS / np.linalg.norm(FOX_VECTORS, axis=1, keepdims=True)
    sims = unit @ (FOX_QUERY / np.linalg.norm(FOX_QUERY))
    return {i: float(s) for i, s in enumerate(sims)}


def test_hybrid_relative_score_fusion_weighs_min_max_normalised_legs(client: weaviate.WeaviateClient) -> None:
    coll, uuids = create_foxes(client)
    alpha = 0.4
    vector, keyword = normalised(fox_cosine()), normalised(fox_bm25_on_text())
    want = {i: alpha * vector[i] + (1 - alpha) * keyword.get(i, 0.0) for i in range(4)}  # d2: no keyword part

    for fusion in (HybridFusion.RELATIVE_SCORE, None):  # relativeScore is the default
        res = coll.query.hybrid(
            "quick fox", vector=FOX_QUERY.tolist(), target_vector="main", alpha=alpha, fusion_type=fusion,
            query_properties=["text"], return_metadata=MetadataQuery(score=True, explain_score=True),
        )
        order = sorted(want, key=lambda i: -want[i])
        assert ranked(res.objects) == [(uuids[i], pytest.approx(want[i], abs=1e-6)) for i in order]
        assert "keyword,bm25" in res.objects[0].metadata.explain_score


def test_hybrid_ranked_fusion_sums_weighted_reciprocal_ranks(client: weaviate.WeaviateClient, emu: WeaviateEmulator) -> None:
    coll, uuids = create_foxes(client)
    alpha = 0.3
    by_vector = sorted(fox_cosine().items(), key=lambda kv: -kv[1])
    by_keyword = sorted(fox_bm25_on_text().items(), key=lambda kv: -kv[1])
    want = {i: 0.0 for i in range(4)}
    for rank, (i, _) in enumerate(by_vector):
        want[i] += alpha / (rank + 60)  # rank from 0, as the server counts it
    for rank, (i, _) in enumerate(by_keyword):
        want[i] += (1 - alpha) / (rank + 60)

    res = coll.query.hybrid(
        "quick fox", vector=FOX_QUERY.tolist(), target_vector="main", alpha=alpha,
        fusion_type=HybridFusion.RANKED, query_properties=["text"], return_metadata=MetadataQuery(score=True),
    )
    order = sorted(want, key=lambda i: -want[i])
    assert ranked(res.objects) == [(uuids[i], pytest.approx(want[i], abs=1e-7)) for i in order]
    sent = emu.calls("search")[-1].body["hybrid_search"]
    assert sent["targets"] == {"target_vectors": ["main"]} and "vector_bytes" in sent  # how 4.24 sends it


def test_hybrid_alpha_0_is_bm25_and_alpha_1_is_near_vector(client: weaviate.WeaviateClient) -> None:
    coll, uuids = create_foxes(client)
    bm25 = coll.query.bm25("quick fox", query_properties=["text"], return_metadata=MetadataQuery(score=True)).objects
    keyword_only = coll.query.hybrid(
        "quick fox", vector=FOX_QUERY.tolist(), target_vector="main", alpha=0, query_properties=["text"],
        return_metadata=MetadataQuery(score=True),
    ).objects
    assert [o.uuid for o in keyword_only] == [o.uuid for o in bm25]  # d2 (no keyword) is absent
    want = normalised({i: o.metadata.score for i, o in enumerate(bm25)})
    assert [o.metadata.score for o in keyword_only] == pytest.approx([want[i] for i in range(len(bm25))], abs=1e-6)

    near = coll.query.near_vector(FOX_QUERY.tolist(), target_vector="main", return_metadata=MetadataQuery(distance=True)).objects
    vector_only = coll.query.hybrid(
        "quick fox", vector=FOX_QUERY.tolist(), target_vector="main", alpha=1, return_metadata=MetadataQuery(score=True),
    ).objects
    assert [o.uuid for o in vector_only] == [o.uuid for o in near]
    want = normalised({i: 1 - o.metadata.distance for i, o in enumerate(near)})
    assert [o.metadata.score for o in vector_only] == pytest.approx([want[i] for i in range(len(near))], abs=1e-6)
    no_query = coll.query.hybrid(None, vector=FOX_QUERY.tolist(), target_vector="main").objects  # the client sets alpha 1
    assert [o.uuid for o in no_query] == [o.uuid for o in near]

    with pytest.raises(WeaviateQueryError, match="without vectorizer"):
        coll.query.hybrid("quick fox", target_vector="main", alpha=0.5)  # vectorizer none: nothing embeds the query


def test_hybrid_filters_both_legs_and_max_vector_distance_cuts_the_keyword_leg(client: weaviate.WeaviateClient) -> None:
    coll, uuids = create_foxes(client)
    common = dict(vector=FOX_QUERY.tolist(), target_vector="main", alpha=0.5, query_properties=["text"])
    filtered = coll.query.hybrid("quick fox", filters=Filter.by_property("source").equal("s1"), **common).objects
    assert {str(o.uuid) for o in filtered} == {uuids[1], uuids[3]}  # d0 leads both legs unfiltered

    distance = {i: 1 - s for i, s in fox_cosine().items()}
    cutoff = (distance[0] + distance[1]) / 2  # only d0 is that close
    assert sorted(distance, key=distance.get)[0] == 0 and distance[1] > cutoff
    cut = coll.query.hybrid("quick fox", max_vector_distance=cutoff, return_metadata=MetadataQuery(score=True), **common)
    # d1 and d3 match the keywords but are beyond the distance: dropped from the keyword leg too.
    assert ranked(cut.objects) == [(uuids[0], pytest.approx(1.0))]


def test_hybrid_fetches_100_candidates_per_leg(client: weaviate.WeaviateClient) -> None:
    coll = client.collections.create(
        "Many", properties=[Property(name="text", data_type=DataType.TEXT)], vector_config=Configure.Vectors.self_provided()
    )
    count = 130
    vectors = np.random.default_rng(11).standard_normal((count, DIM)).astype(np.float32)
    query = np.random.default_rng(12).standard_normal(DIM).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ (query / np.linalg.norm(query))
    by_vector = list(np.argsort(-sims))
    needle = int(by_vector[40])  # the only keyword match, 41st by vector
    texts = ["needle in hay" if i == needle else "only hay" for i in range(count)]
    uuids = [generate_uuid5(f"many-{i}") for i in range(count)]
    coll.data.insert_many([DataObject(properties={"text": texts[i]}, uuid=uuids[i], vector=vectors[i].tolist()) for i in range(count)])

    res = coll.query.hybrid("needle", vector=query.tolist(), alpha=0.5, limit=3, return_metadata=MetadataQuery(score=True))
    top100 = sims[by_vector[:100]]  # the vector leg's candidates: the minimum is the 100th, not the 130th
    vector_part = 0.5 * (sims[needle] - top100.min()) / (top100.max() - top100.min())
    scores = dict(ranked(res.objects))
    assert scores[uuids[needle]] == pytest.approx(0.5 + vector_part, abs=1e-5)  # keyword leg: one result, full weight
    assert scores[uuids[by_vector[0]]] == pytest.approx(0.5, abs=1e-6)


# --------------------------------------------------------------------------------------------
# Deletes and counts
# --------------------------------------------------------------------------------------------


def test_word_tokenization_over_matches_where_field_does_not(client: weaviate.WeaviateClient, emu: WeaviateEmulator) -> None:
    coll = client.collections.create(
        "Chunks",
        properties=[
            Property(name="doc_field", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
            Property(name="doc_word", data_type=DataType.TEXT),  # word tokenization by default
        ],
        vector_config=Configure.Vectors.self_provided(),
    )
    values = ["gong:call-1", "gong:call-1-2", "gong:call-10", "Gong:Call-1"]
    coll.data.insert_many(
        [DataObject(properties={"doc_field": v, "doc_word": v}, uuid=generate_uuid5(v), vector=[1.0] * DIM) for v in values]
    )

    by_word = coll.data.delete_many(where=Filter.by_property("doc_word").equal("gong:call-1"), dry_run=True)
    by_field = coll.data.delete_many(where=Filter.by_property("doc_field").equal("gong:call-1"), dry_run=True)
    assert (by_word.matches, by_field.matches) == (3, 1)
    assert len(emu.objects("Chunks")) == 4  # dry runs delete nothing

    deleted = coll.data.delete_many(where=Filter.by_property("doc_field").equal("gong:call-1"))
    assert (deleted.matches, deleted.successful) == (1, 1)
    assert {p["doc_field"] for _, p in emu.objects("Chunks").values()} == {"gong:call-1-2", "gong:call-10", "Gong:Call-1"}

    coll.data.delete_many(where=Filter.by_property("doc_word").equal("gong:call-1"))
    assert {p["doc_field"] for _, p in emu.objects("Chunks").values()} == {"gong:call-10"}  # other docs gone


def test_delete_many_is_capped_per_call_and_needs_a_loop(client: weaviate.WeaviateClient, emu: WeaviateEmulator) -> None:
    coll = client.collections.create(
        "Bulk",
        properties=[Property(name="doc_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD)],
        vector_config=Configure.Vectors.self_provided(),
    )
    old, keep = 12_000, 500
    names = [f"old-{i}" for i in range(old)] + [f"keep-{i}" for i in range(keep)]
    for start in range(0, len(names), 2_500):
        batch = [
            DataObject(properties={"doc_id": "old" if n.startswith("old") else n}, uuid=generate_uuid5(n), vector=[1.0, 0.0, 0.0, 0.0])
            for n in names[start : start + 2_500]
        ]
        assert not coll.data.insert_many(batch).has_errors

    where = Filter.by_property("doc_id").equal("old")
    per_call = []
    while True:
        result = coll.data.delete_many(where=where)
        per_call.append((result.matches, result.successful))
        if result.matches == 0:
            break
    assert per_call == [(QUERY_MAXIMUM_RESULTS, QUERY_MAXIMUM_RESULTS), (old - QUERY_MAXIMUM_RESULTS, old - QUERY_MAXIMUM_RESULTS), (0, 0)]
    assert coll.aggregate.over_all(total_count=True).total_count == keep
    assert len(emu.objects("Bulk")) == keep


def test_aggregate_total_count_honours_filters(client: weaviate.WeaviateClient) -> None:
    coll = create_docs(client)
    insert_docs(coll, 30)
    assert coll.aggregate.over_all(total_count=True).total_count == 30
    assert coll.aggregate.over_all(filters=Filter.by_property("n").less_than(10), total_count=True).total_count == 10


# --------------------------------------------------------------------------------------------
# Faults, outages and auth
# --------------------------------------------------------------------------------------------


def test_object_error_fault_fails_only_the_named_objects(client: weaviate.WeaviateClient, emu: WeaviateEmulator) -> None:
    coll = create_docs(client)
    vectors = np.random.default_rng(5).standard_normal((10, DIM)).astype(np.float32)
    objs = [doc(i, vectors[i]) for i in range(10)]
    emu.faults.add(op="batch_objects", kind="object_error", uuids={objs[3].uuid, objs[7].uuid}, message="disk full")

    result = coll.data.insert_many(objs)

    assert result.has_errors and sorted(result.errors) == [3, 7]
    assert all("disk full" in e.message for e in result.errors.values())
    stored = {str(o.uuid) for i, o in enumerate(objs) if i not in (3, 7)}
    assert set(emu.objects("Docs")) == stored
    assert {str(u) for u in result.uuids.values()} == stored


def test_random_object_errors_are_reproducible_by_seed() -> None:
    def failed_indexes(seed: int) -> list[int]:
        with WeaviateEmulator(seed=seed) as emu:
            c = connect(emu)
            try:
                coll = create_docs(c)
                emu.faults.add(op="batch_objects", kind="object_error", rate=0.3)
                zeros = np.zeros(DIM, np.float32) + 1
                return sorted(coll.data.insert_many([doc(i, zeros) for i in range(40)]).errors)
            finally:
                c.close()

    first = failed_indexes(7)
    assert 0 < len(first) < 40
    assert failed_indexes(7) == first
    assert failed_indexes(8) != first


def test_one_unavailable_batch_is_retried_by_the_client(client: weaviate.WeaviateClient, emu: WeaviateEmulator) -> None:
    coll = create_docs(client)
    fault = emu.faults.add(op="batch_objects", kind="unavailable", times=1)

    started = time.monotonic()
    insert_docs(coll, 5)

    assert [r.status for r in emu.calls("batch_objects")] == ["UNAVAILABLE", "OK"]
    assert fault.fired == 1
    assert len(emu.objects("Docs")) == 5
    assert time.monotonic() - started >= 1.0  # the client's own 1 s backoff, not ours
    first_body = emu.calls("batch_objects")[0].body
    assert first_body["objects"][0]["uuid"] == generate_uuid5("doc-0")


def test_a_stalled_search_times_out_and_is_not_retried(emu: WeaviateEmulator) -> None:
    c = connect(emu, query_timeout_s=1)
    try:
        coll = create_docs(c)
        insert_docs(coll, 3)
        emu.faults.add(op="search", kind="deadline", times=1, stall_s=5)
        started = time.monotonic()
        with pytest.raises(WeaviateQueryError):
            coll.query.fetch_objects()
        assert time.monotonic() - started < 4
        assert len(emu.calls("search")) == 1
        assert len(coll.query.fetch_objects().objects) == 3
    finally:
        c.close()


def test_rest_faults_surface_from_schema_calls(client: weaviate.WeaviateClient, emu: WeaviateEmulator) -> None:
    create_docs(client)
    emu.faults.add(op="schema_get", kind="500", times=1)
    with pytest.raises(UnexpectedStatusCodeError, match="500"):
        client.collections.exists("Docs")
    assert client.collections.exists("Docs")

    emu.faults.add(op="schema_get", kind="429", times=1, retry_after_s=3)
    with pytest.raises(UnexpectedStatusCodeError, match="429"):
        client.collections.get("Docs").config.get()
    last = emu.calls("schema_get")[-1]
    assert (last.status, last.fault) == (429, "429")


def test_set_down_fails_every_call_until_restored(client: weaviate.WeaviateClient, emu: WeaviateEmulator) -> None:
    coll = create_docs(client)
    insert_docs(coll, 4)

    emu.set_down(True)
    assert not client.is_ready()
    assert not client.is_live()
    with pytest.raises(UnexpectedStatusCodeError, match="503"):
        client.collections.exists("Docs")
    with pytest.raises(WeaviateDeleteManyError, match="UNAVAILABLE"):
        coll.data.delete_many(where=Filter.by_property("n").equal(1))

    emu.set_down(False)
    assert client.is_ready()
    assert coll.aggregate.over_all(total_count=True).total_count == 4  # nothing applied while down


def test_api_key_is_required_on_rest_and_grpc() -> None:
    with WeaviateEmulator(api_key="s3cret") as emu:
        with pytest.raises(UnexpectedStatusCodeError, match="401"):
            connect(emu)
        with pytest.raises(UnexpectedStatusCodeError, match="401"):
            connect(emu, api_key="wrong")
        c = connect(emu, api_key="s3cret")
        try:
            coll = create_docs(c)
            insert_docs(coll, 2)
            assert len(coll.query.fetch_objects().objects) == 2
            grpc_calls = [r for r in emu.requests if r.transport == "grpc"]
            assert grpc_calls and all(r.headers.get("authorization") == "Bearer s3cret" for r in grpc_calls)
            assert all(r.status == "OK" for r in grpc_calls)

            emu.api_key = "rotated"  # the server's key changes under a connected client
            with pytest.raises(WeaviateQueryError, match="unauthenticated"):
                coll.query.fetch_objects()
            assert emu.calls("search")[-1].status == "UNAUTHENTICATED"
        finally:
            c.close()


def test_stop_releases_the_ports() -> None:
    emu = WeaviateEmulator().start()
    port = emu.http_port
    c = connect(emu)
    c.close()
    emu.stop()
    with pytest.raises(Exception):
        weaviate.connect_to_custom(
            http_host="127.0.0.1", http_port=port, http_secure=False,
            grpc_host="127.0.0.1", grpc_port=emu.grpc_port, grpc_secure=False, skip_init_checks=True,
        )
