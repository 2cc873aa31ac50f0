"""Ray backfill tokens/s ÷ in-process ``reindex`` tokens/s, on the same documents, in one run.

    .venv/bin/python bench/ray_backfill.py                       # scale 1, 2 rounds: ~6 min on 2 cores
    .venv/bin/python bench/ray_backfill.py --scale 2 --rounds 3 --actors 1 --json out.json

* **documents**: the sample stream (``examples/generate_stream.py --scale``), reduced to the
  newest version of each key, as a store export holds it (``{"collection", "document"}`` lines).
* **in-process**: ``build_runtime(config)`` then ``pipeline.validate`` + ``apply`` per collection
  in groups of 256 documents, exactly what ``memory-worker reindex`` does per file
  (worker/sources/files.py), into a fresh state dir and local store.
* **ray**: ``ray_backfill(config, …, fmt="store")`` over the export file, into another fresh
  state dir and local store, on a local Ray cluster of this host's cores started once before
  the rounds (a Ray deployment keeps its cluster running).

Both sides: ``embedding.backend: torch`` (or ``--backend``), the embedding cache off, and the
**model load included** (the in-process model, and Ray's driver model plus every actor's; the
in-process load time is printed so it can be subtracted). Rounds alternate the order. The
ratio is Ray tokens/s ÷ in-process tokens/s of the same round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from embed import COLLECTIONS, cpu_model, generate_stream  # noqa: E402

GROUP_DOCS = 256  # worker/sources/files.py GROUP_DOCS: one reindex pass


def export_documents(stream: Path) -> dict[str, list[dict]]:
    """Per collection, the newest version of each key (what the document store exports)."""
    from worker.config import BindingConfig
    from worker.documents import Binding
    from worker.errors import DocumentInvalid

    out: dict[str, list[dict]] = {}
    for collection, (name, preset) in COLLECTIONS.items():
        data = (stream / name).read_bytes()
        raws = orjson.loads(data) if name.endswith(".json") else [orjson.loads(x) for x in data.splitlines() if x.strip()]
        binding = Binding(BindingConfig(collection=collection, preset=preset))
        best: dict[tuple, tuple[int, dict]] = {}
        for raw in raws:
            try:
                env = binding.envelope(raw)
            except DocumentInvalid:
                continue
            if env.key not in best or env.version >= best[env.key][0]:
                best[env.key] = (env.version, raw)
        out[collection] = [raw for _, raw in best.values()]
    return out


def config_for(root: Path, backend: str):  # noqa: ANN201
    from worker.config import parse_config

    return parse_config({
        "model": "all-minilm-l6-v2", "models_dir": str(REPO / "models"), "state_dir": str(root / "state"),
        "bindings": [{"collection": c, "preset": p} for c, (_, p) in COLLECTIONS.items()],
        "embedding": {"device": "cpu", "cache_max_entries": 0, "backend": backend},
        "sinks": {"local": {"path": str(root / "lancedb")}}, "log_level": "warning"},
        file=Path("bench.yaml"), env={})


def in_process(root: Path, docs: dict[str, list[dict]], backend: str) -> dict:
    from worker.records import ApplyStats
    from worker.runtime import build_runtime

    started = time.perf_counter()
    rt = build_runtime(config_for(root, backend), {})
    loaded = time.perf_counter() - started
    stats = ApplyStats()
    try:
        for collection, raws in docs.items():
            for i in range(0, len(raws), GROUP_DOCS):
                valid, _ = rt.pipeline.validate(collection, raws[i:i + GROUP_DOCS])
                stats.add(rt.pipeline.apply(valid))
    finally:
        rt.close()
    elapsed = time.perf_counter() - started
    return {"tokens": stats.tokens, "chunks": stats.chunks, "written": stats.written,
            "elapsed_s": round(elapsed, 2), "model_load_s": round(loaded, 2),
            "tokens_per_s": round(stats.tokens / elapsed)}


def on_ray(root: Path, export: Path, backend: str, actors: int, batch_docs: int) -> dict:
    from worker.backfill_ray import ray_backfill

    started = time.perf_counter()
    stats = ray_backfill(config_for(root, backend), {}, [export], fmt="store", actors=actors,
                         batch_docs=batch_docs)
    elapsed = time.perf_counter() - started
    return {"tokens": stats.tokens, "chunks": stats.chunks, "written": stats.written,
            "elapsed_s": round(elapsed, 2), "tokens_per_s": round(stats.tokens / elapsed)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=int, default=1, help="copies of the sample stream (default 1)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--actors", type=int, default=1, help="embed actors (default 1)")
    p.add_argument("--batch-docs", type=int, default=64)
    p.add_argument("--backend", default="torch", help="embedding.backend on both sides")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error("--rounds must be at least 2")

    import logging

    import ray

    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    generate_stream(args.scale, root / "stream")
    docs = export_documents(root / "stream")
    export = root / "export.jsonl"
    export.write_bytes(b"".join(orjson.dumps({"collection": c, "document": raw}) + b"\n"
                                for c, raws in docs.items() for raw in raws))
    cores = len(os.sched_getaffinity(0))
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    print(f"machine: nproc {os.cpu_count()}, {cpu_model()}; load {Path('/proc/loadavg').read_text().split()[:3]}; "
          f"documents {sum(map(len, docs.values()))}", flush=True)
    runs: dict[str, list[dict]] = {"in-process": [], "ray": []}
    for rnd in range(args.rounds):
        for name in (["in-process", "ray"] if rnd % 2 == 0 else ["ray", "in-process"]):
            where = root / f"{name}-{rnd}-{uuid.uuid4().hex[:6]}"
            result = in_process(where, docs, args.backend) if name == "in-process" \
                else on_ray(where, export, args.backend, args.actors, args.batch_docs)
            runs[name].append(result)
            print(f"round {rnd} {name:<10} {json.dumps(result)}", flush=True)
    ray.shutdown()
    ratios = [round(r["tokens_per_s"] / i["tokens_per_s"], 3) for r, i in zip(runs["ray"], runs["in-process"])]
    out = {"machine": {"nproc": os.cpu_count(), "cpu": cpu_model(),
                       "loadavg_end": Path("/proc/loadavg").read_text().split()[:3]},
           "args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
           "ratio_ray_vs_in_process": ratios, "median_ratio": statistics.median(ratios)}
    print(json.dumps({"ratio_ray_vs_in_process": ratios, "median_ratio": out["median_ratio"],
                      "loadavg_end": out["machine"]["loadavg_end"]}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
