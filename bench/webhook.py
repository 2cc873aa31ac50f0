"""The webhook worker end to end: accept latency, freshness, sustained throughput, query latency.

    .venv/bin/python bench/webhook.py                          # ~10 minutes on 2 cores
    .venv/bin/python bench/webhook.py --compare-pass-bytes     # + the pass-size before/after
    .venv/bin/python bench/webhook.py --scale 20 --window-s 60 --queries 30   # a quick look

Everything talks to a real ``memory-worker run`` subprocess over HTTP, the way Estuary and
AI Memory V2 do (serial requests, TCP_NODELAY like Go's client). Phases:

1. **Accept** (fresh state dir, local store): the sample stream scaled ``--scale`` times
   (``examples/generate_stream.py``) is posted per collection as a backfill, in requests cut at
   ~1 MiB like the webhook connector's, and the time to each 200 is measured twice:
   * *idle pipeline*: a worker whose sink loop sleeps (``spool.poll_interval_s`` = 1 h), so the
     number is the webhook's own cost (read, parse, validate, fsync);
   * *during ingest*: a fresh worker whose sink loop embeds the backlog on the same cores.
2. **Ingest** (that second worker): sustained documents/s and chunks/s are delivered documents
   (from the confirmed spool position) and written vectors (``/metrics``) over ``--window-s``
   (or until the backlog is delivered), with the share of that time spent in the model.
3. **Freshness** (a new, idle worker): one-message requests whose ``_meta.uuid`` time is *now*;
   publish → queryable is measured by the client (post, then poll ``/estuary/status`` until the
   entry is confirmed by the sink, which happens only after the store committed the write).
   The end-to-end lag histogram in ``/metrics`` (same documents) is reported as a cross-check.
4. **Query at --query-chunks** (default 100k): a LanceDB store of random normalized 384-d
   vectors with realistic metadata is built through ``LocalSink``; ``LocalSink.query`` is timed
   directly (the store alone) and ``POST /query`` against a worker serving that store (query
   embedding + store + JSON + HTTP).

Freshness and query run per config variant: the default; ``embedding.max_wait_ms: 0`` (what a
flush-when-idle engine would give a lone request); and that plus ``embedding.cpu_threads: 1``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

COLLECTIONS = {
    "sophia-ai/gong-calls-enriched": ("gong-calls-enriched.jsonl", "gong_call"),
    "sophia-ai/slack-messages-enriched": ("slack-messages-enriched.jsonl", "slack_message"),
    "sophia-ai/github-enriched": ("github-enriched.json", "github_document"),
}
SLACK = "sophia-ai/slack-messages-enriched"
REQUEST_BYTES = 1024 * 1024  # the webhook connector's cut-off
WEBHOOK_TOKEN, QUERY_TOKEN = "bench-webhook", "bench-query"
_GREGORIAN_TO_UNIX_TICKS = 0x01B21DD213814000


# -- helpers -------------------------------------------------------------------------------------

def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (ms in, ms out)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def ms(seconds: list[float]) -> list[float]:
    return [s * 1000 for s in seconds]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def flow_uuid(unix_s: float) -> str:
    ticks = round(unix_s * 10_000_000) + _GREGORIAN_TO_UNIX_TICKS
    return str(uuid.UUID(fields=(ticks & 0xFFFFFFFF, (ticks >> 32) & 0xFFFF,
                                 ((ticks >> 48) & 0x0FFF) | 0x1000, 0x80, 0, 0x0242AC120002)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_docs(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return orjson.loads(path.read_bytes())


def backfill_requests(stream: Path) -> list[tuple[str, bytes, int]]:
    """(collection, body, documents): each collection in order, cut like the connector does
    (the size check runs before appending, so a body may pass 1 MiB by one document)."""
    out = []
    for collection, (name, _) in COLLECTIONS.items():
        parts: list[bytes] = []
        size = 0
        for doc in load_docs(stream / name):
            if parts and size >= REQUEST_BYTES:
                out.append((collection, b"[" + b",".join(parts) + b"]", len(parts)))
                parts, size = [], 0
            raw = orjson.dumps(doc)
            parts.append(raw)
            size += len(raw) + 1
        if parts:
            out.append((collection, b"[" + b",".join(parts) + b"]", len(parts)))
    return out


# -- the worker as a subprocess -----------------------------------------------------------------

class Worker:
    def __init__(self, root: Path, *, store: Path, embedding: dict[str, Any],
                 spool: dict[str, Any] | None = None, pass_max_bytes: int | None = None,
                 server: dict[str, Any] | None = None, tree: Path | None = None) -> None:
        """``tree``: run another checkout's worker (for before/after benches); default this one."""
        self.root = root
        tree = tree or REPO
        # Trees from before the admin listener serve status and metrics on the public port.
        has_admin = "admin_port" in (tree / "worker" / "config.py").read_text()
        self.port = free_port()
        self.admin_port = free_port() if has_admin else self.port
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "worker.yaml"
        self.config.write_text(yaml.safe_dump({
            "model": "all-minilm-l6-v2", "models_dir": str(tree / "models"),
            "state_dir": str(root / "state"),
            "bindings": [{"collection": c, "preset": p} for c, (_, p) in COLLECTIONS.items()],
            "embedding": embedding,
            "server": {"host": "127.0.0.1", "port": self.port,
                       **({"admin_port": self.admin_port} if has_admin else {}),
                       "webhook_token": WEBHOOK_TOKEN,
                       "query_token": QUERY_TOKEN, "shutdown_timeout_s": 60, **(server or {})},
            "spool": spool or {},
            "sinks": {"local": {"path": str(store)}},
            "log_level": "warning",
        }))
        # Go's net/http (Estuary) sets TCP_NODELAY; without it, Nagle adds ~40 ms per request.
        transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", transport=transport,
                                 timeout=600)
        self.admin = httpx.Client(base_url=f"http://127.0.0.1:{self.admin_port}", timeout=600)
        self.log = (root / "worker.log").open("ab")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(tree)}
        command = [sys.executable, "-m", "worker.cli", "run", "--config", str(self.config)]
        if pass_max_bytes is not None:  # only for the before/after comparison of the pass bound
            command = [sys.executable, "-c", "import sys, worker.delivery as s; from worker.cli import main; "
                       f"s.PASS_MAX_BYTES = {pass_max_bytes}; sys.exit(main(sys.argv[1:]))", *command[3:]]
        self.proc = subprocess.Popen(command, cwd=tree, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"worker exited; see {root / 'worker.log'}")
            try:
                if self.http.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("worker did not start in 300 s")
            time.sleep(0.1)

    def post(self, collection: str, body: bytes) -> httpx.Response:
        return self.http.post(f"/estuary/webhook/{collection}", content=body,
                              headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}",
                                       "Content-Type": "application/json"})

    def status(self) -> dict[str, Any]:
        return self.admin.get("/estuary/status").json()

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in self.admin.get("/metrics").text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.http.close()
        self.admin.close()
        self.log.close()


# -- phases --------------------------------------------------------------------------------------

def post_all(worker: Worker, requests: list[tuple[str, bytes, int]]) -> tuple[dict[int, int], dict[str, Any]]:
    """Post serially, as the connector does; returns ({seq: documents}, accept latency stats)."""
    docs_by_seq: dict[int, int] = {}
    accept, accept_1mib = [], []
    for collection, body, _ in requests:
        t = time.perf_counter()
        r = worker.post(collection, body)
        elapsed = time.perf_counter() - t
        while r.status_code == 503:  # spool over budget: wait like Estuary would
            time.sleep(float(r.headers.get("Retry-After", "1")))
            t = time.perf_counter()
            r = worker.post(collection, body)
            elapsed = time.perf_counter() - t
        r.raise_for_status()
        accept.append(elapsed)
        if len(body) >= REQUEST_BYTES // 2:
            accept_1mib.append(elapsed)
        if r.json()["seq"] is not None:
            docs_by_seq[r.json()["seq"]] = r.json()["accepted"]
    return docs_by_seq, {
        "accept_ms_p50": round(pct(ms(accept), 50), 1), "accept_ms_p99": round(pct(ms(accept), 99), 1),
        "accept_1mib_n": len(accept_1mib),
        "accept_1mib_ms_p50": round(pct(ms(accept_1mib), 50), 1) if accept_1mib else None,
        "accept_1mib_ms_p99": round(pct(ms(accept_1mib), 99), 1) if accept_1mib else None,
        "accept_1mib_ms_max": round(max(ms(accept_1mib)), 1) if accept_1mib else None,
    }


def accept_idle(root: Path, requests: list[tuple[str, bytes, int]], embedding: dict[str, Any]) -> dict[str, Any]:
    """The webhook alone: a worker whose sink loop sleeps (spool.poll_interval_s = 1 h), so no
    pipeline work shares the cores with intake while the same requests are posted."""
    worker = Worker(root, store=root / "lancedb", embedding=embedding, spool={"poll_interval_s": 3600})
    try:
        return post_all(worker, requests)[1]
    finally:
        worker.stop()


def ingest(worker: Worker, requests: list[tuple[str, bytes, int]], window_s: float) -> dict[str, Any]:
    """Post the backfill serially (the pipeline starts at once); then watch delivery for up to
    ``window_s``."""
    started = time.monotonic()
    base = worker.metrics()
    docs_by_seq, accepted = post_all(worker, requests)
    posted_s = time.monotonic() - started

    samples = []  # (t, documents delivered, vectors written)
    while True:
        now = time.monotonic()
        delivered_seq = worker.status()["sinks"]["local"]["delivered_seq"]
        written = worker.metrics().get('memory_worker_sink_upserts_total{sink="local"}', 0.0)
        delivered = sum(n for seq, n in docs_by_seq.items() if seq <= delivered_seq)
        samples.append((now - started, delivered, written - base.get('memory_worker_sink_upserts_total{sink="local"}', 0.0)))
        if delivered == sum(docs_by_seq.values()) or now - started > window_s:
            break
        time.sleep(1.0)
    m = worker.metrics()
    t_end, docs_done, chunks_done = samples[-1]
    embed_s = m.get("memory_worker_embedding_seconds_total", 0.0) - base.get("memory_worker_embedding_seconds_total", 0.0)
    return {
        "requests": len(requests), "bytes": sum(len(b) for _, b, _ in requests),
        "documents": sum(n for _, _, n in requests), "posted_s": round(posted_s, 2), **accepted,
        "window_s": round(t_end, 1), "documents_delivered": docs_done, "chunks_written": int(chunks_done),
        "documents_per_s": round(docs_done / t_end, 2), "chunks_per_s": round(chunks_done / t_end, 2),
        "embedding_s": round(embed_s, 1), "embedding_share": round(embed_s / t_end, 2) if t_end else None,
        "all_delivered": docs_done == sum(docs_by_seq.values()),
    }


def freshness(worker: Worker, samples: int) -> dict[str, Any]:
    """Publish → confirmed in the store, one fresh message per request, idle worker."""
    seen = []
    for i in range(samples):
        published = time.time()
        doc = {"_meta": {"uuid": flow_uuid(published), "op": "c"}, "channel_id": "CBENCH",
               "ts": f"{published:.6f}", "channel_name": "bench", "user_name": "bench",
               "text": f"freshness probe {i}: Acme asked about the renewal quote and SOC 2 report"}
        seq = worker.post(SLACK, orjson.dumps([doc])).json()["seq"]
        while worker.status()["sinks"]["local"]["delivered_seq"] < seq:
            time.sleep(0.002)
        seen.append(time.time() - published)
        time.sleep(0.05)  # let the loop go idle again, like a trickle of CDC events
    buckets = {k: v for k, v in worker.metrics().items()
               if k.startswith("memory_worker_end_to_end_lag_seconds_bucket")}
    return {"samples": samples, "freshness_ms_p50": round(pct(ms(seen), 50), 1),
            "freshness_ms_p95": round(pct(ms(seen), 95), 1), "freshness_ms_max": round(max(ms(seen)), 1),
            "histogram_p50_le_s": histogram_quantile(buckets, 0.5),
            "histogram_p95_le_s": histogram_quantile(buckets, 0.95)}


def histogram_quantile(buckets: dict[str, float], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (what a dashboard would show)."""
    bounds = sorted((float(k.split('le="')[1].split('"')[0]), v) for k, v in buckets.items())
    if not bounds or bounds[-1][1] == 0:
        return None
    for le, count in bounds:
        if count >= q * bounds[-1][1]:
            return le
    return None


def build_store(path: Path, chunks: int, dims: int = 384, seed: int = 0) -> float:
    """``chunks`` rows of random unit vectors and realistic metadata, through LocalSink."""
    from worker.ids import chunk_id, chunk_uuid
    from worker.records import VectorRecord
    from worker.sinks.local import LocalSink

    rng = np.random.default_rng(seed)
    words = ("Acme renewal pricing quote SOC 2 report security review latency webhook spool retry "
             "thread transcript issue pull request deploy rollback incident customer churn seats "
             "contract legal procurement onboarding migration dashboard alert").split()
    sink = LocalSink(path)
    sink.ensure(dims, "cosine")
    started = time.perf_counter()
    batch = 10_000
    for start in range(0, chunks, batch):
        n = min(batch, chunks - start)
        vectors = rng.standard_normal((n, dims)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        picks = rng.integers(0, len(words), size=(n, 140))
        records = []
        for j in range(n):
            i = start + j
            source = ("gong", "slack", "github")[i % 3]
            count = 8 if source != "slack" else 1
            doc_id = f"{source}:bench-{i // count}"
            rid = chunk_id(doc_id, i % count)
            records.append(VectorRecord(rid, chunk_uuid(rid), doc_id, vectors[j], {
                "doc_id": doc_id, "source": source, "collection": f"sophia-ai/{source}-bench",
                "chunk_index": i % count, "chunk_count": count, "content_hash": f"{i:032x}",
                "text_hash": f"{i // count:032x}", "meta_hash": "0" * 32, "version": f"{i:020d}",
                "published_at": 1.75e9 + i * 300.0, "title": f"Bench document {i // count}",
                "url": f"https://example.com/{doc_id}", "text": " ".join(words[k] for k in picks[j]),
                "extra": '{"account_name": "Acme Corp", "topics": ["pricing", "renewal"]}'}))
        sink.upsert(records)
    sink.optimize()
    sink.close()
    return time.perf_counter() - started


def query_store_direct(path: Path, n: int) -> dict[str, Any]:
    from worker.records import QueryFilter
    from worker.sinks.local import LocalSink

    sink = LocalSink(path)
    rng = np.random.default_rng(1)
    out = {"rows": sink.info().records}
    for label, where in (("none", QueryFilter()), ("source", QueryFilter(source="slack")),
                         ("source+after", QueryFilter(source="gong", published_after=1.75e9 + 50_000 * 300))):
        times = []
        for _ in range(n + 5):
            q = rng.standard_normal(384).astype(np.float32)
            q /= np.linalg.norm(q)
            t = time.perf_counter()
            sink.query(q, 10, where)
            times.append(time.perf_counter() - t)
        times = ms(times[5:])  # the first few warm the page cache
        out[f"direct_{label}_ms_p50"] = round(pct(times, 50), 1)
        out[f"direct_{label}_ms_p95"] = round(pct(times, 95), 1)
    sink.close()
    return out


def query_http(worker: Worker, n: int) -> dict[str, Any]:
    texts = ["Acme renewal pricing quote", "SOC 2 report before signing", "webhook retries and latency",
             "who owns the incident rollback", "seats in the 3-year contract"]
    out = {}
    for label, flt in (("none", None), ("source+after", {"source": "gong", "published_after": 1.75e9 + 50_000 * 300})):
        times = []
        for i in range(n + 5):
            payload: dict[str, Any] = {"text": texts[i % len(texts)], "k": 10}
            if flt:
                payload["filter"] = flt
            t = time.perf_counter()
            r = worker.http.post("/query", json=payload, headers={"Authorization": f"Bearer {QUERY_TOKEN}"})
            times.append(time.perf_counter() - t)
            r.raise_for_status()
        times = ms(times[5:])
        out[f"http_{label}_ms_p50"] = round(pct(times, 50), 1)
        out[f"http_{label}_ms_p95"] = round(pct(times, 95), 1)
    return out


# -- main ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=int, default=100,
                   help="copies of the sample stream (default 100: ~68 MiB, ~65 requests of ~1 MiB)")
    p.add_argument("--window-s", type=float, default=180,
                   help="longest throughput window; the rest stays spooled (default 180)")
    p.add_argument("--freshness-samples", type=int, default=40)
    p.add_argument("--query-chunks", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--device", default="auto")
    p.add_argument("--cpu-threads", type=int, help="embedding.cpu_threads for the ingest phase")
    p.add_argument("--compare-pass-bytes", action="store_true",
                   help="also run ingest with the old unbounded sink pass (64 entries, any size)")
    p.add_argument("--skip", nargs="*", default=[], choices=["ingest", "freshness", "query"])
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="bench-webhook-"))
    results: dict[str, Any] = {"machine": {"nproc": os.cpu_count(), "cpu": cpu_model()}, "scale": args.scale}
    print(f"machine: nproc {os.cpu_count()}, {cpu_model()}; work dir {root}", flush=True)

    if "ingest" not in args.skip:
        stream = root / "stream"
        subprocess.run([sys.executable, str(REPO / "examples" / "generate_stream.py"), "--scale",
                        str(args.scale), "--out", str(stream)], check=True, stdout=subprocess.DEVNULL)
        requests = backfill_requests(stream)
        print(f"ingest: {len(requests)} requests, {sum(len(b) for _, b, _ in requests) / 2**20:.1f} MiB",
              flush=True)
        embedding = {"device": args.device, **({"cpu_threads": args.cpu_threads} if args.cpu_threads else {})}
        results["accept idle"] = accept_idle(root / "accept", requests, embedding)
        print("accept, idle pipeline", json.dumps(results["accept idle"]), flush=True)
        runs = {"ingest": None}
        if args.compare_pass_bytes:
            runs = {"ingest, unbounded pass (before)": 1 << 62, "ingest": None}
        for n, (label, pass_max_bytes) in enumerate(runs.items()):
            worker = Worker(root / f"ingest-{n}", store=root / f"ingest-{n}" / "lancedb", embedding=embedding,
                            pass_max_bytes=pass_max_bytes)
            try:
                results[label] = ingest(worker, requests, args.window_s)
            finally:
                worker.stop()
            print(label, json.dumps(results[label]), flush=True)

    # Each latency phase runs per variant: the default config; embedding.max_wait_ms = 0, which
    # is what a flush-when-idle engine would give a lone request; and that plus one intra-op
    # thread, which keeps OpenMP barriers out of the tail when the cores are shared.
    variants = {"default": {}, "max_wait_ms=0": {"max_wait_ms": 0},
                "max_wait_ms=0 cpu_threads=1": {"max_wait_ms": 0, "cpu_threads": 1}}
    if "freshness" not in args.skip:
        for n, (label, extra) in enumerate(variants.items()):
            worker = Worker(root / f"fresh-{n}", store=root / f"fresh-{n}" / "lancedb",
                            embedding={"device": args.device, **extra})
            try:
                results[f"freshness {label}"] = freshness(worker, args.freshness_samples)
            finally:
                worker.stop()
            print(label, json.dumps(results[f"freshness {label}"]), flush=True)

    if "query" not in args.skip:
        store = root / "query" / "lancedb"
        results["query"] = {"build_s": round(build_store(store, args.query_chunks), 1)}
        results["query"].update(query_store_direct(store, args.queries))
        for n, (label, extra) in enumerate(variants.items()):
            worker = Worker(root / f"query-{n}", store=store, embedding={"device": args.device, **extra})
            try:
                results["query"].update({f"{label}: {k}": v for k, v in query_http(worker, args.queries).items()})
            finally:
                worker.stop()
        print(json.dumps(results["query"]), flush=True)

    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
