"""Prometheus gauges and counters of a Kafka source, per partition (read from its last status
snapshot at scrape time: no broker call on a scrape)."""

from __future__ import annotations

from typing import Any


class KafkaCollector:
    """Prometheus gauges read from the source's last snapshot at scrape time."""

    def __init__(self, source: Any) -> None:  # noqa: ANN401 - a KafkaSource
        self.source = source

    def collect(self):  # noqa: ANN201
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self.source.status()
        kind = self.source.kind
        labels = ["topic", "partition"]
        lag = GaugeMetricFamily(f"memory_worker_{kind}_lag_offsets",
                                "High watermark minus position (journal bytes on Dekaf)", labels=labels)
        position = GaugeMetricFamily(f"memory_worker_{kind}_position_offset", "Next offset to read",
                                     labels=labels)
        committed = GaugeMetricFamily(f"memory_worker_{kind}_committed_offset",
                                      "Offset committed (after every sink applied it)", labels=labels)
        high = GaugeMetricFamily(f"memory_worker_{kind}_high_watermark_offset", "Partition end offset",
                                 labels=labels)
        undelivered = GaugeMetricFamily(f"memory_worker_{kind}_undelivered_batches",
                                        "Batches read and spooled, not yet in every sink", labels=labels)
        for row in status["assignment"]:
            name = [row["topic"], str(row["partition"])]
            for family, value in ((lag, row["lag"]), (position, row["position"]),
                                  (committed, row["committed"]), (high, row["high_watermark"]),
                                  (undelivered, row["undelivered_batches"])):
                if value is not None:
                    family.add_metric(name, value)
        yield lag
        yield position
        yield committed
        yield high
        yield undelivered
        yield GaugeMetricFamily(f"memory_worker_{kind}_assigned_partitions",
                                "Partitions this worker owns in the group", value=len(status["assignment"]))
        yield CounterMetricFamily(f"memory_worker_{kind}_messages", "Messages consumed",
                                  value=status["messages"])
        yield CounterMetricFamily(f"memory_worker_{kind}_tombstones", "Tombstones consumed",
                                  value=status["tombstones"])
