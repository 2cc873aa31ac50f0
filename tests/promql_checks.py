"""Checks on the PromQL in deploy/ (rules and dashboard panels), made on the parsed AST
(``promql_parser``), never by matching text:

- :data:`EXPORTED`: the metrics the worker exports on the admin listener's ``/metrics``
  (README, "Operating it") with their labels; :func:`unknown_references` lists what an
  expression reads that is not among them. Such a rule or panel evaluates to nothing, silently.
- :func:`unguarded_divisions`: divisions whose divisor is not filtered with ``> 0``, which turn
  "no traffic" into NaN (0/0) instead of no sample.

Used by tests/test_prometheus_rules.py and tests/test_dashboard.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import promql_parser

#: Labels every scraped series carries (Prometheus target labels).
TARGET_LABELS = frozenset({"job", "instance"})

_COUNTERS = {
    "memory_worker_documents_received_total": {"collection"},
    "memory_worker_documents_accepted_total": {"collection"},
    "memory_worker_documents_checked_total": {"collection"},
    "memory_worker_documents_invalid_total": {"collection", "reason"},
    "memory_worker_documents_dead_lettered_total": {"stage"},
    "memory_worker_requests_refused_total": {"status"},
    "memory_worker_prepared_documents_total": set(),
    "memory_worker_prepared_skipped_stale_total": set(),
    "memory_worker_chunks_embedded_total": set(),
    "memory_worker_tokens_embedded_total": set(),
    "memory_worker_embedding_padded_tokens_total": set(),
    "memory_worker_embedding_batches_total": set(),
    "memory_worker_embedding_seconds_total": set(),
    "memory_worker_embedding_cache_hits_total": set(),
    "memory_worker_embedding_cache_misses_total": set(),
    "memory_worker_sink_upserts_total": {"sink"},
    "memory_worker_sink_deletes_total": {"sink"},
    "memory_worker_sink_retries_total": {"sink"},
    "memory_worker_sink_errors_total": {"sink"},
    "memory_worker_sink_vectors_missing_total": {"sink"},
    "memory_worker_privacy_masked_total": {"collection", "entity"},
    "memory_worker_quality_checked_total": {"collection"},
    "memory_worker_quality_failed_total": {"collection", "rule"},
    "memory_worker_metadata_dropped_total": {"collection", "field"},
}
_HISTOGRAMS = {
    "memory_worker_end_to_end_lag_seconds": {"sink"},
    "memory_worker_sink_call_seconds": {"sink", "operation"},
    "memory_worker_webhook_accept_seconds": set(),
    "memory_worker_spool_append_seconds": set(),
    "memory_worker_query_seconds": set(),
}
_GAUGES = {
    "memory_worker_build_info": {"version", "model", "backend", "device"},
    "memory_worker_spool_entries": set(),
    "memory_worker_spool_bytes": set(),
    "memory_worker_spool_max_bytes": set(),
    "memory_worker_prepared_bytes": set(),
    "memory_worker_prepared_max_bytes": set(),
    "memory_worker_sink_behind_entries": {"sink"},
    "memory_worker_sink_prepared_backlog_records": {"sink"},
    "memory_worker_sink_prepared_backlog_bytes": {"sink"},
    "memory_worker_sink_lag_seconds": {"sink"},
    "memory_worker_sink_state": {"sink", "state"},
    "memory_worker_dead_letters": set(),
    "memory_worker_quality_valid_ratio": {"collection"},
    "memory_worker_draining": set(),
    # CUDA only; utilization and device memory need NVML (nvidia-ml-py).
    "memory_worker_gpu_memory_allocated_bytes": {"device"},
    "memory_worker_gpu_memory_reserved_bytes": {"device"},
    "memory_worker_gpu_utilization_ratio": {"device"},
    "memory_worker_gpu_memory_used_bytes": {"device"},
    "memory_worker_gpu_memory_total_bytes": {"device"},
    # Kafka sources only.
    "memory_worker_dekaf_lag_offsets": {"topic", "partition"},
    "memory_worker_kafka_lag_offsets": {"topic", "partition"},
}


def _series() -> dict[str, frozenset[str]]:
    out = {name: frozenset(labels) for name, labels in {**_COUNTERS, **_GAUGES}.items()}
    for name, labels in _HISTOGRAMS.items():
        out[f"{name}_bucket"] = frozenset(labels | {"le"})
        out[f"{name}_sum"] = frozenset(labels)
        out[f"{name}_count"] = frozenset(labels)
    out["up"] = frozenset()  # Prometheus's own, per target
    return out


#: Series name -> the labels it carries besides the target labels.
EXPORTED: dict[str, frozenset[str]] = _series()

#: Series that exist only on a CUDA device.
CUDA_ONLY = frozenset(name for name in EXPORTED if name.startswith("memory_worker_gpu_"))


@dataclass(frozen=True)
class Selector:
    """One vector selector of an expression: its metric name and label matchers, each as its
    PromQL text (``sink=~"local"``)."""

    name: str | None
    matchers: frozenset[str]
    labels: frozenset[str]  # the labels it matches on


def selectors(expr: str) -> list[Selector]:
    """Every vector selector in ``expr`` (range and subquery selectors included).

    Raises ``ValueError`` (from the parser) if ``expr`` is not PromQL."""
    found: list[Selector] = []

    def visit(node) -> None:  # noqa: ANN001 - a promql_parser.Expr
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name
            matchers = [m for m in node.matchers.matchers if m.name != "__name__"]
            for m in node.matchers.matchers:
                if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal:
                    name = name or m.value
            found.append(Selector(name, frozenset(str(m) for m in matchers),
                                  frozenset(m.name for m in matchers)))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def unknown_references(expr: str, recorded: frozenset[str] = frozenset()) -> list[str]:
    """What ``expr`` reads that the worker does not export: unknown metric names, selectors
    without a name, and label matchers on labels the metric does not carry. ``recorded`` are
    names produced by recording rules, accepted as they are."""
    problems = []
    for sel in selectors(expr):
        if sel.name is None:
            problems.append(f"a selector without a metric name in {expr!r}")
        elif sel.name in recorded:
            continue
        elif sel.name not in EXPORTED:
            problems.append(f"{sel.name} is not exported by the worker")
        else:
            extra = sel.labels - EXPORTED[sel.name] - TARGET_LABELS
            if extra:
                problems.append(f"{sel.name} has no label {', '.join(sorted(extra))}")
    return problems


def _unparen(node):  # noqa: ANN001, ANN202 - promql_parser.Expr
    while isinstance(node, promql_parser.ParenExpr):
        node = node.expr
    return node


def _is_positive_filter(node) -> bool:  # noqa: ANN001
    """``x > 0`` (a filter, not ``> bool``), or a non-zero number."""
    node = _unparen(node)
    if isinstance(node, promql_parser.NumberLiteral):
        return node.val != 0
    return (isinstance(node, promql_parser.BinaryExpr) and str(node.op) == ">"
            and not (node.modifier is not None and node.modifier.return_bool)
            and isinstance(_unparen(node.rhs), promql_parser.NumberLiteral)
            and _unparen(node.rhs).val == 0)


def unguarded_divisions(expr: str) -> list[str]:
    """The divisors in ``expr`` that can be 0: each should be ``(… > 0)`` or a constant."""
    found: list[str] = []

    def visit(node) -> None:  # noqa: ANN001
        if isinstance(node, promql_parser.BinaryExpr) and str(node.op) == "/" \
                and not _is_positive_filter(node.rhs):
            found.append(str(node.rhs))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found
