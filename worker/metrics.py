"""Prometheus metrics for ``GET /metrics`` on the admin listener (one registry per process,
passed in, never global).

Conventions (https://prometheus.io/docs/practices/naming/): base units, ``_total`` on counters,
``_seconds`` and ``_bytes`` suffixes, no ``_created`` series, the standard ``process_*`` and
``python_*`` collectors, ``memory_worker_build_info`` for what runs. Nothing here duplicates
Prometheus's own ``up``. Every metric is listed in README.md ("Operating it").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# ``_created`` doubles the series count and no dashboard reads it (process-wide setting).
disable_created_metrics()

LAG_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600, 21600, 86400)
#: Sink calls and queries: a local store answers in milliseconds, a vendor in tens to hundreds.
CALL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Webhook accepts and spool appends: an fsync is 0.1–10 ms; Estuary's budget is seconds.
ACCEPT_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SINK_STATES = ("starting", "ok", "failing", "misconfigured")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build_info = Gauge("memory_worker_build_info", "1, labelled with what runs",
                                ["version", "model", "backend", "device"], registry=r)
        # intake
        self.documents_received = Counter("memory_worker_documents_received_total",
                                          "Documents received (webhook and Kafka sources)", ["collection"],
                                          registry=r)
        self.documents_accepted = Counter("memory_worker_documents_accepted_total",
                                          "Documents spooled", ["collection"], registry=r)
        self.documents_dead_lettered = Counter("memory_worker_documents_dead_lettered_total",
                                               "Documents sent to the dead-letter store", ["stage"], registry=r)
        self.documents_checked = Counter("memory_worker_documents_checked_total",
                                         "Documents checked for validity (once each: at intake if refused "
                                         "there, else when prepared)", ["collection"], registry=r)
        self.documents_invalid = Counter("memory_worker_documents_invalid_total",
                                         "Documents that were not valid: refused by the schema (validate), "
                                         "dead-lettered by a quality rule (quality), or kept with a quality "
                                         "flag (flagged)", ["collection", "reason"], registry=r)
        self.requests_refused = Counter("memory_worker_requests_refused_total",
                                        "HTTP requests refused", ["status"], registry=r)
        self.webhook_accept_seconds = Histogram("memory_worker_webhook_accept_seconds",
                                                "Webhook request: body read to durable answer",
                                                buckets=ACCEPT_BUCKETS_S, registry=r)
        self.spool_append_seconds = Histogram("memory_worker_spool_append_seconds",
                                              "One fsync'd spool append, lock wait included",
                                              buckets=ACCEPT_BUCKETS_S, registry=r)
        # embedding
        self.chunks_embedded = Counter("memory_worker_chunks_embedded_total", "Chunks run through the model",
                                       registry=r)
        self.tokens_embedded = Counter("memory_worker_tokens_embedded_total", "Tokens run through the model",
                                       registry=r)
        self.batches = Counter("memory_worker_embedding_batches_total", "Model batches", registry=r)
        self.embedding_seconds = Counter("memory_worker_embedding_seconds_total",
                                         "Seconds spent in model forward passes", registry=r)
        self.prepared_documents = Counter("memory_worker_prepared_documents_total",
                                          "Document versions prepared (chunked, embedded) for the sinks",
                                          registry=r)
        self.prepared_stale = Counter("memory_worker_prepared_skipped_stale_total",
                                      "Versions dropped at prepare: every sink holds the same or newer",
                                      registry=r)
        # sinks
        self.upserts = Counter("memory_worker_sink_upserts_total", "Vectors written", ["sink"], registry=r)
        self.deletes = Counter("memory_worker_sink_deletes_total", "Documents deleted", ["sink"], registry=r)
        self.retries = Counter("memory_worker_sink_retries_total", "Sink calls retried", ["sink"], registry=r)
        self.errors = Counter("memory_worker_sink_errors_total", "Sink passes that failed", ["sink"], registry=r)
        self.vectors_missing = Counter("memory_worker_sink_vectors_missing_total",
                                       "Chunks a sink had to embed at write time (ledger and sink disagreed)",
                                       ["sink"], registry=r)
        self.sink_call_seconds = Histogram("memory_worker_sink_call_seconds",
                                           "One sink call, its retries and backoff included",
                                           ["sink", "operation"], buckets=CALL_BUCKETS_S, registry=r)
        self.lag = Histogram("memory_worker_end_to_end_lag_seconds",
                             "Freshness: publish time (_meta.uuid) to visible in the sink", ["sink"],
                             buckets=LAG_BUCKETS_S, registry=r)
        # queries
        self.query_seconds = Histogram("memory_worker_query_seconds", "POST /query latency",
                                       buckets=CALL_BUCKETS_S, registry=r)

    def declare(self, *, collections: Sequence[str], sinks: Sequence[str], sources: Sequence[str] = ()) -> None:
        """Every labelled counter's series at 0 from the start: a series that appears only with
        its first increment hides that increment from ``rate()`` and leaves panels empty."""
        for c in collections:
            for counter in (self.documents_received, self.documents_accepted, self.documents_checked):
                counter.labels(c)
            for reason in ("validate", "quality", "flagged"):
                self.documents_invalid.labels(c, reason)
        stages = ["validate", "quality", "revalidate", "prepare", *(f"sink:{n}" for n in sinks)]
        if sources:
            stages.append("decode")
        for stage in stages:
            self.documents_dead_lettered.labels(stage)
        for n in sinks:
            for counter in (self.upserts, self.deletes, self.retries, self.errors, self.vectors_missing):
                counter.labels(n)

    def set_build(self, *, version: str, model: str, backend: str, device: str) -> None:
        self.build_info.labels(version, model, backend, device).set(1)

    # -- callbacks the components are handed ------------------------------------------------------
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

    def on_sink_call(self, sink: str) -> Callable[[str, float], None]:
        """The observer of a :class:`worker.sinks.timed.TimedSink`."""
        return lambda operation, seconds: self.sink_call_seconds.labels(sink, operation).observe(seconds)

    def on_accepted(self, result) -> None:  # noqa: ANN001 - intake.Accepted
        """One intake request (webhook or Kafka source) is durable."""
        self.documents_received.labels(result.collection).inc(result.received)
        self.documents_accepted.labels(result.collection).inc(result.accepted)
        if result.dead_lettered:
            self.documents_dead_lettered.labels("validate").inc(result.dead_lettered)
            self.documents_checked.labels(result.collection).inc(result.dead_lettered)
            self.documents_invalid.labels(result.collection, "validate").inc(result.dead_lettered)

    def on_checked(self, collection: str, reason: str | None) -> None:
        """A document was screened when prepared (``worker.screen.Screen``)."""
        self.documents_checked.labels(collection).inc()
        if reason is not None:
            self.documents_invalid.labels(collection, reason).inc()

    def observe_visible(self, sink: str, docs: list) -> None:  # noqa: ANN001
        """End-to-end lag: publish time (from _meta.uuid) to written in ``sink``."""
        now = time.time()
        for doc in docs:
            self.lag.labels(sink).observe(max(0.0, now - doc.published_at))

    # -- read at scrape time ----------------------------------------------------------------------
    def watch(self, snapshot: Callable[[], dict]) -> None:
        """Gauges read at scrape time from ``snapshot()`` (the service's status numbers):
        ``{"spool": {entries, bytes, max_bytes}, "prepared": {bytes, max_bytes}, "dead_letters",
        "draining", "sinks": {name: {...}}}``."""
        self.registry.register(_Collector(lambda: _service_families(snapshot())))

    def watch_engine(self, stats: Callable[[], Any], cache: Any = None) -> None:  # noqa: ANN401
        """Padded tokens (engine stats) and embedding-cache hits and misses."""

        def families() -> list:
            s = stats()
            padded = CounterMetricFamily("memory_worker_embedding_padded_tokens_total",
                                         "Tokens the padded forward passes computed (padding ratio = "
                                         "1 - tokens_embedded / padded)", value=s.padded_tokens)
            shared = CounterMetricFamily("memory_worker_embedding_inflight_shared_total",
                                         "Chunks another request already had in the model (not run again)",
                                         value=s.inflight_shared)
            out = [padded, shared]
            if cache is not None:
                out.append(CounterMetricFamily("memory_worker_embedding_cache_hits_total",
                                               "Chunk vectors found in the embedding cache", value=cache.hits))
                out.append(CounterMetricFamily("memory_worker_embedding_cache_misses_total",
                                               "Chunk lookups the embedding cache did not hold",
                                               value=cache.misses))
            return out

        self.registry.register(_Collector(families))

    def watch_gpu(self, devices: Sequence[str]) -> None:
        """On CUDA devices: torch's allocated and reserved memory; utilization and device memory
        through NVML when ``nvidia-ml-py`` is installed. Nothing on CPU or MPS."""
        from worker.gpu_metrics import GpuCollector

        cuda = [d for d in devices if d.startswith("cuda")]
        if cuda:
            self.registry.register(GpuCollector(cuda))

    def watch_screen(self, screen) -> None:  # noqa: ANN001 - worker.screen.Screen
        """Privacy and data-quality counts (never values), read at scrape time."""
        self.registry.register(_Collector(lambda: _screen_families(screen)))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector:
    """A custom collector from a function returning metric families."""

    def __init__(self, families: Callable[[], Any]) -> None:
        self._families = families

    def collect(self):  # noqa: ANN201
        yield from self._families()


def _service_families(snap: dict) -> list:
    out = [
        GaugeMetricFamily("memory_worker_spool_entries", "Entries in the spool (not yet prepared)",
                          value=snap["spool"]["entries"]),
        GaugeMetricFamily("memory_worker_spool_bytes", "Bytes in the spool", value=snap["spool"]["bytes"]),
        GaugeMetricFamily("memory_worker_spool_max_bytes", "The spool's budget (spool.max_bytes)",
                          value=snap["spool"]["max_bytes"]),
        GaugeMetricFamily("memory_worker_prepared_bytes", "Bytes of prepared records some sink has not confirmed",
                          value=snap["prepared"]["bytes"]),
        GaugeMetricFamily("memory_worker_prepared_max_bytes",
                          "Prepared bytes at which preparation pauses (prepared.max_bytes)",
                          value=snap["prepared"]["max_bytes"]),
        GaugeMetricFamily("memory_worker_dead_letters", "Entries held in the dead-letter store",
                          value=snap["dead_letters"]),
        GaugeMetricFamily("memory_worker_draining", "1 while the worker shuts down", value=float(snap["draining"])),
    ]
    behind = GaugeMetricFamily("memory_worker_sink_behind_entries",
                               "Spool entries and prepared records a sink has not confirmed", labels=["sink"])
    records = GaugeMetricFamily("memory_worker_sink_prepared_backlog_records",
                                "Prepared records a sink has not confirmed", labels=["sink"])
    size = GaugeMetricFamily("memory_worker_sink_prepared_backlog_bytes",
                             "Bytes of prepared records a sink has not confirmed", labels=["sink"])
    lag = GaugeMetricFamily("memory_worker_sink_lag_seconds",
                            "Age of the oldest entry a sink has not confirmed (0 when caught up)",
                            labels=["sink"])
    state = GaugeMetricFamily("memory_worker_sink_state", "1 for the state a sink loop is in",
                              labels=["sink", "state"])
    for sink, s in snap["sinks"].items():
        behind.add_metric([sink], s["behind_entries"])
        records.add_metric([sink], s["prepared_records"])
        size.add_metric([sink], s["prepared_bytes"])
        lag.add_metric([sink], s["lag_s"] or 0.0)
        for name in SINK_STATES:
            state.add_metric([sink, name], 1.0 if s["state"] == name else 0.0)
    return [*out, behind, records, size, lag, state]


def _screen_families(screen) -> list:  # noqa: ANN001
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
                                 "Documents that failed a data-quality rule", labels=["collection", "rule"])
    for (collection, rule), n in sorted(c.failed.items()):
        failed.add_metric([collection, rule], n)
    ratio = GaugeMetricFamily("memory_worker_quality_valid_ratio",
                              "Valid share of the last documents per collection", labels=["collection"])
    for collection, r in sorted(screen.ratios().items()):
        ratio.add_metric([collection], r)
    dropped = CounterMetricFamily("memory_worker_metadata_dropped_total",
                                  "Metadata values left out because they do not fit their field's declared "
                                  "type", labels=["collection", "field"])
    for collection, binding in sorted(screen.bindings.items()):
        for name, n in sorted(binding.fields.dropped.items()):
            dropped.add_metric([collection, name], n)
    return [dropped, entities, checked, failed, ratio]
