"""The embedded local store: LanceDB, on disk under ``sinks.local.path``.

LanceDB is an embedded columnar vector database (Lance format): no server, versioned atomic
commits, k-NN with SQL-like prefilters. Upserts are ``merge_insert`` on ``id``, so writing the
same rows twice leaves exactly the same rows. Every write makes a new table version; the sink
compacts small fragments and drops old versions every ``compact_every`` writes so a long-running
worker's queries stay fast.

Crash safety: a LanceDB commit is atomic (manifest swap), so a crash leaves either the old or the
new version; the ledger is updated only after the write returns, so an interrupted write is
simply redone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from worker.configbase import RetryConfig, Strict
from worker.errors import SinkMismatch
from worker.records import QueryFilter, QueryHit, StoredDocument, VectorRecord
from worker.sinks.base import OnRetry, SinkInfo, SinkKind, UpsertOutcome, hit_from_metadata

log = logging.getLogger(__name__)

# Old table versions are dropped after this long: long enough for any in-flight query to finish.
_KEEP_VERSIONS = timedelta(minutes=2)
_STRINGS = ("id", "uuid", "doc_id", "source", "collection", "content_hash", "text_hash",
            "meta_hash", "version", "title", "url", "text", "extra")


def _schema(dimensions: int) -> pa.Schema:
    fields = [pa.field(n, pa.string()) for n in _STRINGS]
    fields += [pa.field("chunk_index", pa.int32()), pa.field("chunk_count", pa.int32()),
               pa.field("published_at", pa.float64()),
               pa.field("vector", pa.list_(pa.float32(), dimensions))]
    return pa.schema(fields)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def where_clause(where: QueryFilter) -> str | None:
    """A LanceDB SQL filter for the query filter (values quoted, never interpolated raw)."""
    parts = []
    if where.source:
        parts.append(f"source = {_quote(where.source)}")
    if where.collection:
        parts.append(f"collection = {_quote(where.collection)}")
    if where.doc_id:
        parts.append(f"doc_id = {_quote(where.doc_id)}")
    if where.published_after is not None:
        parts.append(f"published_at >= {float(where.published_after)!r}")
    if where.published_before is not None:
        parts.append(f"published_at < {float(where.published_before)!r}")
    return " AND ".join(parts) or None


class LocalSinkConfig(Strict):
    path: Path = Path("data/lancedb")
    table: str = "chunks"


class LocalSink:
    name = "local"

    @classmethod
    def from_config(cls, cfg: LocalSinkConfig, retry: RetryConfig, *,
                    on_retry: OnRetry | None = None) -> LocalSink:
        """Embedded: no network, so no retries (a failed commit surfaces to the loop)."""
        return cls(cfg.path, cfg.table)

    def __init__(self, path: Path, table: str = "chunks", *, compact_every: int = 200) -> None:
        import lancedb

        path.mkdir(parents=True, exist_ok=True)
        # Re-check the latest table version on every read: other processes (workers sharing
        # this path) commit too, and the version guard must see their writes.
        self._db = lancedb.connect(str(path), read_consistency_interval=timedelta(0))
        self._path = path
        self.target = f"{path.resolve()}/{table}"
        self._table_name = table
        self._table = None
        self._dims: int | None = None
        self._writes = 0
        self._compact_every = compact_every
        self._lock = threading.Lock()  # LanceDB tables are safe to share, but commits serialize
        if table in self._db.list_tables().tables:
            self._table = self._db.open_table(table)
            self._dims = self._table.schema.field("vector").type.list_size

    # -- protocol ----------------------------------------------------------------------------
    def ensure(self, dimensions: int, metric: str) -> None:
        if metric != "cosine":
            raise SinkMismatch(f"local store supports cosine only, not {metric}")
        if self._table is None:
            self._table = self._db.create_table(self._table_name, schema=_schema(dimensions),
                                                exist_ok=True)
            self._dims = dimensions
        elif self._dims != dimensions:
            raise SinkMismatch(f"local store {self._path}/{self._table_name} holds {self._dims}-d "
                               f"vectors but the model makes {dimensions}-d ones; point "
                               "sinks.local.path elsewhere or run `memory-worker reindex` into a new path")

    def _rows(self, records: Sequence[VectorRecord]) -> pa.Table:
        cols: dict[str, list] = {n: [] for n in _STRINGS}
        ints: dict[str, list[int]] = {"chunk_index": [], "chunk_count": []}
        published: list[float] = []
        for r in records:
            m = r.metadata
            cols["id"].append(r.id)
            cols["uuid"].append(r.uuid)
            for n in _STRINGS[2:]:
                cols[n].append(str(m.get(n, "")))
            ints["chunk_index"].append(int(m["chunk_index"]))  # type: ignore[arg-type]
            ints["chunk_count"].append(int(m["chunk_count"]))  # type: ignore[arg-type]
            published.append(float(m["published_at"]))  # type: ignore[arg-type]
        matrix = np.stack([r.vector for r in records]).astype(np.float32, copy=False)
        vector = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), self._dims)
        arrays = [pa.array(cols[n], pa.string()) for n in _STRINGS]
        arrays += [pa.array(ints["chunk_index"], pa.int32()), pa.array(ints["chunk_count"], pa.int32()),
                   pa.array(published, pa.float64()), vector]
        return pa.Table.from_arrays(arrays, schema=_schema(self._dims))  # type: ignore[arg-type]

    def upsert(self, records: Sequence[VectorRecord]) -> UpsertOutcome:
        if not records:
            return UpsertOutcome()
        self._tbl()  # before ensure() there is no dimension to build rows with
        table = self._rows(records)
        with self._lock:
            (self._tbl().merge_insert("id").when_matched_update_all()
             .when_not_matched_insert_all().execute(table))
            self._after_write()
        return UpsertOutcome(written=len(records))

    def delete_document(self, doc_id: str) -> None:
        with self._lock:
            self._tbl().delete(f"doc_id = {_quote(doc_id)}")
            self._after_write()

    def delete_tail(self, doc_id: str, keep: int, previous_count: int) -> None:
        with self._lock:
            self._tbl().delete(f"doc_id = {_quote(doc_id)} AND chunk_index >= {int(keep)}")
            self._after_write()

    def fetch_documents(self, doc_ids: Sequence[str]) -> dict[str, StoredDocument]:
        if not doc_ids or self._table is None:
            return {}
        found: dict[str, StoredDocument] = {}
        cols = ["doc_id", "version", "chunk_count", "text_hash", "meta_hash"]
        for start in range(0, len(doc_ids), 500):
            ids = ", ".join(_quote(d) for d in doc_ids[start:start + 500])
            rows = (self._tbl().search().where(f"chunk_index = 0 AND doc_id IN ({ids})")
                    .select(cols).limit(None).to_arrow().to_pylist())
            for row in rows:
                found[row["doc_id"]] = StoredDocument(row["doc_id"], int(row["version"]),
                                                      row["chunk_count"], row["text_hash"],
                                                      row["meta_hash"])
        return found

    def query(self, vector: np.ndarray, k: int, where: QueryFilter) -> list[QueryHit]:
        if self._table is None:
            return []
        search = self._tbl().search(np.asarray(vector, dtype=np.float32)).distance_type("cosine")
        clause = where_clause(where)
        if clause:
            search = search.where(clause, prefilter=True)
        rows = search.limit(k).to_arrow().to_pylist()
        hits = []
        for row in rows:
            distance = row.pop("_distance")
            row.pop("vector", None)
            record_id = row.pop("id")
            row.pop("uuid", None)
            hits.append(hit_from_metadata(record_id, 1.0 - float(distance), row))
        return hits

    def rows(self) -> list[dict]:
        """Every row, sorted by id (vectors as lists): for tests and comparisons."""
        if self._table is None:
            return []
        rows = self._tbl().to_arrow().to_pylist()
        return sorted(rows, key=lambda r: r["id"])

    def info(self) -> SinkInfo:
        records = self._table.count_rows() if self._table is not None else 0
        return SinkInfo(self.name, True, f"{self._path}/{self._table_name}", self._dims, "cosine",
                        records)

    def close(self) -> None:
        self.optimize()

    # -- housekeeping ------------------------------------------------------------------------
    def optimize(self) -> None:
        if self._table is not None and self._writes:
            with self._lock:
                self._table.optimize(cleanup_older_than=_KEEP_VERSIONS)
                self._writes = 0

    def _after_write(self) -> None:
        self._writes += 1
        if self._writes >= self._compact_every:
            self._table.optimize(cleanup_older_than=_KEEP_VERSIONS)  # type: ignore[union-attr]
            self._writes = 0

    def _tbl(self):  # noqa: ANN202
        if self._table is None:
            raise SinkMismatch("local store used before ensure()")
        return self._table


KIND = SinkKind("local", LocalSinkConfig, LocalSink.from_config)
