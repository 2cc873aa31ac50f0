"""Chunker throughput against the raw tokenizer on the scaled sample stream (issue 15).

    .venv/bin/python bench/chunker.py --before 44d87d0 --scale 5 --repeats 11

The measure is bench/embed.py's "pipeline ÷ raw tokenizer" row: tokens/s of chunking every ~1 MiB
webhook batch and pushing its chunks through the engine with a zero-cost model, divided by the
tokens/s of one raw ``tokenizers`` ``encode_batch`` over the same chunk texts (special tokens
added, so both count the same 1,171,744 tokens at ``--scale 5``). Both chunkers run in this one
process: this tree's ``worker/chunk.py`` and the file at ``--before``, read with ``git show`` into
a temporary module.

Before any timing, the two chunkers' outputs over the whole stream must be equal (chunk
boundaries, texts, token ids, content and document hashes); the bench stops if they are not.

Noise control: the machine may be shared, so every repetition runs every method once, in an
order that rotates and reverses from one repetition to the next, after one uncounted warm-up
repetition. The table shows medians and the best run (bench/embed.py's row took the best of
three) of wall time, the median of the per-repetition ratios to raw, and the median CPU time of
the whole process (all threads). Results are
freed after the clock stops, the raw tokenizer's too. ``chunk only`` rows time the chunker
without the engine: the wall time its ``encode_batch`` calls took (this tree's chunker runs them
on a thread beside its packing, so they overlap the Python), the wall time when none was running,
and the CPU time of the calling thread (the chunker's Python; ``encode_batch`` runs on the
tokenizer's own threads).

``--before`` defaults to HEAD, which is only the old chunker until the new one is committed;
bench/README.md names the commit to compare against.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.embed import cpu_model, generate_stream, webhook_batches, zero_cost_pipeline  # noqa: E402
from worker.chunk import Chunker  # noqa: E402
from worker.embed import Embedder  # noqa: E402
from worker.modelspec import load_spec  # noqa: E402


def load_before(rev: str, folder: Path) -> ModuleType:
    """``worker/chunk.py`` at ``rev`` as a module of its own (it imports the rest from this tree)."""
    source = subprocess.run(["git", "show", f"{rev}:worker/chunk.py"], cwd=REPO, check=True,
                            capture_output=True).stdout
    path = folder / "chunk_before.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("chunk_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["chunk_before"] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


class TimedTokenizer:
    """Wraps a chunker's tokenizer to add up the wall seconds spent inside ``encode_batch``
    (calls come one at a time, from whichever thread)."""

    def __init__(self, tok) -> None:  # noqa: ANN001
        self.tok = tok
        self.wall = 0.0

    def encode_batch(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        started = time.perf_counter()
        try:
            return self.tok.encode_batch(*args, **kwargs)
        finally:
            self.wall += time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="HEAD", help="git revision of the old worker/chunk.py")
    parser.add_argument("--scale", type=int, default=5)
    parser.add_argument("--stream", type=Path, help="use this stream folder instead of generating")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the timings here")
    args = parser.parse_args(argv)

    spec = load_spec("all-minilm-l6-v2", models_dir=REPO / "models", env={})
    embedder = Embedder(spec, device="cpu", env={})
    kwargs = dict(max_tokens=256, overlap_tokens=32, model_max_tokens=spec.max_seq_tokens,
                  cls_id=embedder.info.cls_id, sep_id=embedder.info.sep_id,
                  prompt_ids=embedder.info.passage_prompt_ids)
    with tempfile.TemporaryDirectory() as tmp:
        before = load_before(args.before, Path(tmp))
        stream = args.stream or Path(tmp) / "stream"
        if args.stream is None:
            generate_stream(args.scale, stream)
        batches = webhook_batches(stream)
    chunkers = {"before": before.Chunker(embedder.tokenizer, **kwargs),
                "after": Chunker(embedder.tokenizer, **kwargs)}

    # Same output, or no timing at all.
    outputs = {name: [ch.chunk(b) for b in batches] for name, ch in chunkers.items()}
    if outputs["before"] != outputs["after"]:
        sys.exit("the two chunkers' outputs differ: not timing")
    texts = [c.text for r in outputs["after"] for cd in r for c in cd.chunks]
    n_tokens = sum(c.n_tokens for r in outputs["after"] for cd in r for c in cd.chunks)
    raw_tokens = sum(len(e.ids) for e in embedder.tokenizer.encode_batch(texts, add_special_tokens=True))
    assert raw_tokens == n_tokens, (raw_tokens, n_tokens)
    del outputs
    print(f"machine: nproc {os.cpu_count()}, {cpu_model()}; load average {os.getloadavg()[0]:.1f}",
          flush=True)
    print(f"--scale {args.scale}: {sum(len(b) for b in batches)} documents in {len(batches)} webhook "
          f"batches, {len(texts):,} chunks, {n_tokens:,} tokens, {sum(map(len, texts)):,} characters; "
          f"outputs of before ({args.before}) and after are equal", flush=True)

    split: dict[str, list[tuple[float, float]]] = {}  # chunk only: encode_batch wall, thread CPU

    def chunk_only(name: str) -> Callable[[], object]:
        def run() -> object:
            chunker = chunkers[name]
            timed = chunker._tok = TimedTokenizer(chunker._tok)
            started = time.thread_time()
            try:
                return [chunker.chunk(b) for b in batches]
            finally:
                chunker._tok = timed.tok
                split.setdefault(name, []).append((timed.wall, time.thread_time() - started))
        return run

    methods: dict[str, Callable[[], object]] = {
        "raw encode_batch": lambda: embedder.tokenizer.encode_batch(texts, add_special_tokens=True),
        "pipeline before": lambda: zero_cost_pipeline(chunkers["before"], batches, embedder.dimensions),
        "pipeline after": lambda: zero_cost_pipeline(chunkers["after"], batches, embedder.dimensions),
        "chunk only before": chunk_only("before"),
        "chunk only after": chunk_only("after"),
    }
    names = list(methods)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    load = [os.getloadavg()[0]]
    for r in range(args.repeats + 1):  # repetition 0 warms up (allocator, threads): not counted
        k = r % len(names)
        order = names[k:] + names[:k]
        for name in order if r % 2 == 0 else order[::-1]:
            gc.collect()
            started, started_cpu = time.perf_counter(), time.process_time()
            result = methods[name]()
            w, c = time.perf_counter() - started, time.process_time() - started_cpu
            del result
            if r:
                wall[name].append(w)
                cpu[name].append(c)
        if r == 0:
            split.clear()
        load.append(os.getloadavg()[0])
        print(f"  repetition {r}{' (warm-up)' if r == 0 else ''}: " +
              ", ".join(f"{n} {wall[n][-1]:.2f}s" for n in names if r) +
              f" (load {load[-1]:.1f})", flush=True)

    med_w = {n: statistics.median(v) for n, v in wall.items()}
    best_w = {n: min(v) for n, v in wall.items()}
    med_c = {n: statistics.median(v) for n, v in cpu.items()}
    raw = "raw encode_batch"
    print(f"\nMedians and best of {args.repeats} interleaved repetitions; load average "
          f"{min(load):.1f}–{max(load):.1f} (start {load[0]:.1f}, end {load[-1]:.1f}).\n")
    # Per repetition, raw and the method ran within seconds of each other: the median of their
    # ratios is steadier than the ratio of medians when the load comes and goes.
    med_r = {n: statistics.median(a / b for a, b in zip(wall[raw], wall[n])) for n in names}
    print("| method | wall s, median | tokens/s, median | ÷ raw, median | ÷ raw, median of "
          "repetitions | wall s, best | ÷ raw, best | CPU s, median | ÷ raw, CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in names:
        print(f"| {n} | {med_w[n]:.3f} | {n_tokens / med_w[n]:,.0f} | **{med_w[raw] / med_w[n]:.2f}** | "
              f"{med_r[n]:.2f} | {best_w[n]:.3f} | {best_w[raw] / best_w[n]:.2f} | {med_c[n]:.3f} | "
              f"{med_c[raw] / med_c[n]:.2f} |")
    print("\n| chunk only, medians | wall s | encode_batch wall s | wall s outside encode_batch "
          "| calling thread CPU s (Python) |")
    print("|---|---|---|---|---|")
    for name in chunkers:
        total = f"chunk only {name}"
        enc_w = [x[0] for x in split[name]]
        outside = statistics.median(t - e for t, e in zip(wall[total], enc_w))
        print(f"| {name} | {med_w[total]:.3f} | {statistics.median(enc_w):.3f} | {outside:.3f} | "
              f"{statistics.median(x[1] for x in split[name]):.3f} |")
    if args.json:
        args.json.write_bytes(orjson.dumps({"tokens": n_tokens, "wall": wall, "cpu": cpu,
                                            "encode_batch": split, "load": load}))


if __name__ == "__main__":
    main()
