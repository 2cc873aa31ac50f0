"""End-to-end ``memory-worker reindex`` tokens/s ÷ a naive worker's ``encode`` per webhook batch.

    .venv/bin/python bench/reindex.py                      # ~6 min on 2 cores
    .venv/bin/python bench/reindex.py --scale 3 --rounds 3 --backends torch auto

* **naive**: what a first worker would do per ~1 MiB webhook batch: chunk it with the worker's
  own chunker (not timed), then ``SentenceTransformer.encode(texts, batch_size=32)`` in float32
  (timed). Nothing is written anywhere, so this is the naive worker's best case.
* **reindex** (per ``--backends``): the real CLI, ``memory-worker reindex --collection C
  FILE`` for each collection, in a subprocess with a fresh state dir, the embedding cache off
  (``cache_max_entries: 0``) and the local store; parse, screen, chunk, embed (token-budget
  batches), write to LanceDB, ledger. Its own summary line gives tokens and elapsed seconds
  (model loading excluded, as the naive side's is).

Both see the same documents (the sample stream scaled ``--scale`` times, every version, deletes
skipped by the naive side); rounds alternate the order. The ratio is stream tokens per second,
reindex ÷ naive, with the stream's chunk tokens (every version, as the naive side embeds them)
as the numerator of both: the naive side's seconds ÷ reindex's, in wall time and in CPU time
(every thread of the process). ``tokens`` in each run is what that side embedded itself
(reindex skips versions older than the newest in the same call, and embeds repeated chunks
once).
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

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from embed import COLLECTIONS, cpu_model, generate_stream, webhook_batches  # noqa: E402


def load_worker_parts():  # noqa: ANN201
    """The worker's fp32 model and chunker, as ``build_runtime`` builds them for this config."""
    from worker.chunk import Chunker
    from worker.embed import Embedder
    from worker.modelspec import load_spec

    spec = load_spec("all-minilm-l6-v2", models_dir=REPO / "models", env={})
    embedder = Embedder(spec, device="cpu")
    chunker = Chunker(embedder.tokenizer, max_tokens=256, overlap_tokens=32, model_max_tokens=spec.max_seq_tokens,
                      cls_id=embedder.info.cls_id, sep_id=embedder.info.sep_id,
                      prompt_ids=embedder.info.passage_prompt_ids)
    return embedder, chunker


def naive(embedder, batches: list) -> dict:  # noqa: ANN001
    texts = [[c.text for cd in chunked for c in cd.chunks] for chunked in batches]
    tokens = sum(c.n_tokens for chunked in batches for cd in chunked for c in cd.chunks)
    started, cpu_started = time.perf_counter(), time.process_time()
    for part in texts:
        embedder.model.encode(part, batch_size=32)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"tokens": tokens, "elapsed_s": round(elapsed, 2), "cpu_s": round(cpu, 2),
            "tokens_per_s": round(tokens / elapsed), "tokens_per_cpu_s": round(tokens / cpu)}


def reindex(root: Path, stream: Path, backend: str) -> dict:
    state = root / f"state-{backend}-{time.monotonic_ns()}"
    config = root / f"reindex-{backend}.yaml"
    config.write_text(yaml.safe_dump({
        "model": "all-minilm-l6-v2", "models_dir": str(REPO / "models"), "state_dir": str(state),
        "bindings": [{"collection": c, "preset": p} for c, (_, p) in COLLECTIONS.items()],
        "embedding": {"device": "cpu", "cache_max_entries": 0, "backend": backend},
        "sinks": {"local": {"path": str(state / "lancedb")}}, "log_level": "warning"}))
    tokens = elapsed = cpu = 0.0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for collection, (name, _) in COLLECTIONS.items():
        out = subprocess.run([sys.executable, "-m", "worker.cli", "reindex", "--config", str(config), "--collection",
                              collection, str(stream / name)], cwd=REPO, env=env, capture_output=True, text=True,
                             check=True).stdout
        summary = dict(part.split("=", 1) for part in out.strip().splitlines()[-1].split())
        tokens += int(summary["tokens"])
        elapsed += float(summary["elapsed_s"])
        cpu += float(summary["cpu_s"])
    return {"tokens": int(tokens), "elapsed_s": round(elapsed, 2), "cpu_s": round(cpu, 2),
            "tokens_per_s": round(tokens / elapsed), "tokens_per_cpu_s": round(tokens / cpu)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=int, default=2, help="copies of the sample stream (default 2)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--backends", nargs="+", default=["torch"], help="embedding.backend values to run")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="bench-reindex-"))
    stream = root / "stream"
    generate_stream(args.scale, stream)
    embedder, chunker = load_worker_parts()
    batches = [chunker.chunk(docs) for docs in webhook_batches(stream)]
    print(f"machine: nproc {os.cpu_count()}, {cpu_model()}; load {Path('/proc/loadavg').read_text().split()[:3]}",
          flush=True)
    runs: dict[str, list[dict]] = {"naive": [], **{f"reindex {b}": [] for b in args.backends}}
    for rnd in range(args.rounds):
        order = list(runs) if rnd % 2 == 0 else list(reversed(runs))
        for name in order:
            result = naive(embedder, batches) if name == "naive" else reindex(root, stream, name.split()[1])
            runs[name].append(result)
            print(f"round {rnd} {name:<16} {json.dumps(result)}", flush=True)
    # Both sides get through the same stream: the ratio of stream tokens per second is the
    # naive side's seconds ÷ reindex's (wall, and CPU seconds of every thread).
    ratios = {name: {clock: [round(n[key] / r[key], 2) for r, n in zip(rs, runs["naive"])]
                     for clock, key in (("wall", "elapsed_s"), ("cpu", "cpu_s"))}
              for name, rs in runs.items() if name != "naive"}
    out = {"machine": {"nproc": os.cpu_count(), "cpu": cpu_model(),
                       "loadavg_end": Path("/proc/loadavg").read_text().split()[:3]},
           "args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "ratio_vs_naive": ratios}
    print(json.dumps({"ratio_vs_naive": ratios}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
