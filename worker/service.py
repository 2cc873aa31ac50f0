"""``memory-worker run``: the HTTP API and the per-sink delivery loops in one process.

::

    Estuary --POST /estuary/webhook/{collection}--> Intake --fsync--> Spool
    Spool --SinkLoop(local)-----> Pipeline.apply(sinks=[local])     (one thread per sink)
    Spool --SinkLoop(pinecone)--> Pipeline.apply(sinks=[pinecone])  (shared engine + cache)
    AI Memory V2 --POST /query--> engine (query prompt) --> sink.query

Shutdown (SIGTERM/SIGINT): the webhook answers 503 + Retry-After at once, each sink loop
finishes the pass it is in, then the server stops; all within ``server.shutdown_timeout_s``.
Whatever was accepted and not yet delivered stays in the spool for the next start.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker import logs
from worker.config import WorkerConfig
from worker.documents import Binding
from worker.errors import (BodyTooLarge, DocumentInvalid, RequestInvalid, TransientError, WorkerError,
                           http_status)
from worker.intake import Intake, check_bearer
from worker.metrics import Metrics
from worker.pipeline import Pipeline
from worker.records import Chunk, QueryFilter
from worker.runtime import Runtime, build_runtime
from worker.spool import Spool

log = logging.getLogger(__name__)

# Bodies one sink pass takes from the spool (besides spool.batch_entries). A pass is written,
# confirmed and made visible as a whole, so its size bounds the time to visibility, the work a
# crash or a shutdown redoes, and memory: ~1 MiB of Gong is ~1,000 chunks, plenty to batch well.
PASS_MAX_BYTES = 1024 * 1024

# How server.shutdown_timeout_s is spent after SIGTERM: sink loops finish their pass, then
# requests still in flight finish, and what is left (at least the reserve) closes the stores.
SHUTDOWN_DRAIN_SHARE = 0.75
SHUTDOWN_REQUESTS_SHARE = 0.1
SHUTDOWN_RESERVE_SHARE = 0.1


class SinkLoop(threading.Thread):
    """Delivers spool entries to one sink, in order, confirming each pass after it is written."""

    def __init__(self, name: str, *, spool: Spool, pipeline: Pipeline, bindings: Mapping[str, Binding],
                 metrics: Metrics, batch_entries: int, poll_interval_s: float,
                 max_backoff_s: float = 30.0) -> None:
        super().__init__(name=f"sink-{name}", daemon=True)
        self.sink = name
        self.spool = spool
        self.pipeline = pipeline
        self.bindings = bindings
        self.metrics = metrics
        self.batch_entries = batch_entries
        self.poll_interval_s = poll_interval_s
        self.max_backoff_s = max_backoff_s
        self.stopping = threading.Event()
        self.idle = threading.Event()
        self.failures = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            entries = self.spool.read(self.sink, limit=self.batch_entries, max_bytes=PASS_MAX_BYTES)
            if not entries:
                self.idle.set()
                self.stopping.wait(self.poll_interval_s)
                continue
            self.idle.clear()
            try:
                self._deliver(entries)
            except Exception as exc:  # noqa: BLE001 - any failure leaves the entries in the spool
                self.failures += 1
                self.metrics.errors.labels(self.sink).inc()
                self.spool.record_error(self.sink, f"{type(exc).__name__}: {exc}")
                level = logging.WARNING if isinstance(exc, TransientError) else logging.ERROR
                log.log(level, "sink pass failed; will retry", exc_info=not isinstance(exc, TransientError),
                        extra={"sink": self.sink, "failures": self.failures, "error": str(exc)[:300]})
                retry_after = getattr(exc, "retry_after_s", None) or 0.0
                backoff = random.uniform(0, min(self.max_backoff_s, 0.5 * 2 ** min(self.failures, 10)))
                self.stopping.wait(max(backoff, retry_after))
                continue
            self.failures = 0

    def _deliver(self, entries: list) -> None:  # noqa: ANN001
        docs = []
        for entry in entries:
            binding = self.bindings.get(entry.collection)
            if binding is None:  # the binding was removed from the config since intake
                log.error("spool entry for an unbound collection skipped",
                          extra={"collection": entry.collection, "seq": entry.seq})
                continue
            for raw in orjson.loads(entry.body):
                try:
                    docs.append(binding.parse(raw))
                except DocumentInvalid:
                    pass  # validated at intake; only a config change gets here, already dead-lettered
        stats = self.pipeline.apply(docs, sinks=[self.sink])
        self.metrics.upserts.labels(self.sink).inc(stats.per_sink_written.get(self.sink, 0))
        self.metrics.deletes.labels(self.sink).inc(stats.deleted)
        if stats.dead_lettered:  # records the sink refused for good (filed by the pipeline)
            self.metrics.documents_dead_lettered.labels(f"sink:{self.sink}").inc(stats.dead_lettered)
        self.spool.confirm(self.sink, entries[-1].seq)


class Service:
    """Owns the spool, intake, loops and the ASGI app around a :class:`Runtime`."""

    def __init__(self, rt: Runtime, metrics: Metrics) -> None:
        self.rt = rt
        self.config: WorkerConfig = rt.config
        self.metrics = metrics
        self.started_at = time.time()
        self.draining = False
        self.spool = Spool(self.config.state_dir / "spool.sqlite", sinks=list(rt.sinks),
                           max_bytes=self.config.spool.max_bytes)
        self.intake = Intake(bindings=rt.bindings, spool=self.spool, dead_letters=rt.dead_letters,
                             max_depth=self.config.server.max_json_depth)
        self.loops = [SinkLoop(name, spool=self.spool, pipeline=rt.pipeline, bindings=rt.bindings,
                               metrics=metrics, batch_entries=self.config.spool.batch_entries,
                               poll_interval_s=self.config.spool.poll_interval_s)
                      for name in rt.sinks]
        metrics.watch_spool(self.spool.depth, lambda: self.spool.bytes,
                            lambda: {p.sink: p.behind_entries for p in self.spool.positions()})
        self.dekaf = None
        if self.config.sources.dekaf is not None:  # a second source, into the same spool
            from worker.dekaf import DekafSource

            self.dekaf = DekafSource(self.config.sources.dekaf, bindings=rt.bindings, intake=self.intake,
                                     dead_letters=rt.dead_letters, metrics=metrics,
                                     delivered_seq=lambda: min(p.delivered_seq for p in self.spool.positions()))

    def start(self) -> None:
        for loop in self.loops:
            loop.start()
        if self.dekaf is not None:
            self.dekaf.start()

    def drain(self, timeout_s: float) -> bool:
        """Stop accepting, let each loop finish its pass. True if all stopped in time."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        if self.dekaf is not None:  # leave the group first: commit what is spooled, stop reading
            self.dekaf.stop(timeout_s * 0.5)
        for loop in self.loops:
            loop.stopping.set()
        for loop in self.loops:
            loop.join(max(0.0, deadline - time.monotonic()))
        return not any(loop.is_alive() for loop in self.loops)

    # -- HTTP handlers -----------------------------------------------------------------------
    def _error(self, exc: WorkerError) -> JSONResponse:
        status = http_status(exc)
        self.metrics.requests_refused.labels(str(status)).inc()
        headers = {}
        if status == 503:
            headers["Retry-After"] = str(int(getattr(exc, "retry_after_s", None) or 5))
        return JSONResponse({"error": type(exc).__name__, "reason": str(exc)}, status_code=status,
                            headers=headers)

    async def webhook(self, request: Request) -> Response:
        collection = request.path_params["collection"]
        try:
            check_bearer(request.headers.get("authorization"),
                         _secret(self.config.server.webhook_token))
            if self.draining:
                raise TransientError("the worker is shutting down", retry_after_s=5)
            body = await _read_body(request, self.config.server.max_body_bytes)
            result = await run_in_threadpool(self.intake.accept, collection, body)
        except WorkerError as exc:
            return self._error(exc)
        self.metrics.documents_received.labels(collection).inc(result.received)
        self.metrics.documents_accepted.labels(collection).inc(result.accepted)
        if result.dead_lettered:
            self.metrics.documents_dead_lettered.labels("validate").inc(result.dead_lettered)
        return JSONResponse({"accepted": result.accepted, "dead_lettered": result.dead_lettered,
                             "received": result.received, "seq": result.seq})

    async def status(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self.status_report))

    def status_report(self) -> dict[str, Any]:
        sinks = {}
        for p in self.spool.positions():
            sinks[p.sink] = {"delivered_seq": p.delivered_seq, "behind_entries": p.behind_entries,
                             "lag_s": None if p.oldest_undelivered_age_s is None
                             else round(p.oldest_undelivered_age_s, 3),
                             "last_error": p.last_error, "last_error_at": p.error_at}
        engine = self.rt.engine.stats
        return {
            "spool": {"depth": self.spool.depth(), "bytes": self.spool.bytes,
                      "max_bytes": self.spool.max_bytes, "oldest_age_s": self.spool.oldest_age_s()},
            "sinks": sinks,
            "dead_letters": self.rt.dead_letters.count(),
            "model": {"id": self.rt.spec.id, "dimensions": self.rt.spec.dimensions,
                      "device": self.rt.embedder.device, "dtype": self.rt.embedder.dtype},
            "engine": {"chunks": engine.chunks, "tokens": engine.tokens, "batches": engine.batches,
                       "cache_hits": engine.cache_hits, "max_batch_tokens": self.rt.engine.max_batch_tokens},
            "dekaf": self.dekaf.status() if self.dekaf is not None else None,
            "draining": self.draining,
            "uptime_s": round(time.time() - self.started_at, 3),
        }

    async def schema(self, request: Request) -> Response:
        return JSONResponse({c: b.json_schema() for c, b in self.rt.bindings.items()})

    async def metrics_endpoint(self, request: Request) -> Response:
        body = await run_in_threadpool(self.metrics.render)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        def probe() -> dict[str, Any]:
            out = {}
            for name, sink in self.rt.sinks.items():
                try:
                    out[name] = sink.info().reachable
                except Exception:  # noqa: BLE001 - readiness reports, never raises
                    out[name] = False
            return out

        sinks = await run_in_threadpool(probe)
        ready = all(sinks.values()) and not self.draining
        return JSONResponse({"ready": ready, "model": self.rt.spec.id, "sinks": sinks,
                             "draining": self.draining}, status_code=200 if ready else 503)

    async def query(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            check_bearer(request.headers.get("authorization"), _secret(self.config.server.query_token))
            body = await _read_body(request, 1024 * 1024)
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise RequestInvalid(f"body is not valid JSON: {exc}") from None
            where, text, k, sink = _query_args(payload, list(self.rt.sinks))
            hits = await run_in_threadpool(self.run_query, text, k, where, sink)
        except WorkerError as exc:
            return self._error(exc)
        self.metrics.query_seconds.observe(time.perf_counter() - started)
        return JSONResponse({"results": [h.as_json() for h in hits]})

    def run_query(self, text: str, k: int, where: QueryFilter, sink: str) -> list:
        ids = self.rt.embedder.query_ids(text)
        chunk = Chunk(doc_id="", index=0, text=text, token_ids=ids, content_hash="")
        vector = self.rt.engine.embed([chunk], use_cache=False, priority=True)[0]
        return self.rt.sinks[sink].query(vector, k, where)

    def app(self) -> Starlette:
        webhook = [Route("/estuary/webhook/{collection:path}", self.webhook, methods=["POST"])] \
            if self.config.sources.webhook.enabled else []
        return Starlette(routes=[
            *webhook,
            Route("/estuary/status", self.status, methods=["GET"]),
            Route("/estuary/schema", self.schema, methods=["GET"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/query", self.query, methods=["POST"]),
        ])

    def close(self) -> None:
        """Close the spool once no loop can touch it (a loop stuck in a sink retry past the
        drain deadline keeps it open; the process is exiting anyway and SQLite needs no cleanup)."""
        for loop in self.loops:
            loop.stopping.set()
        if not any(loop.is_alive() for loop in self.loops):
            self.spool.close()


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes")
        except ValueError:
            raise RequestInvalid("Content-Length is not a number") from None
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise BodyTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(part)
    return b"".join(chunks)


def _query_args(payload: Any, sinks: list[str]) -> tuple[QueryFilter, str, int, str]:
    if not isinstance(payload, dict):
        raise RequestInvalid("query body must be a JSON object")
    text = payload.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RequestInvalid("'text' must be a non-empty string")
    k = payload.get("k", 5)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 1000:
        raise RequestInvalid("'k' must be an integer between 1 and 1000")
    sink = payload.get("sink", sinks[0])
    if sink not in sinks:
        raise RequestInvalid(f"'sink' must be one of {', '.join(sinks)}")
    f = payload.get("filter") or {}
    if not isinstance(f, dict):
        raise RequestInvalid("'filter' must be an object")
    unknown = set(f) - {"source", "collection", "published_after", "published_before"}
    if unknown:
        raise RequestInvalid(f"unknown filter keys: {', '.join(sorted(unknown))}")
    from worker.cli import _parse_time

    try:
        where = QueryFilter(source=f.get("source"), collection=f.get("collection"),
                            published_after=_parse_time(f.get("published_after")),
                            published_before=_parse_time(f.get("published_before")))
    except (TypeError, ValueError) as exc:
        raise RequestInvalid(f"bad time in filter: {exc}") from None
    return where, text, k, sink


class _Server(uvicorn.Server):
    """uvicorn, but a signal first drains the service (503s, loops finish) before exiting."""

    def __init__(self, config: uvicorn.Config, service: Service, timeout_s: float) -> None:
        super().__init__(config)
        self.service = service
        self.timeout_s = timeout_s
        self.deadline: float | None = None  # monotonic; set by the first signal
        self._draining = False

    def handle_exit(self, sig: int, frame: Any) -> None:  # noqa: ANN401
        if self._draining:  # a second signal: stop now
            self.force_exit = True
            self.should_exit = True
            return
        self._draining = True
        self.deadline = time.monotonic() + self.timeout_s
        self.service.draining = True
        log.info("shutting down: draining", extra={"signal": sig})

        def finish() -> None:
            drained = self.service.drain(self.timeout_s * SHUTDOWN_DRAIN_SHARE)
            log.info("drained" if drained else "drain timed out; undelivered entries stay spooled")
            self.should_exit = True

        threading.Thread(target=finish, name="drain", daemon=True).start()


def serve(config: WorkerConfig, env: Mapping[str, str]) -> int:
    logs.setup(config.log_level)
    metrics = Metrics()
    rt = build_runtime(config, env, metrics=metrics)
    service = Service(rt, metrics)
    service.start()
    uv = uvicorn.Config(service.app(), host=config.server.host, port=config.server.port,
                        log_level="warning", access_log=False, lifespan="off",
                        timeout_graceful_shutdown=config.server.shutdown_timeout_s * SHUTDOWN_REQUESTS_SHARE)
    server = _Server(uv, service, config.server.shutdown_timeout_s)
    log.info("serving", extra={"host": config.server.host, "port": config.server.port,
                               "sinks": ",".join(rt.sinks), "model": rt.spec.id})
    try:
        server.run()
    finally:
        # What is left of shutdown_timeout_s, less a reserve for closing and exiting (1 s when
        # we stop for another reason).
        left = 1.0 if server.deadline is None else (
            server.deadline - time.monotonic() - config.server.shutdown_timeout_s * SHUTDOWN_RESERVE_SHARE)
        if service.drain(max(0.0, left)):
            service.close()
            rt.close()
        else:
            # A pass is still running (a long embedding batch, a slow sink). Waiting for it, or
            # for the engine queue behind it, would overrun shutdown_timeout_s. Its entries are
            # unconfirmed, so the next start redelivers them (idempotent writes), as after a
            # crash. Exit at once: letting the interpreter tear down under a thread that is
            # inside torch aborts the process ("terminate called without an active exception").
            log.warning("shutdown deadline reached with a sink pass still running; exiting "
                        "without waiting, its entries stay spooled")
            logging.shutdown()
            os._exit(0)
    log.info("stopped")
    return 0
