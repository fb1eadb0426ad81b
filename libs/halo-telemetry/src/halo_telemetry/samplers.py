"""Accelerator samplers: pynvml (NVIDIA), amdsmi (AMD), MLX/Metal, psutil (CPU/RAM).

Each sampler returns readings whose unreadable values are ``None`` — reported as unavailable,
never as 0 — so a dashboard can tell "idle" from "unknown".
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any

import psutil


@dataclass(frozen=True)
class AcceleratorSample:
    kind: str  # "cpu" | "nvidia" | "amd" | "mlx"
    device: int
    name: str
    utilization_ratio: float | None = None
    memory_used_bytes: float | None = None
    memory_total_bytes: float | None = None
    power_watts: float | None = None
    temperature_c: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_cpu() -> list[AcceleratorSample]:
    vm = psutil.virtual_memory()
    try:
        util: float | None = psutil.cpu_percent(interval=None) / 100.0
    except Exception:
        util = None
    return [AcceleratorSample("cpu", 0, f"{psutil.cpu_count()} cores", util, float(vm.used), float(vm.total))]


def sample_nvidia() -> list[AcceleratorSample]:
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
    except Exception:
        return []
    out = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)

        def read(fn: Any, *a: Any, h: Any = h) -> Any:
            try:
                return fn(h, *a)
            except Exception:
                return None

        util = read(pynvml.nvmlDeviceGetUtilizationRates)
        mem = read(pynvml.nvmlDeviceGetMemoryInfo)
        power = read(pynvml.nvmlDeviceGetPowerUsage)
        temp = read(pynvml.nvmlDeviceGetTemperature, 0)
        name = read(pynvml.nvmlDeviceGetName)
        out.append(AcceleratorSample(
            "nvidia", i, name.decode() if isinstance(name, bytes) else str(name),
            util.gpu / 100.0 if util is not None else None,
            float(mem.used) if mem is not None else None,
            float(mem.total) if mem is not None else None,
            power / 1000.0 if power is not None else None,
            float(temp) if temp is not None else None,
        ))
    return out


def sample_amd() -> list[AcceleratorSample]:
    try:
        import amdsmi  # type: ignore[import-not-found]

        amdsmi.amdsmi_init()
        handles = amdsmi.amdsmi_get_processor_handles()
    except Exception:
        return []
    out = []
    for i, h in enumerate(handles):
        def read(fn: Any, *a: Any, h: Any = h) -> Any:
            try:
                return fn(h, *a)
            except Exception:
                return None

        act = read(amdsmi.amdsmi_get_gpu_activity) or {}
        vram = read(amdsmi.amdsmi_get_gpu_vram_usage) or {}
        pw = read(amdsmi.amdsmi_get_power_info) or {}
        gfx = act.get("gfx_activity")
        out.append(AcceleratorSample(
            "amd", i, "AMD GPU",
            gfx / 100.0 if isinstance(gfx, (int, float)) else None,
            vram["vram_used"] * 2**20 if "vram_used" in vram else None,
            vram["vram_total"] * 2**20 if "vram_total" in vram else None,
            float(pw["current_socket_power"]) if isinstance(pw.get("current_socket_power"), (int, float)) else None,
        ))
    return out


_IOREG_UTILIZATION = re.compile(r'"Device Utilization %"\s*=\s*(\d+)')


def parse_ioreg_utilization(text: str) -> float | None:
    """Busy fraction (0..1) of the first Apple GPU in ``ioreg -c IOAccelerator`` output: the
    ``"Device Utilization %"`` entry of its ``PerformanceStatistics``; None when absent."""
    m = _IOREG_UTILIZATION.search(text)
    return min(1.0, int(m.group(1)) / 100.0) if m else None


def metal_utilization() -> float | None:
    """The Apple GPU's utilisation on macOS, read from the IOAccelerator's performance statistics with
    ``ioreg`` (no root needed, unlike powermetrics); None on other systems or when ioreg fails."""
    if sys.platform != "darwin":
        return None
    try:
        out = subprocess.run(["ioreg", "-r", "-d", "1", "-w", "0", "-c", "IOAccelerator"], capture_output=True,
                             text=True, timeout=2).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_ioreg_utilization(out)


def sample_mlx() -> list[AcceleratorSample]:
    try:
        import mlx.core as mx  # type: ignore[import-not-found]

        if not mx.metal.is_available():
            return []
        used = float(mx.get_active_memory())
        info = mx.metal.device_info()
    except Exception:
        return []
    total = info.get("memory_size")
    return [AcceleratorSample("mlx", 0, str(info.get("device_name", "Apple GPU")), metal_utilization(), used,
                              float(total) if total else None)]


def sample_all() -> list[AcceleratorSample]:
    """CPU/RAM always, then every accelerator whose library is present."""
    return sample_cpu() + sample_nvidia() + sample_amd() + sample_mlx()
