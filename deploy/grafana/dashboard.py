"""Generate deploy/grafana/ai-memory-worker.json, the worker's Grafana dashboard, with
grafana-foundation-sdk.

    python deploy/grafana/dashboard.py           # writes the JSON
    python deploy/grafana/dashboard.py --check   # exits 1 if the committed JSON is stale

The panels answer the system's success criteria (end-to-end latency < 5 s, > 99.5 % valid,
1M events/day, 99.9 % uptime, errors = 0), each against its target line, then the internals an
operator looks at next: sinks, spool and backlog, embedding, GPU, queries.

Every expression reads the worker's own series (no recording rule), so the dashboard works on any
Prometheus that scrapes the admin listener, with or without deploy/prometheus/rules.yaml loaded.
Graphs use ``$__rate_interval``; the stat row uses the alerts' 5-minute window, so a red stat
and a firing alert agree. Template variables: ``$datasource`` (any Prometheus data source),
``$sink`` and ``$collection`` (multi-select, "All" is ``.*``).

:func:`expressions` lists every panel expression (name, PromQL) for tests that evaluate them on
a real Prometheus; the rules' expressions are in rules.yaml (``groups[].rules[].expr``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m

OUTPUT = Path(__file__).resolve().parent / "ai-memory-worker.json"
UID = "ai-memory-worker"

#: The success criteria's lines.
FRESHNESS_TARGET_S = 5.0
VALID_TARGET_RATIO = 0.995
#: 1M documents/day in documents per second.
THROUGHPUT_TARGET_PER_S = round(1_000_000 / 86_400, 3)

DATASOURCE = dash_m.DataSourceRef(type_val="prometheus", uid="${datasource}")
SINK = 'sink=~"$sink"'
COLLECTION = 'collection=~"$collection"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    """One panel target: a PromQL expression and the legend of its series."""

    expr: str
    legend: str


def quantiles(metric: str, by: str, matchers: str = "", window: str = RATE) -> list[Query]:
    """p50, p95 and p99 of a histogram, grouped ``by`` (besides ``le``)."""
    selector = f"{metric}_bucket{{{matchers}}}" if matchers else f"{metric}_bucket"
    grouping = f"{by}, le" if by else "le"
    label = f" {{{{{by}}}}}" if by else ""
    return [Query(f"histogram_quantile({q}, sum by ({grouping}) (rate({selector}[{window}])))", f"p{p}{label}")
            for q, p in (("0.5", "50"), ("0.95", "95"), ("0.99", "99"))]


def invalid_ratio(by: str, window: str) -> str:
    """Invalid share of checked documents; no sample (not NaN) where nothing was checked, 0 where
    nothing was invalid yet (the invalid counter appears with its first increment)."""
    grouping = f"sum by ({by})" if by else "sum"
    checked = f"{grouping} (rate(memory_worker_documents_checked_total{{{COLLECTION}}}[{window}]))"
    invalid = f"{grouping} (rate(memory_worker_documents_invalid_total{{{COLLECTION}}}[{window}]))"
    return f"({invalid} or 0 * {checked}) / ({checked} > 0)"


# -- panels --------------------------------------------------------------------------------------

def _thresholds(*steps: tuple[float | None, str]) -> dash_b.ThresholdsConfig:
    return (dash_b.ThresholdsConfig().mode(dash_m.ThresholdsMode.ABSOLUTE)
            .steps([dash_m.Threshold(value=value, color=color) for value, color in steps]))


def _targets(queries: list[Query]) -> list[prom_b.Dataquery]:
    return [prom_b.Dataquery().expr(q.expr).legend_format(q.legend).ref_id(chr(ord("A") + i))
            for i, q in enumerate(queries)]


def timeseries(title: str, description: str, unit: str, queries: list[Query], *,
               target_line: float | None = None, width: int = 12, max_value: float | None = None,
               minimum: float | None = 0) -> ts_b.Panel:
    """A time series; ``target_line`` draws the success criterion as a red threshold line."""
    panel = (ts_b.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
             .targets(_targets(queries)).height(8).span(width)
             .legend(common_b.VizLegendOptions().display_mode(common_m.LegendDisplayMode.LIST)
                     .placement(common_m.LegendPlacement.BOTTOM).show_legend(True))
             .tooltip(common_b.VizTooltipOptions().mode(common_m.TooltipDisplayMode.MULTI)
                      .sort(common_m.SortOrder.DESCENDING)))
    if minimum is not None:
        panel = panel.min(minimum)
    if max_value is not None:
        panel = panel.max(max_value)
    if target_line is not None:
        panel = (panel.thresholds(_thresholds((None, "green"), (target_line, "red")))
                 .thresholds_style(common_b.GraphThresholdsStyleConfig()
                                   .mode(common_m.GraphTresholdsStyleMode.LINE)))
    return panel


def stat(title: str, description: str, unit: str, queries: list[Query], *,
         steps: tuple[tuple[float | None, str], ...], width: int) -> stat_b.Panel:
    """A single value (the last one) coloured by ``steps``."""
    return (stat_b.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
            .targets(_targets(queries)).height(4).span(width)
            .thresholds(_thresholds(*steps))
            .color_mode(common_m.BigValueColorMode.BACKGROUND)
            .graph_mode(common_m.BigValueGraphMode.AREA)
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))


def overview() -> list:
    freshness_5m = quantiles("memory_worker_end_to_end_lag_seconds", "sink", SINK, "5m")[1]
    return [
        stat("Freshness p95 (slowest sink)",
             "Publish time to visible in the sink, p95 over 5 minutes, the slowest selected sink. "
             "Target < 5 s (alert MemoryWorkerFreshnessSlow).", "s",
             [Query(f"max({freshness_5m.expr})", "p95")],
             steps=((None, "green"), (FRESHNESS_TARGET_S, "red")), width=5),
        stat("Documents/s",
             f"Documents received over 5 minutes. 1M/day is {THROUGHPUT_TARGET_PER_S}/s.", "short",
             [Query(f"sum(rate(memory_worker_documents_received_total{{{COLLECTION}}}[5m]))", "documents/s")],
             steps=((None, "blue"),), width=5),
        stat("Valid ratio",
             "Valid share of the documents checked over 5 minutes, selected collections. "
             "Target > 99.5 % (alerts MemoryWorkerValidRatioFastBurn, ...SlowBurn).", "percentunit",
             [Query(f"1 - {invalid_ratio('', '5m')}", "valid")],
             steps=((None, "red"), (VALID_TARGET_RATIO, "green")), width=5),
        stat("Sinks ok / failing or parked",
             "Sinks whose loop is ok, and those failing or parked (misconfigured).", "short",
             [Query(f'sum(memory_worker_sink_state{{state="ok",{SINK}}})', "ok"),
              Query(f'sum(memory_worker_sink_state{{state=~"failing|misconfigured",{SINK}}})',
                    "failing or parked")],
             steps=((None, "green"),), width=5)
        .override_by_name("failing or parked", [
            dash_m.DynamicConfigValue(id_val="thresholds", value={
                "mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}]}),
        ]),
        stat("Dead letters stored",
             "Entries in the dead-letter store: inspect, replay or purge them in the console. "
             "Target 0 (alert MemoryWorkerDocumentsDeadLettered).", "short",
             [Query("sum(memory_worker_dead_letters)", "dead letters")],
             steps=((None, "green"), (1, "red")), width=4),
    ]


def freshness_and_throughput() -> list:
    return [
        timeseries("Freshness: publish to visible in the sink",
                   "End-to-end lag per sink, p50/p95/p99. The red line is the 5 s target.", "s",
                   quantiles("memory_worker_end_to_end_lag_seconds", "sink", SINK),
                   target_line=FRESHNESS_TARGET_S),
        timeseries("Documents/s and chunks/s",
                   f"Documents received and chunks embedded per second. The red line is 1M "
                   f"documents/day ({THROUGHPUT_TARGET_PER_S}/s).", "short",
                   [Query(f"sum(rate(memory_worker_documents_received_total{{{COLLECTION}}}[{RATE}]))",
                          "documents received/s"),
                    Query(f"sum(rate(memory_worker_chunks_embedded_total[{RATE}]))", "chunks embedded/s"),
                    Query(f"sum by (sink) (rate(memory_worker_end_to_end_lag_seconds_count{{{SINK}}}[{RATE}]))",
                          "documents visible/s {{sink}}")],
                   target_line=THROUGHPUT_TARGET_PER_S),
    ]


def sinks() -> list:
    return [
        timeseries("Sink errors and retries",
                   "Failed write passes and retried calls per second, per sink. Target: no errors.",
                   "short",
                   [Query(f"sum by (sink) (rate(memory_worker_sink_errors_total{{{SINK}}}[{RATE}]))",
                          "errors {{sink}}"),
                    Query(f"sum by (sink) (rate(memory_worker_sink_retries_total{{{SINK}}}[{RATE}]))",
                          "retries {{sink}}")]),
        timeseries("Sink call latency p95",
                   "One sink call, its retries and back-off included, per sink and operation.", "s",
                   [Query(f"histogram_quantile(0.95, sum by (sink, operation, le) "
                          f"(rate(memory_worker_sink_call_seconds_bucket{{{SINK}}}[{RATE}])))",
                          "{{sink}} {{operation}}")]),
    ]


def spool_and_backlog() -> list:
    return [
        timeseries("Spool entries and backlog per sink",
                   "Entries in the spool (not yet prepared); per sink, the spool entries and prepared "
                   "records it has not confirmed, and the prepared records alone.", "short",
                   [Query("sum by (instance) (memory_worker_spool_entries)", "spool entries {{instance}}"),
                    Query(f"sum by (sink) (memory_worker_sink_behind_entries{{{SINK}}})", "behind {{sink}}"),
                    Query(f"sum by (sink) (memory_worker_sink_prepared_backlog_records{{{SINK}}})",
                          "prepared backlog {{sink}}")], width=8),
        timeseries("Spool and prepared bytes vs budget",
                   "Spool bytes against spool.max_bytes (alert at 80 %), prepared bytes against "
                   "prepared.max_bytes, and each sink's prepared backlog.", "bytes",
                   [Query("sum by (instance) (memory_worker_spool_bytes)", "spool {{instance}}"),
                    Query("sum by (instance) (memory_worker_spool_max_bytes)", "spool budget {{instance}}"),
                    Query("sum by (instance) (memory_worker_prepared_bytes)", "prepared {{instance}}"),
                    Query("sum by (instance) (memory_worker_prepared_max_bytes)", "prepared budget {{instance}}"),
                    Query(f"sum by (sink) (memory_worker_sink_prepared_backlog_bytes{{{SINK}}})",
                          "prepared backlog {{sink}}")], width=8),
        timeseries("Sink lag: oldest unconfirmed entry",
                   "Age of the oldest entry each sink has not confirmed (0 when caught up).", "s",
                   [Query(f"max by (sink) (memory_worker_sink_lag_seconds{{{SINK}}})", "{{sink}}")],
                   target_line=FRESHNESS_TARGET_S, width=8),
    ]


def quality() -> list:
    return [
        timeseries("Valid ratio per collection",
                   "Valid share of checked documents per collection (1 - invalid / checked), and the "
                   "worker's own window of recent documents. The red line is the 99.5 % target.",
                   "percentunit",
                   [Query(f"1 - {invalid_ratio('collection', RATE)}", "{{collection}}"),
                    Query(f"memory_worker_quality_valid_ratio{{{COLLECTION}}}", "recent window {{collection}}")],
                   target_line=VALID_TARGET_RATIO, minimum=None, max_value=1),
        timeseries("Dead letters by stage",
                   "Documents sent to the dead-letter store per interval, by the stage that refused "
                   "them. Target: none.", "short",
                   [Query(f"sum by (stage) (increase(memory_worker_documents_dead_lettered_total[{RATE}]))",
                          "{{stage}}")]),
    ]


def embedding() -> list:
    tokens = f"sum(rate(memory_worker_tokens_embedded_total[{RATE}]))"
    padded = f"sum(rate(memory_worker_embedding_padded_tokens_total[{RATE}]))"
    hits = f"sum(rate(memory_worker_embedding_cache_hits_total[{RATE}]))"
    misses = f"sum(rate(memory_worker_embedding_cache_misses_total[{RATE}]))"
    return [
        timeseries("Embedding tokens/s",
                   "Tokens run through the model, and the tokens its padded batches computed.", "short",
                   [Query(tokens, "tokens/s"), Query(padded, "padded tokens/s")]),
        timeseries("Padding and embedding-cache hit ratios",
                   "Padding: the share of computed tokens that were padding (1 - tokens / padded). "
                   "Cache: the share of chunk lookups the embedding cache answered.", "percentunit",
                   [Query(f"1 - {tokens} / ({padded} > 0)", "padding"),
                    Query(f"{hits} / (({hits} + {misses}) > 0)", "cache hits")], max_value=1),
    ]


def gpu() -> list:
    return [
        timeseries("GPU memory",
                   "torch's allocated and reserved memory, and the device's used and total memory "
                   "(NVML). CUDA only.", "bytes",
                   [Query("memory_worker_gpu_memory_allocated_bytes", "allocated {{device}}"),
                    Query("memory_worker_gpu_memory_reserved_bytes", "reserved {{device}}"),
                    Query("memory_worker_gpu_memory_used_bytes", "used {{device}}"),
                    Query("memory_worker_gpu_memory_total_bytes", "total {{device}}")]),
        timeseries("GPU utilization",
                   "Share of time the GPU ran a kernel (NVML). CUDA only.", "percentunit",
                   [Query("memory_worker_gpu_utilization_ratio", "{{device}} {{instance}}")], max_value=1),
    ]


def queries_and_intake() -> list:
    return [
        timeseries("Query latency", "POST /query, p50/p95/p99.", "s",
                   quantiles("memory_worker_query_seconds", "")),
        timeseries("Webhook accept and spool append latency",
                   "Webhook request from body read to durable answer, and one fsync'd spool append, "
                   "p50/p95/p99.", "s",
                   [Query(q.expr, f"accept {q.legend}") for q in quantiles("memory_worker_webhook_accept_seconds", "")]
                   + [Query(q.expr, f"append {q.legend}") for q in quantiles("memory_worker_spool_append_seconds", "")]),
    ]


ROWS = (
    ("Success criteria", overview),
    ("Freshness and throughput", freshness_and_throughput),
    ("Sinks", sinks),
    ("Spool and backlog", spool_and_backlog),
    ("Data quality and dead letters", quality),
    ("Embedding", embedding),
    ("GPU", gpu),
    ("Queries and intake", queries_and_intake),
)


def _variables() -> list:
    def label_values(name: str, label: str, metric: str) -> dash_b.QueryVariable:
        return (dash_b.QueryVariable(name).label(label).datasource(DATASOURCE)
                .query(f"label_values({metric}, {name})")
                .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
                .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
                .multi(True).include_all(True).all_value(".*")
                .current(dash_m.VariableOption(selected=True, text="All", value="$__all")))

    return [
        dash_b.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        label_values("sink", "Sink", "memory_worker_sink_state"),
        label_values("collection", "Collection", "memory_worker_documents_received_total"),
    ]


def build() -> dict:
    """The dashboard as Grafana's JSON model."""
    board = (dash_b.Dashboard("ai-memory-worker").uid(UID)
             .description("Freshness, throughput, data quality, uptime and errors of ai-memory-worker, "
                          "against the system's success criteria.")
             .tags(["ai-memory-worker"]).editable().time("now-6h", "now").refresh("30s")
             .timezone("browser").tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
             .variables(_variables()))
    panel_id = 0
    for title, panels in ROWS:
        panel_id += 1
        board = board.with_row(dash_b.Row(title).id(panel_id))
        for panel in panels():
            panel_id += 1
            board = board.with_panel(panel.id(panel_id))
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def _panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def expressions(variables: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Every panel target as ``(name, expr)``, the name ``"<panel title> / <legend>"``.

    ``variables`` (e.g. ``{"$sink": "local", "$collection": ".*", "$__rate_interval": "1m"}``)
    are substituted, longest name first, to get expressions Prometheus can run as they are."""
    out = []
    for panel in _panels(build()["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in sorted((variables or {}).items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(name, value)
            out.append((f"{panel['title']} / {target.get('legendFormat') or target['refId']}", expr))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run python deploy/grafana/dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
