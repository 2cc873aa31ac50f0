"""The Pinecone emulator, driven only through the real ``pinecone`` SDK 10.2.0.

These tests pin two things: that the emulator serves what the SDK expects (shapes, limits,
errors), and the SDK's own hidden behaviour the worker's sink must live with (retries that
``Pinecone(retry_config=...)`` does not reach, a per-host retry budget, Retry-After).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np
import pytest
from pinecone import Pinecone, RetryConfig, ServerlessSpec
from pinecone._internal import http_client as sdk_http
from pinecone._internal.bulk import get_registry as sdk_gate_registry
from pinecone.errors import (
    ApiError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    PineconeConnectionError,
    PineconeTimeoutError,
    RateLimitError,
    ServiceError,
    UnauthorizedError,
)

try:  # with `pythonpath = ["."]` in the pytest config
    from tests.emulators.pinecone import PineconeEmulator
except ModuleNotFoundError:  # rootdir-relative import when tests/ has no __init__.py
    from emulators.pinecone import PineconeEmulator  # type: ignore[no-redef]

DIM = 16


@pytest.fixture(autouse=True)
def fresh_sdk_retry_state():
    """The SDK's retry budget and bulk gate are process-global per hostname, and every
    emulator port shares 127.0.0.1: without a reset, faults in one test would switch off
    retries in the next."""
    sdk_http.get_budget_registry()._reset()
    sdk_gate_registry()._reset()
    yield
    sdk_http.get_budget_registry()._reset()
    sdk_gate_registry()._reset()


@pytest.fixture
def retry_sleeps(monkeypatch) -> list[float]:
    """Record the SDK's retry back-off sleeps instead of sleeping (the SDK's own seam)."""
    sleeps: list[float] = []
    monkeypatch.setattr(sdk_http, "_retry_sleep", sleeps.append)
    return sleeps


@pytest.fixture
def emu():
    with PineconeEmulator(api_key="test-key", seed=7) as emulator:
        yield emulator


@pytest.fixture
def pc(emu) -> Pinecone:
    return Pinecone(api_key="test-key", host=emu.control_url)


@pytest.fixture
def idx(emu, pc):
    return pc.Index(host=emu.create_index("docs", DIM, "cosine"))


def without_retries(index) -> Any:
    """Switch off the data-plane REST retries, which no public argument reaches (private)."""
    transport = index._http._client._transport
    transport._config = dataclasses.replace(transport._config, max_retries=0)
    return index


def unit(seed: int, n: int = 1, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


# --------------------------------------------------------------------------- control plane


def test_index_lifecycle_through_the_control_plane(emu, pc):
    started = time.monotonic()
    created = pc.create_index(
        "chunks",
        dimension=384,
        metric="dotproduct",
        spec=ServerlessSpec(cloud="aws", region="eu-west-1"),
    )
    assert time.monotonic() - started < 2.0  # ready at once: no 5 s poll
    assert created.host == emu.index_host("chunks")
    assert created.host.startswith("http://127.0.0.1:")
    create_body = emu.requests_for("create_index")[0].body
    assert create_body["schema"]["fields"]["_values"] == {
        "type": "dense_vector", "dimension": 384, "metric": "dotproduct"
    }

    described = pc.describe_index("chunks")
    assert (described.dimension, described.metric) == (384, "dotproduct")
    assert described.status.ready and described.spec.serverless.region == "eu-west-1"
    assert pc.has_index("chunks") and not pc.has_index("absent")
    assert [i.name for i in pc.list_indexes()] == ["chunks"]
    with pytest.raises(ConflictError):
        pc.create_index(
            "chunks", dimension=384, spec=ServerlessSpec(cloud="aws", region="us-east-1")
        )

    data = pc.Index(name="chunks")  # resolves the host by describe
    data.upsert(vectors=[("a", [1.0] * 384)])
    pc.delete_index("chunks")
    assert not pc.has_index("chunks")
    with pytest.raises(NotFoundError) as missing:
        pc.describe_index("chunks")
    assert missing.value.body == {
        "error": {"code": "NOT_FOUND", "message": "Resource chunks not found"}, "status": 404
    }
    with pytest.raises(NotFoundError):
        data.fetch(ids=["a"])
    assert [r.status for r in emu.requests_for("delete_index")] == [202]


def test_wrong_api_key_is_refused_on_both_planes(emu):
    host = emu.create_index("docs", DIM)
    intruder = Pinecone(api_key="not-the-key", host=emu.control_url)
    with pytest.raises(UnauthorizedError):
        intruder.list_indexes()
    with pytest.raises(UnauthorizedError):
        intruder.Index(host=host).upsert(vectors=[("a", unit(0)[0])])
    assert emu.vectors("docs") == {}
    assert [r.status for r in emu.requests] == [401, 401]


# --------------------------------------------------------------------------- data plane


def test_upsert_then_fetch_returns_what_was_written(emu, idx):
    ids = ["gong:call-1#0", "gong:call-1#1", "slack:C01/p 17?x=1&y=2#3"]
    values = unit(1, len(ids))
    idx.upsert(vectors=[(vid, values[i], {"doc": "gong:call-1", "n": i, "tags": ["x"], "ok": True})
                        for i, vid in enumerate(ids)])
    idx.upsert(vectors=[("gong:call-1#0", unit(2)[0])], namespace="other")

    fetched = idx.fetch(ids=ids + ["gong:call-1#9"])

    assert set(fetched.vectors) == set(ids)  # a missing id is simply absent
    for i, vid in enumerate(ids):
        assert fetched.vectors[vid].values == pytest.approx(values[i].tolist(), abs=0)
        metadata = fetched.vectors[vid].metadata
        assert metadata == {"doc": "gong:call-1", "n": float(i), "tags": ["x"], "ok": True}
        assert type(metadata["n"]) is float  # stored as float64, like the service
    assert emu.requests_for("fetch")[0].query["ids"] == ids + ["gong:call-1#9"]
    assert "namespace" not in emu.requests_for("upsert")[0].body  # default namespace is omitted
    assert idx.fetch(ids=["gong:call-1#0"], namespace="other").vectors["gong:call-1#0"].values == (
        pytest.approx(unit(2)[0].tolist(), abs=0)
    )
    assert set(emu.vectors("docs")) == set(ids)


CORPUS_SIZE = 240


def corpus_metadata(i: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "n": i,
        "kind": ("a", "b", "c")[i % 3],
        "tags": [f"t{i % 5}", f"t{(i + 1) % 5}"],
        "flag": i % 4 == 0,
    }
    if i % 7 == 0:
        metadata["rare"] = "yes"
    return metadata


# Each filter paired with an independent statement of what it should select.
FILTER_CASES: list[tuple[dict | None, Callable[[dict], bool]]] = [
    (None, lambda m: True),
    ({"kind": "a"}, lambda m: m["kind"] == "a"),
    ({"kind": {"$eq": "b"}}, lambda m: m["kind"] == "b"),
    ({"kind": {"$ne": "b"}}, lambda m: m["kind"] != "b"),
    ({"kind": {"$in": ["a", "c"]}}, lambda m: m["kind"] in ("a", "c")),
    ({"kind": {"$nin": ["a", "c"]}}, lambda m: m["kind"] not in ("a", "c")),
    ({"n": {"$gte": 50, "$lt": 120}}, lambda m: 50 <= m["n"] < 120),
    ({"n": {"$gt": 200}}, lambda m: m["n"] > 200),
    ({"n": {"$lte": 9}}, lambda m: m["n"] <= 9),
    ({"$and": [{"kind": "a"}, {"n": {"$gt": 100}}]}, lambda m: m["kind"] == "a" and m["n"] > 100),
    ({"$or": [{"kind": "b"}, {"n": {"$lte": 10}}]}, lambda m: m["kind"] == "b" or m["n"] <= 10),
    ({"tags": "t3"}, lambda m: "t3" in m["tags"]),
    ({"tags": {"$in": ["t0", "t1"]}}, lambda m: bool({"t0", "t1"} & set(m["tags"]))),
    ({"tags": {"$nin": ["t0"]}}, lambda m: "t0" not in m["tags"]),
    ({"flag": True}, lambda m: m["flag"] is True),
    ({"rare": {"$exists": True}}, lambda m: "rare" in m),
    ({"rare": {"$exists": False}, "kind": "c"}, lambda m: "rare" not in m and m["kind"] == "c"),
]


def brute_force(metric: str, matrix: np.ndarray, query: np.ndarray, keep: np.ndarray, k: int):
    if metric == "cosine":
        scores = matrix @ query / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
    elif metric == "dotproduct":
        scores = matrix @ query
    else:
        scores = ((matrix - query) ** 2).sum(axis=1)
    rows = np.flatnonzero(keep)
    ranking = scores[rows] if metric == "euclidean" else -scores[rows]
    best_first = rows[np.argsort(ranking, kind="stable")]
    return [f"v{r:04d}" for r in best_first[:k]], scores


@pytest.mark.parametrize("metric", ["cosine", "dotproduct", "euclidean"])
def test_query_returns_the_true_nearest_neighbours_under_filters(emu, pc, metric):
    index = pc.Index(host=emu.create_index(f"nn-{metric}", DIM, metric))
    matrix32 = unit(3, CORPUS_SIZE)
    index.upsert(
        vectors=[(f"v{i:04d}", matrix32[i], corpus_metadata(i)) for i in range(CORPUS_SIZE)]
    )
    matrix = matrix32.astype(np.float64)  # exactly what went over the wire
    metadata = [corpus_metadata(i) for i in range(CORPUS_SIZE)]
    query = unit(4)[0]

    for flt, selects in FILTER_CASES:
        keep = np.array([selects(m) for m in metadata])
        expected_ids, scores = brute_force(metric, matrix, query.astype(np.float64), keep, k=10)
        result = index.query(vector=query.tolist(), top_k=10, filter=flt, include_metadata=True)
        assert [m.id for m in result.matches] == expected_ids, flt
        for match in result.matches:
            assert match.score == pytest.approx(scores[int(match.id[1:])], rel=1e-9, abs=1e-9)
            assert selects(match.metadata), (flt, match.metadata)


def test_query_by_id_and_include_flags(idx):
    values = unit(5, 3)
    idx.upsert(vectors=[("a", values[0], {"k": "v"}), ("b", values[1]), ("c", values[2])])

    by_id = idx.query(id="b", top_k=3)
    assert by_id.matches[0].id == "b" and by_id.matches[0].score == pytest.approx(1.0)
    assert by_id.matches[0].values == [] and by_id.matches[0].metadata is None

    rich = idx.query(vector=values[0].tolist(), top_k=1, include_values=True, include_metadata=True)
    assert rich.matches[0].values == pytest.approx(values[0].tolist(), abs=0)
    assert rich.matches[0].metadata == {"k": "v"}
    assert idx.query(id="absent", top_k=3).matches == []


def test_list_pages_by_prefix_in_byte_order(emu, idx):
    vectors = unit(6, 1)[0]
    doc1 = [f"doc1#{i:04d}" for i in range(250)]
    idx.upsert(vectors=[(vid, vectors) for vid in reversed(doc1)])
    idx.upsert(vectors=[(f"doc10#{i}", vectors) for i in range(5)] + [("doc2#0", vectors)])

    pages = [[item.id for item in page.vectors] for page in idx.list(prefix="doc1#")]

    assert [len(p) for p in pages] == [100, 100, 50]
    assert [vid for p in pages for vid in p] == sorted(doc1)
    list_calls = emu.requests_for("list")
    assert [c.query.get("paginationToken") is None for c in list_calls] == [True, False, False]
    assert all(c.query["namespace"] == [""] for c in list_calls)  # list always sends namespace=

    first = idx.list_paginated(prefix="doc1", limit=7)
    assert [v.id for v in first.vectors] == sorted(doc1 + [f"doc10#{i}" for i in range(5)])[:7]
    assert first.pagination is not None and first.pagination.next
    last = idx.list_paginated(prefix="doc2")
    assert [v.id for v in last.vectors] == ["doc2#0"] and last.pagination is None


def test_delete_by_ids_by_filter_and_all(emu, idx):
    values = unit(7, 1)[0]
    idx.upsert(vectors=[(f"d1#{i}", values, {"doc": "d1"}) for i in range(3)]
               + [(f"d2#{i}", values, {"doc": "d2"}) for i in range(3)])
    idx.upsert(vectors=[("x", values)], namespace="ns")

    idx.delete(ids=["d1#0", "never-written"])
    assert sorted(emu.vectors("docs")) == ["d1#1", "d1#2", "d2#0", "d2#1", "d2#2"]
    assert emu.requests_for("delete")[0].body == {"namespace": "", "ids": ["d1#0", "never-written"]}

    idx.delete(filter={"doc": {"$eq": "d2"}})
    assert sorted(emu.vectors("docs")) == ["d1#1", "d1#2"]

    stats = idx.describe_index_stats()
    assert stats.total_vector_count == 3 and stats.dimension == DIM
    assert {ns: s.vector_count for ns, s in stats.namespaces.items()} == {"": 2, "ns": 1}

    idx.delete(delete_all=True, namespace="ns")
    assert emu.vectors("docs", "ns") == {} and len(emu.vectors("docs")) == 2


def test_update_merges_metadata_and_replaces_values(emu, idx):
    before, after = unit(8, 2)
    idx.upsert(vectors=[("a", before, {"doc": "d", "ver": 1})])

    idx.update(id="a", set_metadata={"ver": 2, "extra": "x"})
    idx.update(id="a", values=after.tolist())

    stored_values, stored_metadata = emu.vectors("docs")["a"]
    assert stored_metadata == {"doc": "d", "ver": 2.0, "extra": "x"}
    assert stored_values == pytest.approx(after.tolist(), abs=0)
    preview = idx.update(filter={"doc": "d"}, set_metadata={"ver": 3}, dry_run=True)
    assert preview.matched_records == 1 and emu.vectors("docs")["a"][1]["ver"] == 2.0


# --------------------------------------------------------------------------- hybrid (sparse-dense)


SPARSE_RECORDS = {
    # id: (dense, sparse or None)
    "a": ([1.0, 0.0, 0.0, 0.0], {"indices": [1, 7, 300], "values": [0.5, 2.0, 1.0]}),
    "b": ([0.0, 1.0, 0.0, 0.0], {"indices": [7], "values": [0.25]}),
    "c": ([0.5, 0.5, 0.5, 0.0], None),  # dense only: its sparse part scores 0
    "d": ([0.0, 0.0, 0.0, 1.0], {"indices": [4_294_967_295], "values": [3.0]}),  # the largest uint32
}


def sparse_dot(query: dict, record: dict | None) -> float:
    if record is None:
        return 0.0
    weights = dict(zip(record["indices"], record["values"]))
    return sum(v * weights.get(i, 0.0) for i, v in zip(query["indices"], query["values"]))


def test_hybrid_query_scores_dense_dot_plus_sparse_dot(emu, pc):
    model = pc.create_index("hybrid", dimension=4, metric="dotproduct", spec=ServerlessSpec(cloud="aws", region="us-east-1"))
    assert pc.describe_index("hybrid").metric == "dotproduct"
    index = pc.Index(host=model.host)
    index.upsert(vectors=[
        {"id": vid, "values": dense, **({"sparse_values": sparse} if sparse else {}), "metadata": {"kind": vid}}
        for vid, (dense, sparse) in SPARSE_RECORDS.items()
    ])
    assert emu.requests_for("upsert")[0].body["vectors"][0]["sparseValues"] == SPARSE_RECORDS["a"][1]

    dense_q = [0.2, 0.4, 0.1, 0.3]
    sparse_q = {"indices": [7, 300, 4_294_967_295, 9], "values": [1.0, 0.5, 0.1, 4.0]}
    want = {vid: float(np.dot(dense_q, dense)) + sparse_dot(sparse_q, sparse) for vid, (dense, sparse) in SPARSE_RECORDS.items()}
    res = index.query(vector=dense_q, sparse_vector=sparse_q, top_k=4, include_values=True)
    assert [m.id for m in res.matches] == sorted(want, key=lambda v: -want[v])
    assert {m.id: m.score for m in res.matches} == {v: pytest.approx(s, rel=1e-12) for v, s in want.items()}
    by_id = {m.id: m for m in res.matches}
    assert by_id["a"].sparse_values.indices == [1, 7, 300] and by_id["c"].sparse_values is None
    dense_only = index.query(vector=dense_q, top_k=4)  # the same index, dense part alone
    assert {m.id: m.score for m in dense_only.matches} == {
        v: pytest.approx(float(np.dot(dense_q, d)), rel=1e-12) for v, (d, _) in SPARSE_RECORDS.items()
    }

    fetched = index.fetch(ids=["a", "c"])
    assert fetched.vectors["a"].sparse_values.indices == [1, 7, 300]
    assert fetched.vectors["a"].sparse_values.values == [0.5, 2.0, 1.0]
    assert fetched.vectors["c"].sparse_values is None
    filtered = index.query(vector=dense_q, sparse_vector=sparse_q, top_k=4, filter={"kind": {"$in": ["b", "c"]}})
    assert [m.id for m in filtered.matches] == sorted(["b", "c"], key=lambda v: -want[v])

    keyword_only = index.query(vector=[0.0] * 4, sparse_vector=sparse_q, top_k=4)  # alpha 0: dense part zeroed
    assert {m.id: m.score for m in keyword_only.matches} == {
        v: pytest.approx(sparse_dot(sparse_q, sp), abs=1e-12) for v, (_, sp) in SPARSE_RECORDS.items()
    }
    with pytest.raises(ApiError):
        index.query(vector=[0.0] * 4, top_k=1)  # without a sparse part, a zero vector is refused

    index.update(id="c", sparse_values={"indices": [9], "values": [1.0]})
    assert index.query(vector=dense_q, sparse_vector=sparse_q, top_k=1).matches[0].id == "c"  # 4.0 from index 9


def test_sparse_queries_need_a_dotproduct_index_and_a_dense_part(emu, pc, idx):
    sparse = {"indices": [3], "values": [1.0]}
    idx.upsert(vectors=[{"id": "a", "values": unit(30)[0].tolist(), "sparse_values": sparse}])  # stored on cosine
    assert idx.fetch(ids=["a"]).vectors["a"].sparse_values.indices == [3]
    with pytest.raises(ApiError) as refused:
        idx.query(vector=unit(31)[0].tolist(), sparse_vector=sparse, top_k=1)
    assert refused.value.status_code == 400 and refused.value.body["code"] == 3
    assert refused.value.body["message"].startswith("Index configuration does not support sparse values")

    hybrid = pc.Index(host=emu.create_index("hybrid", DIM, "dotproduct"))
    hybrid.upsert(vectors=[{"id": "a", "values": unit(30)[0].tolist(), "sparse_values": sparse}])
    with pytest.raises(ApiError) as sparse_only:
        hybrid.query(sparse_vector=sparse, top_k=1)  # the SDK lets it through; a dense index does not
    assert sparse_only.value.status_code == 400


def test_sparse_values_are_validated_before_anything_is_stored(emu, pc):
    index = pc.Index(host=emu.create_index("hybrid", DIM, "dotproduct"))
    dense = unit(32)[0].tolist()
    bad = {
        "empty": {"indices": [], "values": []},
        "duplicate index": {"indices": [4, 4], "values": [1.0, 2.0]},
        "index beyond uint32": {"indices": [2**32], "values": [1.0]},
        "negative index": {"indices": [-1], "values": [1.0]},
        "over 1000 non-zero values": {"indices": list(range(1_001)), "values": [0.5] * 1_001},
    }
    for reason, sparse in bad.items():
        with pytest.raises(ApiError) as rejected:
            index.upsert(vectors=[{"id": "ok", "values": dense}, {"id": "bad", "values": dense, "sparse_values": sparse}])
        assert rejected.value.status_code == 400, reason
    assert emu.vectors("hybrid") == {}
    with pytest.raises(ApiError, match="at least one value"):
        index.query(vector=dense, sparse_vector={"indices": [], "values": []}, top_k=1)

    index.upsert(vectors=[{"id": "max", "values": dense, "sparse_values": {"indices": list(range(1_000)), "values": [0.5] * 1_000}}])
    assert len(index.fetch(ids=["max"]).vectors["max"].sparse_values.indices) == 1_000


def test_list_metadata_and_numeric_ranges_filter_as_pinecone_does(emu, pc):
    index = pc.Index(host=emu.create_index("meta", DIM, "dotproduct"))
    records = {
        "r1": {"tags": ["gong", "call"], "published_at": 1_700_000_000, "lang": "en"},
        "r2": {"tags": ["slack"], "published_at": 1_700_000_500, "lang": "de"},
        "r3": {"tags": ["gong"], "published_at": 1_700_001_000, "lang": "en", "published": "1700000000"},
    }
    index.upsert(vectors=[(vid, unit(40 + i)[0], md) for i, (vid, md) in enumerate(records.items())])

    def ids_for(flt: dict) -> set[str]:
        return {m.id for m in index.query(vector=unit(50)[0].tolist(), top_k=10, filter=flt).matches}

    assert ids_for({"tags": {"$eq": "gong"}}) == {"r1", "r3"}  # a list matches if any element does
    assert ids_for({"tags": {"$in": ["call", "slack"]}}) == {"r1", "r2"}
    assert ids_for({"published_at": {"$gte": 1_700_000_500, "$lt": 1_700_001_000}}) == {"r2"}
    assert ids_for({"published_at": {"$gt": 1_700_000_000}}) == {"r2", "r3"}
    assert ids_for({"published_at": {"$lte": 1_700_000_000}}) == {"r1"}
    assert ids_for({"$and": [{"tags": "gong"}, {"lang": "en"}, {"published_at": {"$gt": 1_700_000_000}}]}) == {"r3"}
    assert ids_for({"$or": [{"lang": "de"}, {"published_at": {"$lte": 1_700_000_000}}]}) == {"r1", "r2"}
    assert ids_for({"published": {"$gte": 0}}) == set()  # a string never satisfies a numeric range
    with pytest.raises(ApiError) as refused:
        ids_for({"lang": {"$gt": "de"}})  # range operators take numbers only
    assert refused.value.status_code == 400
    assert refused.value.body["message"] == "the $gt operator must be followed by a number, got string instead"


# --------------------------------------------------------------------------- limits


def test_limits_are_enforced_with_the_data_plane_error_body(emu, pc, idx):
    ok = unit(9)[0]
    with pytest.raises(ApiError) as too_many:
        idx.upsert(vectors=[(f"v{i}", ok) for i in range(1_001)])
    assert too_many.value.status_code == 400 and too_many.value.body["code"] == 3

    wide = pc.Index(host=emu.create_index("wide", 384))
    with pytest.raises(PayloadTooLargeError):  # ~2.3 MB of 384-d float32 vectors, only 300 of them
        wide.upsert(vectors=[(f"w{i}", v) for i, v in enumerate(unit(10, 300, 384))])

    bad_records = {
        "metadata over 40 KB": ("m", ok, {"text": "x" * (40 * 1024)}),
        "null metadata": ("m", ok, {"gone": None}),
        "wrong dimension": ("m", unit(11, 1, DIM + 1)[0]),
        "all-zero vector": ("m", np.zeros(DIM, dtype=np.float32)),
    }
    for reason, record in bad_records.items():
        with pytest.raises(ApiError) as rejected:
            idx.upsert(vectors=[("fine", ok), record])
        assert rejected.value.status_code == 400, reason
        assert set(rejected.value.body) == {"code", "message", "details"}, reason

    idx.upsert(vectors=[("m", ok, {"text": "x" * (40 * 1024 - 20)})])  # just under 40 KB
    with pytest.raises(ApiError) as too_many_ids:
        idx.fetch(ids=[f"v{i}" for i in range(1_001)])
    assert too_many_ids.value.status_code == 400
    assert set(emu.vectors("docs")) == {"m"}  # a rejected batch stores nothing
    assert emu.vectors("wide") == {}


# --------------------------------------------------------------------------- faults and SDK retries


def test_429_is_retried_by_the_sdk_after_retry_after(emu, idx, retry_sleeps):
    emu.faults.add(op="upsert", kind="429", times=2, retry_after_s=1)

    idx.upsert(vectors=[("a", unit(12)[0])])

    attempts = emu.requests_for("upsert")
    assert [a.status for a in attempts] == [429, 429, 200]
    assert [a.fault for a in attempts] == ["429", "429", None]
    assert len(retry_sleeps) == 2 and all(1.0 <= s <= 1.5 for s in retry_sleeps)  # ra + U(0, ra/2)
    assert set(emu.vectors("docs")) == {"a"}


def test_persistent_429_surfaces_as_rate_limit_error_after_four_attempts(emu, idx, retry_sleeps):
    emu.faults.add(op="query", kind="429", times=10, retry_after_s=2, body_format="json")

    with pytest.raises(RateLimitError) as throttled:
        idx.query(vector=unit(13)[0].tolist(), top_k=1)

    assert throttled.value.retry_after == 2.0
    assert len(emu.requests_for("query")) == 4


def test_client_retry_config_does_not_reach_data_plane_rest(emu, retry_sleeps):
    pc = Pinecone(api_key="test-key", host=emu.control_url, retry_config=RetryConfig(max_retries=0))
    index = pc.Index(host=emu.create_index("docs", DIM))
    emu.faults.add(op="upsert", kind="503", times=1)

    index.upsert(vectors=[("a", unit(14)[0])])  # retried despite max_retries=0

    assert [a.status for a in emu.requests_for("upsert")] == [503, 200]
    emu.faults.add(op="list_indexes", kind="503", times=1)
    with pytest.raises(ServiceError):
        pc.list_indexes()  # the control plane does honour it


def test_drop_is_resent_by_default_and_raises_without_retries(emu, idx, retry_sleeps):
    emu.faults.add(op="upsert", kind="drop", times=1)
    idx.upsert(vectors=[("a", unit(15)[0])])  # the SDK re-sends a POST after a lost connection
    assert [a.status for a in emu.requests_for("upsert")] == [None, 200]

    emu.faults.add(op="upsert", kind="drop", times=1)
    with pytest.raises(PineconeConnectionError):
        without_retries(idx).upsert(vectors=[("b", unit(16)[0])])
    assert set(emu.vectors("docs")) == {"a"}


def test_stall_surfaces_as_timeout_within_the_per_call_timeout(emu, idx):
    emu.faults.add(op="upsert", kind="stall", times=1, stall_s=2)
    started = time.monotonic()

    with pytest.raises(PineconeTimeoutError):
        without_retries(idx).upsert(vectors=[("a", unit(17)[0])], timeout=0.3)

    assert time.monotonic() - started < 1.5
    assert [a.status for a in emu.requests_for("upsert")] == [None]
    assert emu.vectors("docs") == {}


def test_reject_ids_fails_every_batch_holding_the_bad_record(emu, idx):
    emu.faults.add(op="upsert", kind="reject_ids", ids={"a#1"}, message="bad record")
    batch = [(f"a#{i}", unit(18 + i)[0]) for i in range(3)]

    with pytest.raises(ApiError) as rejected:
        idx.upsert(vectors=batch)
    assert rejected.value.status_code == 400 and "bad record" in str(rejected.value)
    assert emu.vectors("docs") == {}

    idx.upsert(vectors=batch[:1])
    idx.upsert(vectors=batch[2:])
    with pytest.raises(ApiError):
        idx.upsert(vectors=batch[1:2])
    assert set(emu.vectors("docs")) == {"a#0", "a#2"}


def test_rate_faults_repeat_for_the_same_seed():
    def failures(seed: int) -> list[bool]:
        with PineconeEmulator(seed=seed) as emulator:
            emulator.faults.add(op="query", kind="500", rate=0.3)
            index = without_retries(
                Pinecone(api_key="test-key", host=emulator.control_url).Index(
                    host=emulator.create_index("docs", DIM)
                )
            )
            index.upsert(vectors=[("a", unit(21)[0])])
            outcome = []
            for _ in range(15):
                try:
                    index.query(id="a", top_k=1)
                    outcome.append(False)
                except ServiceError:
                    outcome.append(True)
            return outcome

    first = failures(seed=3)
    assert first == failures(seed=3)
    assert 0 < sum(first) < 15


# --------------------------------------------------------------------------- eventual consistency


def test_visibility_delay_hides_fresh_upserts_from_reads(emu, idx):
    emu.set_visibility_delay(0.3)
    values = unit(22)[0]
    idx.upsert(vectors=[("a", values)])

    assert idx.fetch(ids=["a"]).vectors == {}
    assert idx.query(vector=values.tolist(), top_k=1).matches == []
    assert idx.describe_index_stats().total_vector_count == 0
    assert set(emu.vectors("docs")) == {"a"} and emu.vectors("docs", visible_only=True) == {}

    time.sleep(0.35)
    assert set(idx.fetch(ids=["a"]).vectors) == {"a"}
    assert [v.id for page in idx.list() for v in page.vectors] == ["a"]
