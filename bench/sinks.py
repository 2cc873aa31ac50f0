"""Sink write throughput into the loopback emulators.

    .venv/bin/python -m bench.sinks --records 5000 --dim 384 --parallel 1 8
    .venv/bin/python -m bench.sinks --sinks weaviate --parallel 1 2 4 --weaviate-batch 200

The emulator runs in its own process so it does not share the client's GIL. It is pure Python
(``json.loads`` plus per-value validation), so the numbers are a floor set by the emulator as
much as by the sink: they show the sink's splitting and parallelism at work, not what the real
service sustains (Pinecone documents ~100 upserts/s and 50 MB/s per namespace).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from typing import Any

import numpy as np


def _serve_pinecone(conn: Any, dim: int) -> None:
    from tests.emulators.pinecone import PineconeEmulator

    with PineconeEmulator(api_key="bench-key") as emu:
        emu.requests = _Discard()  # keep no decoded bodies: 5,000 vectors would be ~100 MB
        conn.send((emu.control_url, emu.create_index("bench", dim)))
        conn.recv()  # stop


class _Discard(list):
    def append(self, _item: Any) -> None:
        pass


def _records(n: int, dim: int, text_chars: int, seed: int = 0) -> list:
    from worker.ids import chunk_id, chunk_uuid
    from worker.records import VectorRecord

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    text = ("lorem ipsum dolor sit amet " * (text_chars // 27 + 1))[:text_chars]
    out = []
    for i in range(n):
        doc_id = f"bench:doc-{i // 10}"
        rid = chunk_id(doc_id, i % 10)
        out.append(VectorRecord(rid, chunk_uuid(rid), doc_id, vectors[i], {
            "doc_id": doc_id, "source": "bench", "collection": "bench/docs", "chunk_index": i % 10,
            "chunk_count": 10, "content_hash": f"{i:016x}", "text_hash": "t", "meta_hash": "m",
            "version": f"{i:020d}", "published_at": 1.7e9 + i, "title": "Bench", "url": "",
            "text": text, "extra": "{}"}))
    return out


def pinecone_throughput(records: int = 5000, dim: int = 384, parallel: int = 8, *,
                        text_chars: int = 1000) -> dict[str, Any]:
    """Upsert ``records`` vectors through :class:`PineconeSink`; vectors/s and what it took."""
    from worker.config import RetryConfig
    from worker.sinks.pinecone import PineconeSinkConfig
    from worker.sinks.pinecone import PineconeSink

    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    server = ctx.Process(target=_serve_pinecone, args=(theirs, dim), daemon=True)
    server.start()
    try:
        control_url, host = ours.recv()
        cfg = PineconeSinkConfig(api_key="bench-key", index="bench", index_host=host,
                                 controller_host=control_url, max_parallel_requests=parallel)
        sink = PineconeSink(cfg, RetryConfig())
        rows = _records(records, dim, text_chars)
        sink.upsert(rows[:10])  # warm the connections
        started = time.perf_counter()
        outcome = sink.upsert(rows)
        seconds = time.perf_counter() - started
        sink.close()
    finally:
        ours.send("stop")
        server.join(timeout=10)
    assert outcome.written == records and not outcome.rejected, outcome
    return {"sink": "pinecone", "records": records, "dim": dim, "parallel": parallel,
            "seconds": round(seconds, 3), "vectors_per_s": round(records / seconds, 1)}


def _serve_weaviate(conn: Any) -> None:
    from tests.emulators.weaviate import WeaviateEmulator

    with WeaviateEmulator() as emu:
        emu.requests = _Discard()  # keep no decoded bodies (vectors as base64 in every record)
        conn.send((emu.url, emu.grpc_port))
        conn.recv()  # stop


def weaviate_throughput(records: int = 5000, dim: int = 384, parallel: int = 2, *,
                        batch_objects: int = 200, text_chars: int = 1000) -> dict[str, Any]:
    """Insert ``records`` vectors through :class:`WeaviateSink` (gRPC ``insert_many`` slices)."""
    from worker.config import RetryConfig
    from worker.sinks.weaviate import WeaviateSinkConfig
    from worker.sinks.weaviate import WeaviateSink

    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    server = ctx.Process(target=_serve_weaviate, args=(theirs,), daemon=True)
    server.start()
    try:
        url, grpc_port = ours.recv()
        cfg = WeaviateSinkConfig(url=url, grpc_port=grpc_port, collection="Bench",
                                 batch_objects=batch_objects, max_parallel_requests=parallel)
        sink = WeaviateSink(cfg, RetryConfig())
        sink.ensure(dim, "cosine")
        rows = _records(records, dim, text_chars)
        sink.upsert(rows[:10])  # warm the connections
        started = time.perf_counter()
        outcome = sink.upsert(rows)
        seconds = time.perf_counter() - started
        count = sink.info().records
        sink.close()
    finally:
        ours.send("stop")
        server.join(timeout=10)
    assert outcome.written == records and not outcome.rejected and count == records, (outcome, count)
    return {"sink": "weaviate", "records": records, "dim": dim, "parallel": parallel,
            "batch_objects": batch_objects, "seconds": round(seconds, 3),
            "vectors_per_s": round(records / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--sinks", nargs="+", choices=["pinecone", "weaviate"],
                        default=["pinecone", "weaviate"])
    parser.add_argument("--weaviate-batch", type=int, default=200, help="objects per insert_many")
    args = parser.parse_args()
    for parallel in args.parallel:
        if "pinecone" in args.sinks:
            print(json.dumps(pinecone_throughput(args.records, args.dim, parallel)))
        if "weaviate" in args.sinks:
            print(json.dumps(weaviate_throughput(args.records, args.dim, parallel,
                                                 batch_objects=args.weaviate_batch)))


if __name__ == "__main__":
    main()
