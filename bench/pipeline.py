"""One pass for every sink, end to end: model rows per unique chunk and the cost of more sinks.

    .venv/bin/python bench/pipeline.py --json /tmp/bench_pipeline.json              # this tree
    .venv/bin/python bench/pipeline.py --before <git-rev> --json /tmp/bench_pipeline.json  # + old code

For each code tree (this one, and with ``--before`` the given revision checked out into a
temporary git worktree) and for one sink (local) and three sinks (local + the Pinecone and
Weaviate wire emulators of ``tests/emulators``): a real ``memory-worker run`` subprocess, a
fresh state dir, ``embedding.cache_max_entries: 0`` (so nothing but the pipeline's own structure
can avoid re-embedding). The Slack and GitHub collections of the sample stream
(``examples/generate_stream.py --scale``) are posted over HTTP in ~1 MiB requests; the clock
runs from the first post until every sink confirmed everything (``/estuary/status``). Reported:

* model rows (``memory_worker_chunks_embedded_total``) ÷ unique chunks (content hashes of every
  posted version, computed here with the worker's chunker): goal 1.00;
* chunks/s = unique chunks ÷ that time; three sinks ÷ one sink: goal ≥ 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.emulators.pinecone import PineconeEmulator  # noqa: E402
from tests.emulators.weaviate import WeaviateEmulator  # noqa: E402

COLLECTIONS = {
    "sophia-ai/slack-messages-enriched": ("slack-messages-enriched.jsonl", "slack_message"),
    "sophia-ai/github-enriched": ("github-enriched.json", "github_document"),
}
TOKEN = "bench-token"


def read_stream(folder: Path) -> dict[str, list[dict]]:
    out = {}
    for collection, (name, _) in COLLECTIONS.items():
        data = (folder / name).read_bytes()
        out[collection] = (orjson.loads(data) if name.endswith(".json")
                           else [orjson.loads(x) for x in data.splitlines() if x.strip()])
    return out


def unique_chunks(stream: dict[str, list[dict]]) -> int:
    from worker.chunk import Chunker
    from worker.config import BindingConfig
    from worker.documents import Binding
    from worker.embed import Embedder
    from worker.modelspec import load_spec

    spec = load_spec("all-minilm-l6-v2", models_dir=REPO / "models", env={})
    emb = Embedder(spec, device="cpu", env={})
    chunker = Chunker(emb.tokenizer, max_tokens=256, overlap_tokens=32, model_max_tokens=spec.max_seq_tokens,
                      cls_id=emb.info.cls_id, sep_id=emb.info.sep_id, prompt_ids=emb.info.passage_prompt_ids)
    hashes = set()
    for collection, raws in stream.items():
        binding = Binding(BindingConfig(collection=collection, preset=COLLECTIONS[collection][1]))
        docs = [binding.parse(r) for r in raws]
        hashes |= {c.content_hash for cd in chunker.chunk(docs) for c in cd.chunks}
    return len(hashes)


def requests_of(raws: list[dict], limit: int = 1 << 20) -> list[bytes]:
    """Cut like the webhook connector: a new request once a body passes ~1 MiB."""
    bodies, current, size = [], [], 2
    for raw in raws:
        encoded = orjson.dumps(raw)
        if current and size + len(encoded) > limit:
            bodies.append(b"[" + b",".join(current) + b"]")
            current, size = [], 2
        current.append(encoded)
        size += len(encoded) + 1
    if current:
        bodies.append(b"[" + b",".join(current) + b"]")
    return bodies


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def run_once(tree: Path, stream: dict[str, list[dict]], *, sinks: int, workdir: Path) -> dict[str, Any]:
    port = free_port()
    # Trees from before the admin listener serve status and metrics on the public port.
    admin = free_port() if "admin_port" in (tree / "worker" / "config.py").read_text() else None
    state = workdir / f"state-{sinks}"
    config: dict[str, Any] = {
        "model": "all-minilm-l6-v2", "models_dir": str(tree / "models"), "state_dir": str(state),
        "bindings": [{"collection": c, "preset": p} for c, (_, p) in COLLECTIONS.items()],
        "embedding": {"device": "cpu", "cache_max_entries": 0},
        "server": {"webhook_token": TOKEN, "query_token": TOKEN, "port": port, "host": "127.0.0.1",
                   **({"admin_port": admin} if admin else {})},
        "retry": {"max_attempts": 8, "initial_backoff_s": 0.05, "max_backoff_s": 0.5},
        "sinks": {"local": {"path": str(workdir / f"lancedb-{sinks}")}},
        "log_level": "warning",
    }
    with PineconeEmulator(seed=1) as pc, WeaviateEmulator(seed=1) as wv:
        if sinks == 3:
            host = pc.create_index("memory", 384, "cosine")
            config["sinks"]["pinecone"] = {"api_key": "test-key", "index": "memory", "index_host": host}
            config["sinks"]["weaviate"] = {"url": wv.url, "grpc_host": "127.0.0.1", "grpc_port": wv.grpc_port}
        path = workdir / f"worker-{sinks}.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        log = (workdir / f"worker-{sinks}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "run", "--config", str(path)],
                                cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        ops = httpx.Client(base_url=f"http://127.0.0.1:{admin or port}", timeout=120)
        try:
            while True:
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited: {(workdir / f'worker-{sinks}.log').read_text()[-3000:]}")
            started = time.perf_counter()
            for collection, raws in stream.items():
                for body in requests_of(raws):
                    r = http.post(f"/estuary/webhook/{collection}", content=body,
                                  headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
                    r.raise_for_status()
            while True:
                status = ops.get("/estuary/status").json()
                if all(s["behind_entries"] == 0 for s in status["sinks"].values()):
                    break
                time.sleep(0.1)
            elapsed = time.perf_counter() - started
            rows = metric(ops.get("/metrics").text, "memory_worker_chunks_embedded_total")
        finally:
            http.close()
            ops.close()
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    return {"sinks": sinks, "elapsed_s": round(elapsed, 2), "model_rows": int(rows)}


def bench_tree(tree: Path, stream: dict[str, list[dict]], unique: int, label: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench-pipeline-{label}-") as tmp:
        one = run_once(tree, stream, sinks=1, workdir=Path(tmp))
        three = run_once(tree, stream, sinks=3, workdir=Path(tmp))
    out = {"tree": label, "unique_chunks": unique}
    for run in (one, three):
        n = run["sinks"]
        out[f"{n}_sink_elapsed_s"] = run["elapsed_s"]
        out[f"{n}_sink_model_rows"] = run["model_rows"]
        out[f"{n}_sink_rows_per_unique_chunk"] = round(run["model_rows"] / unique, 3)
        out[f"{n}_sink_chunks_per_s"] = round(unique / run["elapsed_s"], 2)
    out["three_over_one_chunks_per_s"] = round(out["3_sink_chunks_per_s"] / out["1_sink_chunks_per_s"], 3)
    print(json.dumps(out), flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=1, help="sample stream copies (examples/generate_stream.py)")
    p.add_argument("--before", help="also measure this git revision (e.g. the commit before the change)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        subprocess.run([sys.executable, str(REPO / "examples" / "generate_stream.py"), "--scale", str(args.scale),
                        "--out", tmp], check=True, stdout=subprocess.DEVNULL)
        stream = read_stream(Path(tmp))
    unique = unique_chunks(stream)
    results = []
    if args.before:
        with tempfile.TemporaryDirectory(prefix="bench-before-") as tmp:
            tree = Path(tmp) / "tree"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.before],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                results.append(bench_tree(tree, stream, unique, f"before ({args.before})"))
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    results.append(bench_tree(REPO, stream, unique, "this tree"))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
