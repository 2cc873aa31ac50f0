"""GPU gauges for ``/metrics`` on CUDA hosts, read at scrape time.

torch's caching allocator gives what this process holds (allocated by tensors, reserved by the
allocator); NVML (``nvidia-ml-py``, the ``gpu`` extra, installed in ``Dockerfile.gpu``) gives the
device's utilization and memory as ``nvidia-smi`` shows them, other processes included. Without
NVML only the torch gauges are exported; a failing NVML call drops its gauges for that scrape,
never the scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)


def _index(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


class GpuCollector:
    def __init__(self, devices: Sequence[str], *, torch: Any = None, nvml: Any = None) -> None:  # noqa: ANN401
        self.devices = list(devices)
        if torch is None:
            import torch
        self._torch = torch
        self._nvml = nvml if nvml is not None else _load_nvml()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        allocated = GaugeMetricFamily("memory_worker_gpu_memory_allocated_bytes",
                                      "GPU memory held by this process's tensors", labels=["device"])
        reserved = GaugeMetricFamily("memory_worker_gpu_memory_reserved_bytes",
                                     "GPU memory reserved by torch's caching allocator", labels=["device"])
        for device in self.devices:
            allocated.add_metric([device], float(self._torch.cuda.memory_allocated(_index(device))))
            reserved.add_metric([device], float(self._torch.cuda.memory_reserved(_index(device))))
        yield allocated
        yield reserved
        if self._nvml is None:
            return
        util = GaugeMetricFamily("memory_worker_gpu_utilization_ratio",
                                 "Share of the last sample period a kernel ran (NVML), 0-1", labels=["device"])
        used = GaugeMetricFamily("memory_worker_gpu_memory_used_bytes",
                                 "Device memory in use, all processes (NVML)", labels=["device"])
        total = GaugeMetricFamily("memory_worker_gpu_memory_total_bytes", "Device memory (NVML)",
                                  labels=["device"])
        try:
            for device in self.devices:
                handle = self._nvml.nvmlDeviceGetHandleByIndex(_index(device))
                util.add_metric([device], self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
                mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                used.add_metric([device], float(mem.used))
                total.add_metric([device], float(mem.total))
        except Exception as exc:  # noqa: BLE001 - a scrape never fails for NVML
            log.warning("NVML read failed; GPU utilization left out of this scrape", extra={"error": str(exc)})
            return
        yield util
        yield used
        yield total


def _load_nvml() -> Any:  # noqa: ANN401
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - no driver, no NVML: torch gauges only
        log.info("NVML unavailable; GPU utilization not exported", extra={"error": str(exc)})
        return None
    return pynvml
