"""Embedding engine throughput against sentence-transformers' own ``encode``, on the sample stream.

    .venv/bin/python bench/embed.py --scale 5                  # CPU, ≥ 5,000 chunks
    .venv/bin/python bench/embed.py --scale 20 --device cuda   # on a GPU host

Corpus: ``examples/generate_stream.py --scale K`` (generated into a temporary folder), documents
grouped into ~1 MiB webhook batches per collection, each batch chunked by ``worker.chunk.Chunker``
at 256 tokens. Every ratio in the printed table comes from this one run, on this machine and
this corpus.

Noise control: the machine may be shared, so the model-bound methods run interleaved. The
webhook batches are dealt into ``--rounds`` slices; each round runs every method on its slice,
in an order that reverses every round (A B C, C B A, ...), so a load change hits all methods
alike. ``--fraction`` times only that share of the webhook batches (every method the same ones)
when a full pass per method would take too long; the table says which share was timed.

CPU methods (float32 torch unless said):

* ``naive``: ``model.encode(texts of one webhook batch)`` per batch, ``batch_size`` 32.
* ``st_all_32`` / ``st_all_tuned``: one ``encode`` over all the slice's chunk texts, batch_size
  32 and the best of ``--st-batch-sizes`` (picked on a calibration sample, interleaved).
* ``engine_16384``: the engine at the config default budget (the "before").
* ``engine``: the engine at the best of ``--budgets`` (picked on the same calibration sample).
* ``engine_onnx``: the engine on the ONNX Runtime int8 backend (dynamic quantization).
* ``engine_openvino``: the engine on the OpenVINO int8 backend as the worker builds it (NNCF
  static quantization, ``PERFORMANCE_HINT`` LATENCY); ``--openvino-variants`` times others
  instead or beside it (``static:THROUGHPUT``, ``weights:LATENCY``, ...).

Each int8 backend is timed only when it meets the quality gate against float32 (mean cosine
≥ 0.99, min ≥ 0.97), on the worker's own gate chunks (96 of ``examples/stream``) and, as a second
look, on the calibration sample of this corpus; both sets of figures are printed.

``--int8-only`` times just the fp32 torch engine and the int8 engines (engine budget: the CPU
default, no calibration), interleaved on the same webhook batches: the int8 comparison in one
command::

    .venv/bin/python bench/embed.py --scale 5 --int8-only --skip-tokenization --rounds 4

Engines get each webhook batch as its own request, submitted as they arrive, so chunks from many
requests share batches, as in the worker.

CUDA (``--device cuda``): the spec's fp16/bf16 engine (autotuned budget) against float32
``encode``, and the share of the GPU's measured bf16 matmul rate that the engine's tokens/s uses.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from worker.batch import padded_tokens  # noqa: E402
from worker.chunk import Chunker  # noqa: E402
from worker.config import BindingConfig  # noqa: E402
from worker.documents import Binding  # noqa: E402
from worker.embed import Embedder, check_int8_quality, resolve_weights  # noqa: E402
from worker.engine import EmbeddingEngine  # noqa: E402
from worker.backends import int8_calibration_chunks  # noqa: E402
from worker.engine_pool import autotune_budget, cpu_batch_tokens  # noqa: E402
from worker.errors import DocumentInvalid  # noqa: E402
from worker.modelspec import load_spec  # noqa: E402
from worker.records import Chunk, FlowDocument  # noqa: E402

COLLECTIONS = {
    "sophia-ai/gong-calls-enriched": ("gong-calls-enriched.jsonl", "gong_call"),
    "sophia-ai/slack-messages-enriched": ("slack-messages-enriched.jsonl", "slack_message"),
    "sophia-ai/github-enriched": ("github-enriched.json", "github_document"),
}
WEBHOOK_BYTES = 1 << 20


# -- corpus --------------------------------------------------------------------------------------

def generate_stream(scale: int, out: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "examples" / "generate_stream.py"), "--scale",
                    str(scale), "--out", str(out)], check=True, stdout=subprocess.DEVNULL)


def webhook_batches(stream: Path) -> list[list[FlowDocument]]:
    """Documents per collection, in delivery order, cut into ~1 MiB request bodies."""
    batches: list[list[FlowDocument]] = []
    for collection, (name, preset) in COLLECTIONS.items():
        path = stream / name
        raws = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()] \
            if path.suffix == ".jsonl" else orjson.loads(path.read_bytes())
        binding = Binding(BindingConfig(collection=collection, preset=preset))
        current: list[FlowDocument] = []
        size = 0
        for raw in raws:
            n = len(orjson.dumps(raw))
            if current and size + n > WEBHOOK_BYTES:
                batches.append(current)
                current, size = [], 0
            try:
                doc = binding.parse(raw)
            except DocumentInvalid:
                continue
            if not doc.is_delete:
                current.append(doc)
                size += n
        if current:
            batches.append(current)
    return batches


# -- helpers -------------------------------------------------------------------------------------

class ZeroBackend:
    """A model that costs nothing: what is left is chunking, queueing and scatter."""

    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions

    def embed_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        return np.zeros((len(batch), self.dimensions), dtype=np.float32)



def zero_cost_pipeline(chunker, batches, dimensions: int) -> int:  # noqa: ANN001
    """Chunk each webhook batch and submit it to an engine whose model costs nothing; the
    tokens submitted (what ``pipeline ÷ raw tokenizer`` measures)."""
    n_tokens = 0
    with EmbeddingEngine(ZeroBackend(dimensions), max_batch_tokens=16384, max_wait_ms=50) as engine:
        pending = []
        for b in batches:
            chunks = [c for cd in chunker.chunk(b) for c in cd.chunks]
            n_tokens += sum(c.n_tokens for c in chunks)
            pending.append(engine.submit(chunks, use_cache=False))
        for p in pending:
            p.result()
    return n_tokens

def run_engine(backend, requests: Sequence[Sequence[Chunk]], budget: int, *, stats_out: dict | None = None
               ) -> np.ndarray:
    """Submit every request as it would arrive (non-blocking), then collect them in order."""
    with EmbeddingEngine(backend, max_batch_tokens=budget, max_wait_ms=50) as engine:
        pending = [engine.submit(r) for r in requests]
        vectors = np.concatenate([p.result() for p in pending])
    if stats_out is not None:
        stats_out.update(tokens=engine.stats.tokens, padded=engine.stats.padded_tokens,
                         batches=engine.stats.batches)
    return vectors


def st_padding(model, texts: Sequence[str], token_counts: Sequence[int], batch_size: int) -> float:
    """Padded ÷ real tokens of ``encode``'s own plan: it sorts its inputs by character length."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    lengths = [token_counts[i] for i in order]
    batches = [list(range(i, min(i + batch_size, len(lengths)))) for i in range(0, len(lengths), batch_size)]
    return padded_tokens(lengths, batches) / sum(lengths)


def interleaved(methods: dict[str, Callable[[int], object]], rounds: int
                ) -> tuple[dict[str, float], dict[str, float]]:
    """Wall seconds and process CPU seconds per method, summed over rounds; the order reverses
    every round. CPU seconds (all threads of this process) are what a method costs even when
    other processes take turns on the cores; on an otherwise idle machine wall ≈ CPU ÷ cores."""
    names = list(methods)
    wall = dict.fromkeys(names, 0.0)
    cpu = dict.fromkeys(names, 0.0)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            started, started_cpu = time.perf_counter(), time.process_time()
            methods[name](r)
            wall[name] += time.perf_counter() - started
            cpu[name] += time.process_time() - started_cpu
            print(f"  round {r}: {name} wall {wall[name]:.1f}s cpu {cpu[name]:.1f}s so far "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return wall, cpu


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


# -- sections ------------------------------------------------------------------------------------

def bench_tokenization(embedder: Embedder, chunker: Chunker, batches: list[list[FlowDocument]],
                       rows: list[tuple[str, str, str]]) -> None:
    """Chunker + engine with a zero-cost model, against raw ``encode_batch`` on the chunk texts."""
    requests = [[c for cd in chunker.chunk(b) for c in cd.chunks] for b in batches]  # warm-up
    texts = [c.text for r in requests for c in r]
    tok = embedder.tokenizer
    best_raw = best_pipe = 0.0
    for _ in range(3):  # interleaved, best of three (both are short)
        started = time.perf_counter()
        encodings = tok.encode_batch(texts, add_special_tokens=True)
        raw_s = time.perf_counter() - started
        raw_tokens = sum(len(e.ids) for e in encodings)
        best_raw = max(best_raw, raw_tokens / raw_s)
        started = time.perf_counter()
        n_tokens = zero_cost_pipeline(chunker, batches, embedder.dimensions)
        pipe_s = time.perf_counter() - started
        best_pipe = max(best_pipe, n_tokens / pipe_s)
    print(f"raw encode_batch {best_raw:,.0f} tok/s; pipeline (chunk + engine, zero model) "
          f"{best_pipe:,.0f} tok/s", flush=True)
    rows.append(("pipeline tokens/s with a zero-cost embedder ÷ raw `tokenizers` encode_batch",
                 f"{best_pipe:,.0f} ÷ {best_raw:,.0f} = **{best_pipe / best_raw:.2f}**", "≥ 0.6"))


def calibrate(embedder: Embedder, sample: list[Chunk], budgets: list[int], st_sizes: list[int]
              ) -> tuple[int, int, dict[str, float]]:
    """Pick the engine budget and encode batch_size on a sample, interleaved over two rounds."""
    tokens = sum(c.n_tokens for c in sample)
    texts = [c.text for c in sample]
    # Warm-up: the first forward passes of a process are slow (allocator, kernel selection);
    # without this the first method timed would pay for it.
    run_engine(embedder, [sample], budgets[0])
    embedder.model.encode(texts, batch_size=st_sizes[0])
    methods: dict[str, Callable[[int], object]] = {}
    for b in budgets:
        methods[f"engine {b}"] = lambda r, b=b: run_engine(embedder, [sample], b)
    for s in st_sizes:
        methods[f"encode bs {s}"] = lambda r, s=s: embedder.model.encode(texts, batch_size=s)
    _, cpu = interleaved(methods, 2)
    rates = {k: 2 * tokens / v for k, v in cpu.items()}  # CPU time: robust to other load
    best_budget = max(budgets, key=lambda b: rates[f"engine {b}"])
    best_bs = max(st_sizes, key=lambda s: rates[f"encode bs {s}"])
    return best_budget, best_bs, rates


def bench_cpu(args: argparse.Namespace, embedder: Embedder, chunker: Chunker, requests: list[list[Chunk]],
              rows: list[tuple[str, str, str]], notes: list[str]) -> None:
    rng = np.random.default_rng(0)
    all_chunks = [c for r in requests for c in r]
    sample = [all_chunks[i] for i in sorted(rng.choice(len(all_chunks), args.calibration, replace=False))]
    if args.int8_only:
        budget, st_bs = cpu_batch_tokens(embedder.spec.max_seq_tokens), 32
        run_engine(embedder, [sample], budget)  # warm-up: a process's first forward passes are slow
        notes.append(f"Engine budget: the CPU default, {budget} tokens (--int8-only: no calibration).")
    else:
        print(f"calibrating on {len(sample)} chunks ...", flush=True)
        budget, st_bs, rates = calibrate(embedder, sample, args.budgets, args.st_batch_sizes)
        notes.append("Calibration (tokens per CPU-second, same run, interleaved): " +
                     ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()) +
                     f" → engine budget **{budget}**, encode batch_size **{st_bs}**.")

    # The timed share: every k-th webhook batch, dealt into rounds.
    timed = requests[::max(1, round(1 / args.fraction))]
    if len(timed) < args.rounds:  # every round needs at least one webhook batch
        notes.append(f"--rounds {args.rounds} lowered to {len(timed)}: only {len(timed)} webhook batches are timed.")
        args.rounds = len(timed)
    slices = [timed[r::args.rounds] for r in range(args.rounds)]
    texts = [[c.text for req in s for c in req] for s in slices]
    n_chunks = sum(len(req) for req in timed)
    n_tokens = sum(c.n_tokens for req in timed for c in req)
    notes.append(f"Timed: {len(timed)} of {len(requests)} webhook batches, {n_chunks:,} chunks, "
                 f"{n_tokens:,} tokens, in {args.rounds} interleaved rounds.")
    model = embedder.model
    engine_stats: dict[str, dict] = {}

    def engine_method(backend, b: int, key: str) -> Callable[[int], object]:
        def run(r: int) -> object:
            stats: dict = {}
            out = run_engine(backend, slices[r], b, stats_out=stats)
            agg = engine_stats.setdefault(key, {"tokens": 0, "padded": 0, "batches": 0})
            for k in agg:
                agg[k] += stats[k]
            return out
        return run

    methods: dict[str, Callable[[int], object]] = {"engine": engine_method(embedder, budget, "engine")}
    if not args.int8_only:
        methods.update({
            "naive": lambda r: [model.encode([c.text for c in req], batch_size=32) for req in slices[r]],
            "st_all_32": lambda r: model.encode(texts[r], batch_size=32),
            "engine_16384": engine_method(embedder, 16384, "engine_16384"),
        })
        if st_bs != 32:
            methods["st_all_tuned"] = lambda r: model.encode(texts[r], batch_size=st_bs)
    int8: dict[str, object] = {}
    if args.int8:
        int8 = build_int8(args, embedder, chunker, sample, notes)
        for name, backend in int8.items():
            backend.embed_ids([c.token_ids for c in sample[:16]])  # warm-up (compilation, caches)
            methods[name] = engine_method(backend, budget, name)
    print(f"timing {n_chunks:,} chunks per method ...", flush=True)
    wall, cpu = interleaved(methods, args.rounds)
    cps = {k: n_chunks / v for k, v in wall.items()}  # chunks per wall second
    cpc = {k: n_chunks / v for k, v in cpu.items()}  # chunks per CPU second
    for k in wall:
        notes.append(f"`{k}`: wall {wall[k]:.1f} s = {cps[k]:.2f} chunks/s ({n_tokens / wall[k]:,.0f} "
                     f"tok/s); CPU {cpu[k]:.1f} s = {cpc[k]:.2f} chunks per CPU-second")

    def ratio(a: str, b: str) -> str:
        return (f"wall {cps[a]:.2f} ÷ {cps[b]:.2f} = **{cps[a] / cps[b]:.2f}**; "
                f"CPU-time {cpc[a]:.2f} ÷ {cpc[b]:.2f} = **{cpc[a] / cpc[b]:.2f}**")

    int8_rows = [(f"int8 `{name}` engine chunks/s ÷ fp32 torch engine", ratio(name, "engine"),
                  "≥ 2 at the quality gate") for name in int8]
    if args.int8_only:
        rows.extend(int8_rows)
        return
    rows.append(("engine chunks/s ÷ `encode` once per ~1 MiB webhook batch (naive worker)",
                 ratio("engine", "naive"), "≥ 1.3"))
    rows.append(("engine chunks/s ÷ one `encode` over all chunks, batch_size 32",
                 ratio("engine", "st_all_32"), "≥ 0.95"))
    if "st_all_tuned" in cps:
        rows.append((f"engine chunks/s ÷ one `encode` over all chunks, tuned batch_size {st_bs}",
                     ratio("engine", "st_all_tuned"), "≥ 0.95"))
    rows.append((f"engine at budget {budget} ÷ engine at the default 16384 (before/after tuning)",
                 ratio("engine", "engine_16384"), "(tuning)"))
    e = engine_stats["engine"]
    pad_st = np.mean([st_padding(model, texts[r], [c.n_tokens for req in slices[r] for c in req], 32)
                      for r in range(args.rounds)])
    rows.append(("padded tokens ÷ real tokens in our batches",
                 f"{e['padded']:,} ÷ {e['tokens']:,} = **{e['padded'] / e['tokens']:.3f}** "
                 f"({e['batches']} batches; encode's own sort: {pad_st:.3f})", "≤ 1.05"))
    rows.extend(int8_rows)
    for name in int8:
        rows.append((f"int8 `{name}` engine chunks/s ÷ naive fp32 `encode` per webhook batch",
                     ratio(name, "naive"), "(for reference)"))
    st_best = max(cps["st_all_32"], cps.get("st_all_tuned", 0))
    best_name = "st_all_tuned" if cps.get("st_all_tuned", 0) > cps["st_all_32"] else "st_all_32"
    notes.append(f"Best encode variant: `{best_name}` at {st_best:.2f} chunks/s.")


def gate_figures(embedder: Embedder, backend, ids: Sequence[Sequence[int]]):  # noqa: ANN001, ANN201
    from worker.backends import embed_in_batches

    return check_int8_quality(embed_in_batches(embedder, ids), embed_in_batches(backend, ids),
                              raise_if_refused=False)


def build_int8(args: argparse.Namespace, embedder: Embedder, chunker: Chunker, sample: list[Chunk],
               notes: list[str]) -> dict[str, object]:
    """The int8 backends that pass the worker's quality gate, by method name; each is built the
    way the worker builds it (cached under the temp dir after the first run)."""
    from worker.embed_onnx import OnnxInt8Embedder
    from worker.embed_openvino import OpenVinoEmbedder

    cache = Path(tempfile.gettempdir()) / "memory-worker-int8"
    gate = [c.token_ids for c in int8_calibration_chunks(chunker)]
    held_out = [c.token_ids for c in int8_calibration_chunks(chunker, held_out=True)]
    builders: dict[str, Callable[[], object]] = {
        "engine_onnx": lambda: OnnxInt8Embedder.build(embedder, cache / "onnx")}
    for variant in args.openvino_variants:
        quantization, _, hint = variant.partition(":")
        name = "engine_openvino" if variant == "static:LATENCY" else f"engine_openvino_{quantization}_{hint.lower()}"
        builders[name] = lambda q=quantization, h=hint: OpenVinoEmbedder.build(
            embedder, cache / "openvino", onnx_directory=cache / "onnx", calibration=held_out if q == "static" else [],
            quantization=q, performance_hint=h)
    accepted: dict[str, object] = {}
    for name, build in builders.items():
        started = time.perf_counter()
        try:
            backend = build()
        except Exception as exc:  # noqa: BLE001 - reported, not fatal for the bench
            notes.append(f"`{name}` unavailable: {exc}")
            continue
        built_s = time.perf_counter() - started
        worker_gate = gate_figures(embedder, backend, gate)
        corpus = gate_figures(embedder, backend, [c.token_ids for c in sample])
        notes.append(f"`{name}` quality gate vs fp32: worker gate ({worker_gate.chunks} sample-stream chunks) "
                     f"mean cosine **{worker_gate.mean_cosine:.4f}**, min **{worker_gate.min_cosine:.4f}**; "
                     f"{corpus.chunks} corpus chunks mean {corpus.mean_cosine:.4f}, min {corpus.min_cosine:.4f} "
                     f"→ {'accepted' if worker_gate.accepted and corpus.accepted else 'REFUSED'} "
                     f"(build {built_s:.0f} s; export and quantization are cached after the first run)")
        if worker_gate.accepted and corpus.accepted:
            accepted[name] = backend
    return accepted


def bench_cuda(args: argparse.Namespace, embedder: Embedder, requests: list[list[Chunk]],
               rows: list[tuple[str, str, str]], notes: list[str]) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    # Measured matmul ceiling (bf16, large square GEMM).
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    reps = 20
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    tflops = 2 * n**3 * reps / (time.perf_counter() - started) / 1e12
    del a, b
    torch.cuda.empty_cache()

    chunks = [c for r in requests for c in r]
    texts = [c.text for c in chunks]
    n_tokens = sum(c.n_tokens for c in chunks)
    avg_len = n_tokens / len(chunks)
    cfg = embedder.model[0].auto_model.config
    layers, hidden, inter = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
    # Dense FLOPs per token (2 per multiply-add): QKV+out projections and the MLP, plus attention
    # scores and weighted sum over the average sequence. MiniLM-L6 at 128 tokens: 22.4 M.
    flops_per_token = layers * (2 * (4 * hidden * hidden + 2 * hidden * inter) + 4 * hidden * avg_len)

    budget = autotune_budget(embedder, max_seq_tokens=embedder.spec.max_seq_tokens,
                             start_tokens=16384, ceiling_tokens=16384 * 16)
    run_engine(embedder, requests[:2], budget)  # warm-up (kernels, allocator)
    torch.cuda.synchronize()
    started = time.perf_counter()
    stats: dict = {}
    run_engine(embedder, requests, budget, stats_out=stats)
    torch.cuda.synchronize()
    engine_tps = n_tokens / (time.perf_counter() - started)

    fp32 = SentenceTransformer(resolve_weights(embedder.spec, allow_download=False), device="cuda",
                               model_kwargs={"torch_dtype": torch.float32})
    fp32.max_seq_length = embedder.spec.max_seq_tokens
    fp32.encode(texts[:256], batch_size=32)
    rates = {}
    for bs in (32, 256):
        torch.cuda.synchronize()
        started = time.perf_counter()
        fp32.encode(texts, batch_size=bs)
        torch.cuda.synchronize()
        rates[bs] = n_tokens / (time.perf_counter() - started)
    best_fp32 = max(rates.values())
    ceiling = tflops * 1e12 / flops_per_token
    notes.append(f"GPU: {torch.cuda.get_device_name()}; bf16 matmul {tflops:.0f} TFLOP/s; "
                 f"{flops_per_token / 1e6:.1f} MFLOPs/token at avg {avg_len:.0f} tokens → ceiling "
                 f"{ceiling:,.0f} tok/s. Engine {embedder.dtype}, attention {embedder.attention}, "
                 f"autotuned budget {budget}; fp32 encode bs32 {rates[32]:,.0f}, bs256 {rates[256]:,.0f} tok/s.")
    rows.append((f"{embedder.dtype} engine tokens/s ÷ fp32 `encode` (best of bs 32/256)",
                 f"{engine_tps:,.0f} ÷ {best_fp32:,.0f} = **{engine_tps / best_fp32:.2f}**", "(GPU)"))
    rows.append(("engine tokens/s as % of the measured bf16 matmul ceiling",
                 f"{engine_tps:,.0f} ÷ {ceiling:,.0f} = **{100 * engine_tps / ceiling:.1f} %**", "(GPU)"))
    rows.append(("padded tokens ÷ real tokens (GPU batches)",
                 f"**{stats['padded'] / stats['tokens']:.3f}** ({stats['batches']} batches)", "≤ 1.05"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=5, help="corpus copies (5 ≈ 5,200 chunks)")
    parser.add_argument("--stream", type=Path, help="use this stream folder instead of generating")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=1.0,
                        help="share of webhook batches timed per method (every 1/F-th batch; all methods the same)")
    parser.add_argument("--calibration", type=int, default=160, help="chunks in the tuning sample")
    parser.add_argument("--budgets", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--st-batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--no-int8", dest="int8", action="store_false")
    parser.add_argument("--int8-only", action="store_true",
                        help="time only the fp32 torch engine and the int8 engines (CPU budget default)")
    parser.add_argument("--openvino-variants", nargs="+", default=["static:LATENCY"],
                        help="OpenVINO quantization:PERFORMANCE_HINT pairs to time (static|weights : THROUGHPUT|LATENCY)")
    parser.add_argument("--skip-tokenization", action="store_true")
    args = parser.parse_args(argv)

    spec = load_spec(args.model, models_dir=REPO / "models", env={})
    embedder = Embedder(spec, device=args.device, env={})
    chunker = Chunker(embedder.tokenizer, max_tokens=256, overlap_tokens=32,
                      model_max_tokens=spec.max_seq_tokens, cls_id=embedder.info.cls_id,
                      sep_id=embedder.info.sep_id, prompt_ids=embedder.info.passage_prompt_ids)
    with tempfile.TemporaryDirectory() as tmp:
        stream = args.stream or Path(tmp)
        if args.stream is None:
            generate_stream(args.scale, stream)
        batches = webhook_batches(stream)
    requests = [[c for cd in chunker.chunk(b) for c in cd.chunks] for b in batches]
    requests = [r for r in requests if r]
    lengths = np.array([c.n_tokens for r in requests for c in r])
    import torch

    print(f"machine: nproc {os.cpu_count()}, {cpu_model()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), device {embedder.device} {embedder.dtype}", flush=True)
    corpus = (f"--scale {args.scale}: {sum(len(b) for b in batches)} documents in {len(batches)} "
              f"webhook batches (~1 MiB), {len(lengths):,} chunks, {lengths.sum():,} tokens; chunk "
              f"tokens p10/p50/p90 {np.percentile(lengths, 10):.0f}/{np.percentile(lengths, 50):.0f}/"
              f"{np.percentile(lengths, 90):.0f}")
    print(corpus, flush=True)
    rows: list[tuple[str, str, str]] = []
    notes: list[str] = [f"Machine: `nproc` {os.cpu_count()}, {cpu_model()}; torch {torch.__version__}, "
                        f"{torch.get_num_threads()} intra-op threads; load average at start "
                        f"{os.getloadavg()[0]:.1f}.", f"Corpus: {corpus}."]
    if not args.skip_tokenization:
        bench_tokenization(embedder, chunker, batches, rows)
    if args.device == "cuda":
        bench_cuda(args, embedder, requests, rows, notes)
    else:
        bench_cpu(args, embedder, chunker, requests, rows, notes)
    notes.append(f"Load average at end {os.getloadavg()[0]:.1f}.")
    print("\n| measure | result | goal |\n|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")
    print()
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
