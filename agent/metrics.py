"""Machine facts for heartbeats: OS, Python, CPU, load, memory, disk, and GPUs through
NVML when the `nvidia-ml-py` package and a driver are present."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

import psutil

from schemas.messages import Gpu, Metrics


@functools.cache
def _nvml() -> Any:
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no package, no driver, no GPU: report none
        return None


def gpus() -> list[Gpu]:
    nvml = _nvml()
    if nvml is None:
        return []
    found = []
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        name = nvml.nvmlDeviceGetName(handle)
        found.append(
            Gpu(
                name=name.decode() if isinstance(name, bytes) else str(name),
                memory_total=int(memory.total),
                memory_used=int(memory.used),
                utilization=float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
            )
        )
    return found


def collect(directory: Path) -> Metrics:
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(str(directory))
    return Metrics(
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        cpu_count=os.cpu_count() or 1,
        cpu_percent=psutil.cpu_percent(interval=None),  # since the previous call
        load=os.getloadavg(),
        memory_total=memory.total,
        memory_used=memory.total - memory.available,
        disk_total=disk.total,
        disk_free=disk.free,
        gpus=gpus(),
    )


def host_context(agent_id: str, name: str) -> dict[str, Any]:
    """The `agent`, `machine` and `python` expression contexts of a job."""
    return {
        "agent": {"id": agent_id, "name": name},
        "machine": {
            "name": platform.node(),
            "os": platform.system(),
            "version": platform.version(),
        },
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
        },
    }
