"""Webhook accept latency while the model saturates the CPU, per intake-isolation variant.

    .venv/bin/python bench/accept.py                       # ~4 min on 2 cores
    .venv/bin/python bench/accept.py --requests 300 --rounds 3 --json /tmp/accept.json

A real ``memory-worker run`` subprocess per variant and round (fresh state, local store). The
sample stream scaled ``--scale`` times is cut into ~1 MiB requests like the webhook connector's.
The first ``--preload-mib`` go in untimed, so the prepare loop and the model have a backlog; once
the model is busy (``memory_worker_embedding_seconds_total`` moving), ``--requests`` more are
posted serially, as Estuary does, and the time to each 200 is measured by the client. The model's
share of the timed window (embedding seconds ÷ wall) shows the CPU really was saturated.

Variants switch one contender at a time (``worker/spool.py``, ``worker/priority.py``):

* ``before``: SQLite's automatic WAL checkpoint inside the committing append, every thread at
  one priority (``spool.checkpoint_interval_s: null``, ``server.background_nice: 0``);
* ``checkpoint``: WAL checkpoints on a background thread every second;
* ``nice``: model, prepare, sink and checkpoint threads at nice 10;
* ``after`` (the defaults): both.

The structural changes (the spool's own writer connection, prepared payloads in their own file,
``gc.freeze()`` after start-up) are not switchable; ``--before COMMIT`` runs that commit's tree
(a temporary ``git worktree``) with its own defaults as the true before. Rounds interleave the
runs so drift in machine load hits all. "CPU" is the worker process's CPU time over the timed
window ÷ (window × cores): the model saturating the machine reads as ≥ 0.9.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from webhook import REQUEST_BYTES, Worker, backfill_requests, cpu_model, ms, pct  # noqa: E402

VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {  # (spool, server)
    "before": ({"checkpoint_interval_s": None}, {"background_nice": 0}),
    "checkpoint": ({"checkpoint_interval_s": 1.0}, {"background_nice": 0}),
    "nice": ({"checkpoint_interval_s": None}, {"background_nice": 10}),
    "after": ({}, {}),
}
EMBEDDING_S = "memory_worker_embedding_seconds_total"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(root: Path, requests: list[tuple[str, bytes, int]], *, spool: dict, server: dict,
        preload_mib: int, timed: int, device: str, tree: Path | None = None) -> dict[str, Any]:
    worker = Worker(root, store=root / "lancedb", embedding={"device": device}, spool=spool, server=server,
                    tree=tree)
    try:
        big = [r for r in requests if len(r[1]) >= REQUEST_BYTES // 2]
        preload, sent = 0, 0
        while preload < preload_mib * 2**20:
            collection, body, _ = requests[sent % len(requests)]
            worker.post(collection, body).raise_for_status()
            preload += len(body)
            sent += 1
        start = worker.metrics().get(EMBEDDING_S, 0.0)
        deadline = time.monotonic() + 120
        while worker.metrics().get(EMBEDDING_S, 0.0) - start < 1.0:  # the model is running
            if time.monotonic() > deadline:
                raise SystemExit("the model never started on the backlog")
            time.sleep(0.2)
        base, t0, cpu0 = worker.metrics().get(EMBEDDING_S, 0.0), time.monotonic(), cpu_s(worker.proc.pid)
        latencies, started_at = [], []
        for i in range(timed):
            collection, body, _ = big[i % len(big)]
            started_at.append(time.time())
            t = time.perf_counter()
            r = worker.post(collection, body)
            latencies.append(time.perf_counter() - t)
            r.raise_for_status()
        wall = time.monotonic() - t0
        cpu = (cpu_s(worker.proc.pid) - cpu0) / (wall * os.cpu_count())
        busy = (worker.metrics().get(EMBEDDING_S, 0.0) - base) / wall
        return {"requests": timed, "p50_ms": round(pct(ms(latencies), 50), 1),
                "p99_ms": round(pct(ms(latencies), 99), 1), "max_ms": round(max(ms(latencies)), 1),
                "cpu": round(cpu, 2), "model_busy": round(busy, 2), "window_s": round(wall, 1),
                "slowest": sorted(((round(v * 1000, 1), i, round(started_at[i], 3))
                                   for i, v in enumerate(latencies)), reverse=True)[:3]}
    finally:
        worker.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=int, default=30, help="copies of the sample stream (default 30)")
    p.add_argument("--preload-mib", type=int, default=12, help="untimed backlog first (default 12)")
    p.add_argument("--requests", type=int, default=200, help="timed ~1 MiB requests per run (default 200)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--before", help="also run this commit's tree with its defaults (git worktree)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="bench-accept-"))
    stream = root / "stream"
    subprocess.run([sys.executable, str(REPO / "examples" / "generate_stream.py"), "--scale", str(args.scale),
                    "--out", str(stream)], check=True, stdout=subprocess.DEVNULL)
    requests = backfill_requests(stream)
    print(f"machine: nproc {os.cpu_count()}, {cpu_model()}; load {Path('/proc/loadavg').read_text().split()[:3]}; "
          f"{len(requests)} requests, {sum(len(b) for _, b, _ in requests) / 2**20:.1f} MiB", flush=True)
    names = ([f"commit {args.before}"] if args.before else []) + list(args.variants)
    old_tree = None
    if args.before:
        old_tree = root / "before-tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), args.before], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in names}
    for rnd in range(args.rounds):
        order = names if rnd % 2 == 0 else list(reversed(names))
        for name in order:
            spool, server = VARIANTS.get(name, ({}, {}))
            result = one(root / f"{name.replace(' ', '-')}-{rnd}", requests, spool=spool, server=server,
                         preload_mib=args.preload_mib, timed=args.requests, device=args.device,
                         tree=old_tree if name.startswith("commit ") else None)
            runs[name].append(result)
            print(f"round {rnd} {name:<14} {json.dumps(result)}", flush=True)
    if old_tree is not None:
        subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=REPO, check=False)
    summary = {name: {key: [r[key] for r in rs] for key in ("p50_ms", "p99_ms", "max_ms", "cpu", "model_busy")}
               for name, rs in runs.items()}
    out = {"machine": {"nproc": os.cpu_count(), "cpu": cpu_model(),
                       "loadavg_end": Path("/proc/loadavg").read_text().split()[:3]},
           "args": vars(args) | {"json": str(args.json)}, "runs": runs, "summary": summary}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
