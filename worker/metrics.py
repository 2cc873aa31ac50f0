"""Prometheus metrics for ``GET /metrics`` (one registry per process, passed in, never global)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

LAG_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600, 21600, 86400)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.documents_received = Counter("memory_worker_documents_received_total",
                                          "Documents received by the webhook", ["collection"], registry=r)
        self.documents_accepted = Counter("memory_worker_documents_accepted_total",
                                          "Documents spooled", ["collection"], registry=r)
        self.documents_dead_lettered = Counter("memory_worker_documents_dead_lettered_total",
                                               "Documents sent to the dead-letter store", ["stage"], registry=r)
        self.requests_refused = Counter("memory_worker_requests_refused_total",
                                        "Webhook requests refused", ["status"], registry=r)
        self.chunks_embedded = Counter("memory_worker_chunks_embedded_total", "Chunks run through the model",
                                       registry=r)
        self.tokens_embedded = Counter("memory_worker_tokens_embedded_total", "Tokens run through the model",
                                       registry=r)
        self.batches = Counter("memory_worker_embedding_batches_total", "Model batches", registry=r)
        self.embedding_seconds = Counter("memory_worker_embedding_seconds_total",
                                         "Seconds spent in model forward passes", registry=r)
        self.upserts = Counter("memory_worker_sink_upserts_total", "Vectors written", ["sink"], registry=r)
        self.deletes = Counter("memory_worker_sink_deletes_total", "Documents deleted", ["sink"], registry=r)
        self.retries = Counter("memory_worker_sink_retries_total", "Sink calls retried", ["sink"], registry=r)
        self.errors = Counter("memory_worker_sink_errors_total", "Sink passes that failed", ["sink"], registry=r)
        self.lag = Histogram("memory_worker_end_to_end_lag_seconds",
                             "Publish time (_meta.uuid) to visible in the sink", ["sink"],
                             buckets=LAG_BUCKETS_S, registry=r)
        self.query_seconds = Histogram("memory_worker_query_seconds", "POST /query latency", registry=r)
        self.uptime = Gauge("memory_worker_up", "1 while the worker runs", registry=r)
        self.uptime.set(1)

    def on_batch(self, chunks: int, tokens: int, seconds: float) -> None:
        self.chunks_embedded.inc(chunks)
        self.tokens_embedded.inc(tokens)
        self.batches.inc()
        self.embedding_seconds.inc(seconds)

    def observe_visible(self, sink: str, docs: list) -> None:  # noqa: ANN001
        """End-to-end lag: publish time (from _meta.uuid) to written in ``sink``."""
        now = time.time()
        for doc in docs:
            self.lag.labels(sink).observe(max(0.0, now - doc.published_at))

    def watch_spool(self, depth: Callable[[], int], size_bytes: Callable[[], int],
                    behind: Callable[[], dict[str, int]]) -> None:
        """Gauges read at scrape time."""

        class _Spool:
            def collect(self):  # noqa: ANN202
                yield GaugeMetricFamily("memory_worker_spool_depth", "Entries in the spool", value=depth())
                yield GaugeMetricFamily("memory_worker_spool_bytes", "Bytes in the spool", value=size_bytes())
                g = GaugeMetricFamily("memory_worker_sink_behind_entries",
                                      "Spool entries a sink has not confirmed", labels=["sink"])
                for sink, n in behind().items():
                    g.add_metric([sink], n)
                yield g

        self.registry.register(_Spool())

    def render(self) -> bytes:
        return generate_latest(self.registry)
