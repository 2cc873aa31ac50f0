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
        self.vectors_missing = Counter("memory_worker_sink_vectors_missing_total",
                                       "Chunks a sink had to embed at write time (ledger and sink disagreed)",
                                       ["sink"], registry=r)
        self.prepared_documents = Counter("memory_worker_prepared_documents_total",
                                          "Document versions prepared (chunked, embedded) for the sinks",
                                          registry=r)
        self.prepared_stale = Counter("memory_worker_prepared_skipped_stale_total",
                                      "Versions dropped at prepare: every sink holds the same or newer",
                                      registry=r)
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

    def on_prepared(self, stats) -> None:  # noqa: ANN001 - ApplyStats
        self.prepared_documents.inc(stats.documents - stats.skipped_stale)
        self.prepared_stale.inc(stats.skipped_stale)

    def on_written(self, sink: str, out) -> None:  # noqa: ANN001 - WriteOutcome
        self.upserts.labels(sink).inc(out.records)
        self.deletes.labels(sink).inc(len(out.deleted))
        if out.dead_lettered:  # records the sink refused for good (filed by the writer)
            self.documents_dead_lettered.labels(f"sink:{sink}").inc(out.dead_lettered)
        if out.vectors_missing:
            self.vectors_missing.labels(sink).inc(out.vectors_missing)

    def on_retry(self, sink: str):  # noqa: ANN201
        """The ``on_retry`` callback handed to a sink: counts real retries."""
        counter = self.retries.labels(sink)
        return lambda exc, sleep_s: counter.inc()

    def observe_visible(self, sink: str, docs: list) -> None:  # noqa: ANN001
        """End-to-end lag: publish time (from _meta.uuid) to written in ``sink``."""
        now = time.time()
        for doc in docs:
            self.lag.labels(sink).observe(max(0.0, now - doc.published_at))

    def watch(self, snapshot: Callable[[], dict]) -> None:
        """Gauges read at scrape time from ``snapshot()`` (the service's status numbers):
        ``{"spool": {"depth", "bytes"}, "prepared": {"bytes"}, "sinks": {name: {...}}}``."""

        class _Gauges:
            def collect(self):  # noqa: ANN202
                snap = snapshot()
                yield GaugeMetricFamily("memory_worker_spool_depth", "Entries in the spool (not yet prepared)",
                                        value=snap["spool"]["depth"])
                yield GaugeMetricFamily("memory_worker_spool_bytes", "Bytes in the spool",
                                        value=snap["spool"]["bytes"])
                yield GaugeMetricFamily("memory_worker_prepared_bytes",
                                        "Bytes of prepared records some sink has not confirmed",
                                        value=snap["prepared"]["bytes"])
                behind = GaugeMetricFamily("memory_worker_sink_behind_entries",
                                           "Spool entries and prepared records a sink has not confirmed",
                                           labels=["sink"])
                records = GaugeMetricFamily("memory_worker_sink_prepared_backlog_records",
                                            "Prepared records a sink has not confirmed", labels=["sink"])
                size = GaugeMetricFamily("memory_worker_sink_prepared_backlog_bytes",
                                         "Bytes of prepared records a sink has not confirmed", labels=["sink"])
                state = GaugeMetricFamily("memory_worker_sink_state",
                                          "1 for the state a sink loop is in", labels=["sink", "state"])
                for sink, s in snap["sinks"].items():
                    behind.add_metric([sink], s["behind_entries"])
                    records.add_metric([sink], s["prepared_records"])
                    size.add_metric([sink], s["prepared_bytes"])
                    for name in ("starting", "ok", "failing", "misconfigured"):
                        state.add_metric([sink, name], 1.0 if s["state"] == name else 0.0)
                yield behind
                yield records
                yield size
                yield state

        self.registry.register(_Gauges())

    def watch_screen(self, screen) -> None:  # noqa: ANN001 - worker.screen.Screen
        """Privacy and data-quality counts (never values), read at scrape time."""

        class _Screen:
            def collect(self):  # noqa: ANN202
                from prometheus_client.core import CounterMetricFamily

                c = screen.counters
                entities = CounterMetricFamily("memory_worker_privacy_masked_total",
                                               "Values masked before embedding, by entity type",
                                               labels=["collection", "entity"])
                for (collection, entity), n in sorted(c.entities.items()):
                    entities.add_metric([collection, entity], n)
                checked = CounterMetricFamily("memory_worker_quality_checked_total",
                                              "Documents checked by data-quality rules", labels=["collection"])
                for collection, n in sorted(c.checked.items()):
                    checked.add_metric([collection], n)
                failed = CounterMetricFamily("memory_worker_quality_failed_total",
                                             "Documents that failed a data-quality rule",
                                             labels=["collection", "rule"])
                for (collection, rule), n in sorted(c.failed.items()):
                    failed.add_metric([collection, rule], n)
                ratio = GaugeMetricFamily("memory_worker_quality_valid_ratio",
                                          "Valid share of the last documents per collection",
                                          labels=["collection"])
                for collection, r in sorted(screen.ratios().items()):
                    ratio.add_metric([collection], r)
                dropped = CounterMetricFamily("memory_worker_metadata_dropped_total",
                                              "Metadata values left out because they do not fit "
                                              "their field's declared type", labels=["collection", "field"])
                for collection, binding in sorted(screen.bindings.items()):
                    for name, n in sorted(binding.fields.dropped.items()):
                        dropped.add_metric([collection, name], n)
                yield dropped
                yield entities
                yield checked
                yield failed
                yield ratio

        self.registry.register(_Screen())

    def render(self) -> bytes:
        return generate_latest(self.registry)
