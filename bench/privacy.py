"""Cost of privacy masking on the sample stream (no model: masking alone).

    .venv/bin/python -m bench.privacy --repeat 5

Parses every document of ``examples/stream/`` with its preset, then times
``Masker.mask_document`` over all of them (per document, per KB of sink-bound text) and
``Masker.mask_text`` over chunk-sized pieces (~1 KB, about 256 MiniLM tokens), for a redact-only
policy and for pseudonymize-everything with declared names. Also times the seeded PII corpus,
where every document is dense with entities (the worst case for the replacement path). Prints
one JSON object; the best of ``--repeat`` runs counts (the box is shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.pii_corpus import pii_corpus  # noqa: E402
from worker.config import BindingConfig  # noqa: E402
from worker.documents import Binding  # noqa: E402
from worker.privacy import Masker, PrivacyPolicy  # noqa: E402
from worker.records import FlowDocument  # noqa: E402

STREAM = {"gong_call": "gong-calls-enriched.jsonl", "slack_message": "slack-messages-enriched.jsonl",
          "github_document": "github-enriched.json"}
CHUNK_CHARS = 1024


def _load(preset: str, name: str) -> list[tuple[FlowDocument, dict[str, Any]]]:
    text = (REPO / "examples" / "stream" / name).read_text()
    raws = json.loads(text) if name.endswith(".json") else [json.loads(line) for line in
                                                           text.splitlines() if line.strip()]
    binding = Binding(BindingConfig(collection=preset, preset=preset))
    return [(binding.parse(r), r) for r in raws]


def _sink_chars(doc: FlowDocument) -> int:
    n = len(doc.title) + len(doc.url) + len(doc.context)
    n += sum(len(s.text) + len(s.label) for s in doc.sections)
    return n + sum(sum(map(len, v)) if isinstance(v, list) else len(str(v))
                   for v in doc.metadata.values())


def _chunks(docs: list[tuple[FlowDocument, dict[str, Any]]]) -> list[str]:
    out = []
    for doc, _ in docs:
        text = "\n".join(s.text for s in doc.sections)
        out += [text[i:i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)]
    return out


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def share_of_prepare(docs: list[tuple[FlowDocument, dict[str, Any]]]) -> dict[str, Any]:
    """Masking time as a share of the prepare stage (mask + chunk + embed), in one run, on CPU."""
    from worker.chunk import Chunker
    from worker.embed import Embedder
    from worker.engine import EmbeddingEngine
    from worker.modelspec import load_spec

    spec = load_spec("all-minilm-l6-v2", models_dir=REPO / "models", env={})
    emb = Embedder(spec, device="cpu", env={})
    chunker = Chunker(emb.tokenizer, max_tokens=256, overlap_tokens=32, model_max_tokens=spec.max_seq_tokens,
                      cls_id=emb.info.cls_id, sep_id=emb.info.sep_id, prompt_ids=emb.info.passage_prompt_ids)
    # configs/production.yaml's default policy (secrets always redacted)
    masker = Masker(PrivacyPolicy(default_action="redact", actions={"email": "pseudonymize",
                                                                    "phone": "pseudonymize"}), secret=b"k")
    t0 = time.perf_counter()
    masked = [masker.mask_document(d, r).document for d, r in docs]
    t_mask = time.perf_counter() - t0
    t0 = time.perf_counter()
    chunked = chunker.chunk(masked)
    t_chunk = time.perf_counter() - t0
    chunks = [c for cd in chunked for c in cd.chunks]
    with EmbeddingEngine(emb, max_batch_tokens=2048, max_wait_ms=1) as engine:
        t0 = time.perf_counter()
        engine.embed(chunks)
        t_embed = time.perf_counter() - t0
    total = t_mask + t_chunk + t_embed
    return {"documents": len(docs), "chunks": len(chunks), "mask_s": round(t_mask, 3),
            "chunk_s": round(t_chunk, 3), "embed_s": round(t_embed, 2),
            "mask_us_per_chunk": round(t_mask / max(1, len(chunks)) * 1e6, 1),
            "mask_share_of_prepare": round(t_mask / total, 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--share", action="store_true",
                    help="also load the model and report masking's share of mask + chunk + embed")
    args = ap.parse_args()
    docs = [d for preset, name in STREAM.items() for d in _load(preset, name)]
    bindings = {"gong": Binding(BindingConfig(collection="g", preset="gong_call")),
                "slack": Binding(BindingConfig(collection="s", preset="slack_message")),
                "github": Binding(BindingConfig(collection="h", preset="github_document"))}
    dense = [(bindings[c.collection].parse(c.raw), c.raw) for c in pii_corpus(seed=7, n_per_shape=60)]
    chunks = _chunks(docs)
    policies = {
        "redact": PrivacyPolicy(),
        "pseudonymize_with_names": PrivacyPolicy(default_action="pseudonymize", names="pseudonymize"),
    }
    report: dict[str, Any] = {"documents": len(docs), "chunks": len(chunks),
                              "chunk_chars": CHUNK_CHARS, "pii_corpus_documents": len(dense)}
    for label, policy in policies.items():
        masker = Masker(policy, secret=b"bench-key")
        row: dict[str, Any] = {}
        for corpus_name, corpus in (("stream", docs), ("pii_corpus", dense)):
            kb = sum(_sink_chars(d) for d, _ in corpus) / 1024
            s = _best(lambda c=corpus: [masker.mask_document(d, r) for d, r in c], args.repeat)
            counts: dict[str, int] = {}
            for d, r in corpus:
                for k, v in masker.mask_document(d, r).counts.items():
                    counts[k] = counts.get(k, 0) + v
            row[corpus_name] = {"kb": round(kb, 1), "us_per_document": round(s / len(corpus) * 1e6, 1),
                                "us_per_kb": round(s / kb * 1e6, 1), "mb_per_s": round(kb / 1024 / s, 2),
                                "entities": counts}
        s = _best(lambda: [masker.mask_text(t) for t in chunks], args.repeat)
        row["stream_chunks"] = {"us_per_chunk": round(s / len(chunks) * 1e6, 1),
                                "chunks_per_s": round(len(chunks) / s)}
        report[label] = row
    if args.share:
        report["share_of_prepare_stage"] = share_of_prepare(docs)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
