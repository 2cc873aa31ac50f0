"""``memory-worker run``: the HTTP shell around the loops that :mod:`worker.runtime` built.

::

    Estuary --POST /estuary/webhook/{collection}--> Intake --fsync--> Spool
    (public listener; /metrics, /estuary/status, /estuary/schema and the console are on the
    admin listener, see worker/admin.py)
    Dekaf ----consumer group------------------------> Intake --------> Spool
    Spool --PrepareLoop (parse, guard, chunk, embed once)--> PreparedStore
    PreparedStore --SinkLoop(local | pinecone | weaviate)--> each sink, at its own pace
    AI Memory V2 --POST /query--> engine (query prompt, priority) --> sink.query

Shutdown (SIGTERM/SIGINT): the webhook answers 503 + Retry-After at once, sources stop, each
loop finishes the pass it is in, then the server stops; the process exits 0 within
``server.shutdown_timeout_s`` in every case (a watchdog ends it at the deadline, whatever is
still running). What was accepted and not yet delivered stays in the spool or the prepared
store for the next start.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from worker import logs
from worker.admin import AdminGuard, Listeners, admin_token, login_routes
from worker.config import WorkerConfig, secret_values
from worker.delivery import PrepareLoop, SinkLoop
from worker.errors import BodyTooLarge, ConfigError, RequestInvalid, TransientError, WorkerError, http_status
from worker.intake import Intake, check_bearer
from worker.mcp_server import McpEndpoint
from worker.metrics import Metrics
from worker.prepared import PreparedStore
from worker.contract import openapi
from worker.query import parse_request
from worker.scrub import Scrubber
from worker.spool import Spool

log = logging.getLogger(__name__)

# How server.shutdown_timeout_s is spent after SIGTERM: loops finish their pass, then requests
# still in flight finish, and what is left (at least the reserve) closes the stores.
SHUTDOWN_DRAIN_SHARE = 0.75
SHUTDOWN_REQUESTS_SHARE = 0.1
SHUTDOWN_RESERVE_SHARE = 0.1
#: The watchdog ends the process this long before the deadline (exit takes a moment too).
SHUTDOWN_EXIT_MARGIN_S = 0.25


class Service:
    """The ASGI app, status and shutdown around the components built by ``build_service``."""

    def __init__(self, rt: Any, *, metrics: Metrics, spool: Spool, prepared: PreparedStore,  # noqa: ANN401
                 intake: Intake, prepare_loop: PrepareLoop, loops: Mapping[str, SinkLoop],
                 sources: Sequence[Any] = (), generations: Any = None) -> None:  # noqa: ANN401
        self.rt = rt
        self.config: WorkerConfig = rt.config
        self.metrics = metrics
        self.spool = spool
        self.prepared = prepared
        self.intake = intake
        self.prepare_loop = prepare_loop
        self.sink_loops = dict(loops)
        self.sources = list(sources)
        self.started_at = time.time()
        self.draining = False
        self._closed = False
        #: worker/serving.py: queries routed by the serving generation, dual-writes (None: the
        #: runtime's own retriever, as before generations).
        self.generations = generations
        self.retriever = generations.retriever if generations is not None else rt.retriever()
        #: Masks secrets in every string status and the console show (vendor errors echo them).
        self.scrubber = Scrubber(secret_values(self.config))
        metrics.watch(self.gauges)

    @property
    def loops(self) -> list:
        """Every loop thread: the prepare loop and one per sink."""
        return [self.prepare_loop, *self.sink_loops.values()]

    @property
    def dekaf(self) -> Any:  # noqa: ANN401
        return next((s for s in self.sources if getattr(s, "kind", "") == "dekaf"), None)

    def start(self) -> None:
        if self.generations is not None:
            self.generations.start()
        for loop in self.loops:
            loop.start()
        for source in self.sources:
            source.start()

    def drain(self, timeout_s: float) -> bool:
        """Stop accepting, let each loop finish its pass. True if all stopped in time."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        for source in self.sources:  # leave the group first: stop reading
            source.stop(timeout_s * 0.5)
        if self.generations is not None:
            self.generations.stop()
        for loop in self.loops:
            loop.stopping.set()
        for loop in self.loops:
            if loop.ident is not None:
                loop.join(max(0.0, deadline - time.monotonic()))
        return not any(loop.is_alive() for loop in self.loops)

    # -- HTTP handlers -----------------------------------------------------------------------
    def _error(self, exc: WorkerError) -> JSONResponse:
        status = http_status(exc)
        self.metrics.requests_refused.labels(str(status)).inc()
        headers = {}
        if status == 503:
            headers["Retry-After"] = str(int(getattr(exc, "retry_after_s", None) or 5))
        body = {"error": type(exc).__name__, "reason": str(exc)}
        if getattr(exc, "field", None):
            body["field"] = exc.field  # type: ignore[attr-defined]
        return JSONResponse(body, status_code=status, headers=headers)

    async def webhook(self, request: Request) -> Response:
        collection = request.path_params["collection"]
        try:
            check_bearer(request.headers.get("authorization"),
                         _secret(self.config.server.webhook_token))
            if self.draining:
                raise TransientError("the worker is shutting down", retry_after_s=5)
            started = time.perf_counter()
            body = await _read_body(request, self.config.server.max_body_bytes)
            result = await run_in_threadpool(self.intake.accept, collection, body)
        except WorkerError as exc:
            return self._error(exc)
        self.metrics.webhook_accept_seconds.observe(time.perf_counter() - started)
        return JSONResponse({"accepted": result.accepted, "dead_lettered": result.dead_lettered,
                             "received": result.received, "seq": result.seq})

    async def status(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self.public_status))

    def public_status(self) -> dict[str, Any]:
        """:meth:`status_report` as people may see it: secrets masked in every string."""
        return self.scrubber.tree(self.status_report())

    def _sinks_report(self) -> dict[str, dict[str, Any]]:
        now = time.time()
        depth = self.spool.depth()
        unprepared_since = self.spool.oldest_received_at()
        out = {}
        for name, b in self.prepared.backlogs().items():
            loop = self.sink_loops.get(name)
            oldest = min((t for t in (b.oldest_received_at, unprepared_since) if t is not None), default=None)
            out[name] = {
                "state": loop.state if loop is not None else "stopped",
                "reason": loop.reason if loop is not None and loop.state != "ok" else None,
                "delivered_seq": b.delivered_spool_seq,
                "behind_entries": depth + b.records,
                "prepared_records": b.records, "prepared_bytes": b.bytes,
                "lag_s": None if oldest is None else round(max(0.0, now - oldest), 3),
                "last_error": b.last_error, "last_error_at": b.error_at,
                "vectors_missing": loop.vectors_missing if loop is not None else 0,
            }
        return out

    def gauges(self) -> dict[str, Any]:
        """The numbers /metrics reads at scrape time."""
        return {"spool": {"entries": self.spool.depth(), "bytes": self.spool.bytes,
                          "max_bytes": self.spool.max_bytes},
                "prepared": {"bytes": self.prepared.bytes, "max_bytes": self.prepared.max_bytes},
                "dead_letters": self.rt.dead_letters.count(), "draining": self.draining,
                "sinks": self._sinks_report()}

    def status_report(self) -> dict[str, Any]:
        engine = self.rt.engine.stats
        prep = self.prepare_loop
        return {
            "spool": {"depth": self.spool.depth(), "bytes": self.spool.bytes,
                      "max_bytes": self.spool.max_bytes, "oldest_age_s": self.spool.oldest_age_s()},
            "prepared": {"bytes": self.prepared.bytes, "max_bytes": self.prepared.max_bytes,
                         "state": prep.state, "reason": prep.reason if prep.state != "ok" else None,
                         "paused": prep.state == "paused",
                         "documents": prep.stats.documents, "skipped_stale": prep.stats.skipped_stale,
                         "chunks": prep.stats.chunks},
            "sinks": self._sinks_report(),
            "dead_letters": self.rt.dead_letters.count(),
            "privacy": self._privacy_report(),
            "quality": self._quality_report(),
            "model": {"id": self.rt.spec.id, "dimensions": self.rt.spec.dimensions,
                      "device": self.rt.embedder.device, "dtype": self.rt.embedder.dtype},
            "engine": {"chunks": engine.chunks, "tokens": engine.tokens, "batches": engine.batches,
                       "cache_hits": engine.cache_hits, "inflight_shared": engine.inflight_shared,
                       "max_batch_tokens": self.rt.engine.max_batch_tokens},
            "dekaf": self.dekaf.status() if self.dekaf is not None else None,
            "kafka": next((src.status() for src in self.sources if src.kind == "kafka"), None),
            "generations": self.generations.report() if self.generations is not None else None,
            "documents": self.rt.docstore.stats().as_json() if self.rt.docstore is not None else {"mode": "off"},
            "draining": self.draining,
            "uptime_s": round(time.time() - self.started_at, 3),
        }

    def _privacy_report(self) -> dict[str, dict[str, int]]:
        """Values masked per collection and entity type: counts, never values."""
        out: dict[str, dict[str, int]] = {}
        for (collection, entity), n in sorted(self.rt.screen.counters.entities.items()):
            out.setdefault(collection, {})[entity] = n
        return out

    def _quality_report(self) -> dict[str, dict[str, Any]]:
        screen = self.rt.screen
        ratios = screen.ratios()
        out: dict[str, dict[str, Any]] = {}
        for collection in sorted(set(screen.counters.checked) | set(ratios)):
            failed = {rule: n for (c, rule), n in screen.counters.failed.items() if c == collection}
            out[collection] = {"checked": screen.counters.checked.get(collection, 0), "failed": failed,
                               "valid_ratio": None if collection not in ratios else round(ratios[collection], 6)}
        return out

    async def schema(self, request: Request) -> Response:
        return JSONResponse({c: b.json_schema() for c, b in self.rt.bindings.items()})

    async def metrics_endpoint(self, request: Request) -> Response:
        body = await run_in_threadpool(self.metrics.render)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Local readiness only: model loaded, spool writable, not draining. Sinks are named
        (parked ones with their reason) but never flip readiness, and are never called here."""

        def probe() -> dict[str, Any]:
            try:
                self.spool.depth()
                spool_ok = True
            except Exception:  # noqa: BLE001 - readiness reports, never raises
                spool_ok = False
            sinks = {name: loop.state for name, loop in self.sink_loops.items()}
            parked = {name: loop.reason for name, loop in self.sink_loops.items()
                      if loop.state == "misconfigured"}
            return {"spool": spool_ok, "sinks": sinks, "parked": parked}

        checks = await run_in_threadpool(probe)
        ready = checks["spool"] and not self.draining
        return JSONResponse({"ready": ready, "model": self.rt.spec.id, "draining": self.draining, **checks},
                            status_code=200 if ready else 503)

    def _authorize_query(self, request: Request) -> None:
        check_bearer(request.headers.get("authorization"), _secret(self.config.server.query_token))

    async def query(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            self._authorize_query(request)
            body = await _read_body(request, 1024 * 1024)
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise RequestInvalid(f"body is not valid JSON: {exc}") from None
            req = parse_request(payload)
            response = await run_in_threadpool(self.retriever.search, req)
        except WorkerError as exc:
            return self._error(exc)
        self.metrics.query_seconds.observe(time.perf_counter() - started)
        return Response(orjson.dumps(response.model_dump(mode="json", exclude_none=True)),
                        media_type="application/json")

    async def query_sources(self, request: Request) -> Response:
        try:
            self._authorize_query(request)
        except WorkerError as exc:
            return self._error(exc)
        return JSONResponse([s.model_dump(mode="json") for s in self.retriever.sources()])

    async def query_document(self, request: Request) -> Response:
        try:
            self._authorize_query(request)
            doc_id = request.path_params["doc_id"]
            view = await run_in_threadpool(self.retriever.get_document, doc_id,
                                           request.query_params.get("sink"))
        except WorkerError as exc:
            return self._error(exc)
        if view is None:
            return JSONResponse({"error": f"no document {doc_id!r}", "field": "doc_id"}, status_code=404)
        return JSONResponse(view.model_dump(mode="json", exclude_none=True))

    async def openapi_endpoint(self, request: Request) -> Response:
        return JSONResponse(openapi())

    def public_app(self) -> Starlette:
        """The internet-facing routes: Estuary's webhook, AI Memory V2's queries, probes."""
        webhook = [Route("/estuary/webhook/{collection:path}", self.webhook, methods=["POST"])] \
            if self.config.sources.webhook.enabled else []
        # MCP (streamable HTTP) behind the query token; its session manager runs in the lifespan.
        mcp = McpEndpoint(self.retriever, authorize=self._authorize_query, refuse=self._error,
                          host=self.config.server.host)
        return Starlette(lifespan=mcp.lifespan, routes=[
            *webhook,
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/query", self.query, methods=["POST"]),
            Route("/query/sources", self.query_sources, methods=["GET"]),
            Route("/query/documents/{doc_id:path}", self.query_document, methods=["GET"]),
            Route("/openapi.json", self.openapi_endpoint, methods=["GET"]),
            Route("/mcp", mcp),
        ])

    def admin_routes(self) -> list[BaseRoute]:
        from worker.console import console_routes

        async def home(request: Request) -> Response:
            return RedirectResponse("/console/", status_code=303)

        return [
            Route("/", home, methods=["GET"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            Route("/estuary/status", self.status, methods=["GET"]),
            Route("/estuary/schema", self.schema, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            *login_routes(admin_token(self.config.server)),
            Mount("/console", routes=console_routes(self)),
        ]

    def admin_app(self) -> AdminGuard:
        """Operators' routes (metrics, status, schema, the console) behind ``server.admin_token``."""
        return AdminGuard(Starlette(routes=self.admin_routes()), admin_token(self.config.server))

    def app(self, admin_port: int | None = None) -> Listeners:
        """Both listeners' apps, routed by the port a connection arrived on (``admin_port``: the
        bound admin port; None serves the public routes only)."""
        return Listeners(self.public_app(), self.admin_app() if admin_port is not None else None, admin_port)

    def close(self) -> None:
        """Close the stores once no loop can touch them (a loop stuck in a sink retry past the
        drain deadline keeps them open; the process is exiting anyway and SQLite needs no
        cleanup)."""
        for loop in self.loops:
            loop.stopping.set()
        if self._closed or any(loop.is_alive() for loop in self.loops):
            return
        self._closed = True
        self.prepared.close()
        self.spool.close()
        self.rt.close()


def _secret(value: Any) -> str | None:  # noqa: ANN401
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


def _exit_now(message: str) -> None:
    """Leave at once with status 0: letting the interpreter tear down under a thread that is
    inside torch aborts the process ("terminate called without an active exception")."""
    log.warning(message)
    logging.shutdown()
    os._exit(0)


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
            log.info("drained" if drained else "drain timed out; undelivered work stays spooled")
            self.should_exit = True

        def watchdog(deadline: float) -> None:
            time.sleep(max(0.0, deadline - SHUTDOWN_EXIT_MARGIN_S - time.monotonic()))
            _exit_now("shutdown deadline reached with work still running; exiting, its entries "
                      "stay spooled")

        threading.Thread(target=finish, name="drain", daemon=True).start()
        threading.Thread(target=watchdog, args=(self.deadline,), name="shutdown-watchdog",
                         daemon=True).start()


def listen(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn (it listens); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"server: cannot listen on {host}:{port}: {exc.strerror}; free the port or "
                          "change server.port / server.admin_port") from None
    sock.set_inheritable(True)
    return sock


def run_server(service: Service) -> int:
    """Serve until SIGTERM/SIGINT; exits within ``server.shutdown_timeout_s`` of the signal."""
    config = service.config
    logs.setup(config.log_level, config.log_format)
    sockets = [listen(config.server.host, config.server.port)]
    if config.server.admin_port is not None:
        sockets.append(listen(config.server.admin_host, config.server.admin_port))
    if (config.server.admin_port is not None and admin_token(config.server) is None
            and config.server.admin_host not in ("127.0.0.1", "::1", "localhost")):
        log.warning("the admin listener is not on loopback and has no server.admin_token: anyone who "
                    "reaches it can read status and replay or purge dead letters",
                    extra={"admin": f"{config.server.admin_host}:{config.server.admin_port}"})
    # The model, tokenizer and libraries are millions of long-lived objects. Without this, every
    # full (generation 2) collection walks all of them, ~0.3 s with the GIL held, inside
    # whatever request allocated last. Frozen, they are skipped; only newer objects are walked.
    gc.collect()
    gc.freeze()
    service.start()
    uv = uvicorn.Config(service.app(config.server.admin_port), log_level="warning", access_log=False,
                        lifespan="on",
                        timeout_graceful_shutdown=config.server.shutdown_timeout_s * SHUTDOWN_REQUESTS_SHARE)
    server = _Server(uv, service, config.server.shutdown_timeout_s)
    log.info("serving", extra={"host": config.server.host, "port": config.server.port,
                               "admin": f"{config.server.admin_host}:{config.server.admin_port}"
                               if config.server.admin_port is not None else "off",
                               "sinks": ",".join(service.rt.sinks), "model": service.rt.spec.id})
    try:
        server.run(sockets=sockets)
    finally:
        # What is left of shutdown_timeout_s, less a reserve for closing and exiting (1 s when
        # we stop for another reason).
        left = 1.0 if server.deadline is None else (
            server.deadline - time.monotonic() - config.server.shutdown_timeout_s * SHUTDOWN_RESERVE_SHARE)
        if service.drain(max(0.0, left)):
            service.close()
        else:
            # A pass is still running (a long embedding batch, a slow sink). Waiting for it would
            # overrun shutdown_timeout_s; its work is unconfirmed, so the next start redoes it
            # (idempotent writes), as after a crash.
            _exit_now("shutdown deadline reached with a sink pass still running; exiting "
                      "without waiting, its entries stay spooled")
    log.info("stopped")
    return 0
