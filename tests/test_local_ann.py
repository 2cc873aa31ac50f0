"""The local store's ANN vector index (worker/sinks/local.py): built past ``ann_min_rows``,
retrained as the table grows, and never changing what a filter or a delete means.

Synthetic clustered 32-d vectors; a threshold of 2,000 rows keeps every build under a second.
"""

from __future__ import annotations

import numpy as np
import pytest

from worker.fields import FieldSpec
from worker.ids import chunk_id, chunk_uuid
from worker.records import Condition, QueryFilter, SinkQuery, VectorRecord
from worker.sinks.local import LocalSink, LocalSinkConfig

DIM = 32
MIN_ROWS = 2000
FIELDS = {"labels": FieldSpec("labels", "string[]")}
CENTERS = np.random.default_rng(99).standard_normal((25, DIM))
LANCE_NAMES = {"IVF_SQ": "IvfSq", "IVF_HNSW_SQ": "IvfHnswSq", "IVF_PQ": "IvfPq", "IVF_FLAT": "IvfFlat"}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n: int, seed: int) -> np.ndarray:
    """A Gaussian mixture of 25 centers: near neighbours exist, as in real embeddings."""
    rng = np.random.default_rng(seed)
    center = CENTERS[rng.integers(0, len(CENTERS), n)]
    return unit(center + rng.standard_normal((n, DIM)) * 0.35)


def source_of(i: int) -> str:
    return "github" if i % 10 == 3 else ("gong" if i % 3 == 0 else "slack")


def labels_of(i: int) -> list[str]:
    return ["rare"] if i % 700 == 5 else (["bug"] if i % 4 == 0 else [])


def records(start: int, vectors: np.ndarray) -> list[VectorRecord]:
    """One chunk per document ``t:<i>``; source, labels and published_at follow from ``i``."""
    out = []
    for i, vector in zip(range(start, start + len(vectors)), vectors, strict=True):
        doc_id = f"t:{i}"
        rid = chunk_id(doc_id, 0)
        out.append(VectorRecord(rid, chunk_uuid(rid), doc_id, vector, {
            "doc_id": doc_id, "source": source_of(i), "collection": "c", "chunk_index": 0,
            "chunk_count": 1, "content_hash": f"h{i}", "text_hash": "t", "meta_hash": "m",
            "version": f"{1:020d}", "published_at": float(i), "title": "", "url": "",
            "text": f"row {i}", "labels": labels_of(i)}))
    return out


class Store:
    """A sink plus a copy of every vector it holds, for brute-force answers."""

    def __init__(self, path, *, compact_every: int = 200, **ann: object) -> None:
        cfg = LocalSinkConfig(path=path, ann_min_rows=MIN_ROWS, **ann)
        self.sink = LocalSink(path, compact_every=compact_every, ann=cfg)
        self.sink.declare_fields(FIELDS)
        self.sink.ensure(DIM, "cosine")
        self.vectors = np.empty((0, DIM), np.float32)

    def add(self, n: int, seed: int, batch: int = 500) -> None:
        new = clustered(n, seed)
        start = len(self.vectors)
        for at in range(0, n, batch):
            self.sink.upsert(records(start + at, new[at:at + batch]))
        self.vectors = np.concatenate([self.vectors, new])

    def search(self, vector: np.ndarray, k: int = 10, where: QueryFilter = QueryFilter()) -> list[str]:
        return [h.id for h in self.sink.search(SinkQuery(k=k, where=where, vector=vector)).hits]

    def brute_force(self, vector: np.ndarray, k: int = 10, keep=lambda i: True) -> list[str]:
        scores = self.vectors @ vector
        order = [i for i in np.argsort(-scores, kind="stable") if keep(int(i))]
        return [chunk_id(f"t:{i}", 0) for i in order[:k]]

    def vector_indices(self) -> list:
        return [ix for ix in self.sink._tbl().list_indices() if "vector" in ix.columns]


def queries(store: Store, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = store.vectors[rng.choice(len(store.vectors), n, replace=False)]
    return unit(picks + rng.standard_normal(picks.shape) * 0.05)


@pytest.fixture
def indexed(tmp_path):
    """2,500 rows and a built ANN index (the default kind)."""
    store = Store(tmp_path / "db")
    store.add(2500, seed=1)
    store.sink.maintain()
    assert store.sink.index_state()["ann"]
    yield store
    store.sink.close()


def test_no_index_below_the_threshold_and_one_past_it(tmp_path):
    store = Store(tmp_path / "db")
    store.add(MIN_ROWS - 100, seed=1)
    store.sink.maintain()
    assert store.sink.index_state()["ann"] is False
    assert store.vector_indices() == []
    store.add(300, seed=2)
    store.sink.maintain()
    state = store.sink.index_state()
    assert state["ann"] is True and state["ann_index"] == LocalSinkConfig().ann_index
    assert state["ann_trained_rows"] == MIN_ROWS + 200
    (index,) = store.vector_indices()
    assert index.index_type == LANCE_NAMES[state["ann_index"]]
    assert index.num_indexed_rows == MIN_ROWS + 200
    # a reopened store sees the index and does not rebuild it
    again = LocalSink(tmp_path / "db", ann=LocalSinkConfig(path=tmp_path / "db", ann_min_rows=MIN_ROWS))
    assert again.index_state()["ann"] is True
    again.maintain()
    (same,) = [ix for ix in again._tbl().list_indices() if "vector" in ix.columns]
    assert same.index_uuid == index.index_uuid


def test_writes_alone_build_the_index_once_the_table_is_past_the_threshold(tmp_path):
    store = Store(tmp_path / "db", compact_every=3)  # maintain() runs every third write
    store.add(MIN_ROWS + 500, seed=1, batch=250)  # 10 writes
    assert store.sink.index_state()["ann"] is True
    assert len(store.vector_indices()) == 1


@pytest.mark.parametrize("kind", ["IVF_HNSW_SQ", "IVF_SQ"])
def test_the_index_is_retrained_as_the_table_grows_and_new_rows_are_found_meanwhile(tmp_path, kind):
    store = Store(tmp_path / "db", ann_index=kind, ann_retrain_growth=2.0)
    store.add(2500, seed=1)
    store.sink.maintain()
    first = store.sink.index_state()
    assert first["ann_trained_rows"] == 2500 and first["ann_index"] == kind
    # rows written after the build are searched too: each one's own vector finds it first
    store.add(1500, seed=2)
    store.sink.maintain()  # 4,000 < 2 × 2,500: no retrain yet
    assert store.sink.index_state()["ann_trained_rows"] == 2500
    for i in (2500, 3100, 3999):
        assert store.search(store.vectors[i], k=3)[0] == f"t:{i}#0"
    store.add(1200, seed=3)
    store.sink.maintain()  # 5,200 ≥ 5,000: retrained on every row
    assert store.sink.index_state()["ann_trained_rows"] == 5200
    (index,) = store.vector_indices()
    assert index.num_indexed_rows == 5200 and index.num_unindexed_rows == 0
    for i in (10, 4100, 5199):
        assert store.search(store.vectors[i], k=3)[0] == f"t:{i}#0"


FILTERS = {
    "source = github (10 %)": (QueryFilter(source="github"), lambda i: source_of(i) == "github"),
    "labels ∋ bug (25 %)": (QueryFilter(where=(Condition("labels", "string[]", "eq", "bug"),)),
                           lambda i: "bug" in labels_of(i)),
    "published_at < 300 (12 %)": (QueryFilter(published_before=300.0), lambda i: i < 300),
    "labels ∋ rare (4 rows)": (QueryFilter(where=(Condition("labels", "string[]", "eq", "rare"),)),
                               lambda i: "rare" in labels_of(i)),
}


@pytest.mark.parametrize("exact_max_rows", [0, 1000])
@pytest.mark.parametrize("name", list(FILTERS))
def test_filtered_results_meet_the_filter_exactly(tmp_path, name, exact_max_rows):
    """Through the index (``ann_exact_max_rows`` 0) and through the exact path for selective
    filters: every hit meets the filter, and nearly all of the true filtered top 10 come back."""
    store = Store(tmp_path / "db", ann_exact_max_rows=exact_max_rows)
    store.add(2500, seed=1)
    store.sink.maintain()
    assert store.sink.index_state()["ann"]
    where, keep = FILTERS[name]
    found = wanted = 0
    for q in queries(store, 20, seed=7):
        hits = store.sink.search(SinkQuery(k=10, where=where, vector=q)).hits
        assert all(keep(int(h.doc_id.split(":")[1])) for h in hits), name
        truth = store.brute_force(q, 10, keep)
        assert len(hits) == len(truth)
        found += len({h.id for h in hits} & set(truth))
        wanted += len(truth)
    assert found / wanted >= 0.9, (name, found / wanted)


def test_a_filter_matching_a_handful_of_rows_gives_the_brute_force_answer(indexed):
    """Four rows carry ``rare``: whatever the index probes, the answer is those four, ranked."""
    where, keep = FILTERS["labels ∋ rare (4 rows)"]
    for q in queries(indexed, 10, seed=3):
        truth = indexed.brute_force(q, 10, keep)
        assert len(truth) == 4
        assert indexed.search(q, 10, where) == truth


def test_deletes_are_honoured_with_the_index(indexed):
    target = 1234
    q = indexed.vectors[target]
    assert indexed.search(q, 5)[0] == f"t:{target}#0"
    indexed.sink.delete_document(f"t:{target}")
    after = indexed.search(q, 5)
    assert f"t:{target}#0" not in after and len(after) == 5
    truth = indexed.brute_force(q, 5, keep=lambda i: i != target)
    assert after[0] == truth[0] and len(set(after) & set(truth)) >= 4  # (SQ may swap near ties)
    # and through the exact path of a selective filter
    rare = [i for i in range(2500) if "rare" in labels_of(i)]
    indexed.sink.delete_document(f"t:{rare[0]}")
    where, _ = FILTERS["labels ∋ rare (4 rows)"]
    assert sorted(indexed.search(q, 10, where)) == sorted(f"t:{i}#0" for i in rare[1:])


def test_recall_at_10_against_brute_force_is_high(indexed):
    found = 0
    qs = queries(indexed, 50, seed=5)
    for q in qs:
        found += len(set(indexed.search(q, 10)) & set(indexed.brute_force(q, 10)))
    assert found / (10 * len(qs)) >= 0.9


def test_a_write_between_the_exact_paths_reads_still_gives_the_exact_answer(indexed, monkeypatch):
    """The exact path scores rows by address and then takes the top k; if a write hid one of
    them in between (simulated: the take finds none), it answers from one scan instead."""
    where, keep = FILTERS["labels ∋ rare (4 rows)"]
    table = indexed.sink._tbl()
    real_take = table.take_row_ids
    monkeypatch.setattr(table, "take_row_ids", lambda ids: real_take([]))
    q = queries(indexed, 1, seed=11)[0]
    hits = indexed.sink.search(SinkQuery(k=10, where=where, vector=q)).hits
    assert [h.id for h in hits] == indexed.brute_force(q, 10, keep)
    assert hits[0].text.startswith("row ") and hits[0].metadata["labels"] == ["rare"]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
