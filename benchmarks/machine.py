"""What every benchmark records about the machine: load, cores, peak memory, and interleaved repeats.

A timing taken while the machine was busy (1-minute load above the core count) is marked, not
silently mixed in; peak memory is read per measured section on Linux (VmHWM, reset through
/proc/self/clear_refs), with ru_maxrss as the fallback where that reset is unavailable.
"""

from __future__ import annotations

import os
import resource
import statistics
from collections.abc import Callable
from pathlib import Path


def machine_load() -> dict:
    """Load averages and core count now; `busy` when the 1-minute load exceeds the cores."""
    load1, load5, load15 = os.getloadavg()
    cores = os.cpu_count() or 1
    return {"load1": load1, "load5": load5, "load15": load15, "cores": cores, "busy": load1 > cores}


def print_load(label: str = "start") -> dict:
    load = machine_load()
    mark = "  ** BUSY: results taken now are not comparable **" if load["busy"] else ""
    print(f"machine load at {label}: {load['load1']:.2f} (1 min), {load['load5']:.2f} (5 min) on "
          f"{load['cores']} cores{mark}", flush=True)
    return load


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux); False where it cannot be reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak resident memory of this process since the last reset (MiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def interleaved(paths: dict[str, Callable[[], dict]], repeats: int) -> dict[str, list[dict]]:
    """Run each path `repeats` times in turn (a, b, a, b, ...), so a slow spell hits all of them.

    Each call returns a dict of measurements; the machine load before it is added as `load1`
    and `busy`.
    """
    runs: dict[str, list[dict]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, path in paths.items():
            load = machine_load()
            runs[name].append({**path(), "load1": load["load1"], "busy": load["busy"]})
    return runs


def median_spread(values: list[float]) -> dict:
    """Median, min and max of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": list(values)}


def current_rss_mib() -> float:
    """Resident memory of this process now (MiB); 0 where /proc is unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc), so the next section's peak RSS
    starts from what is really still in use, not from what an earlier section left cached."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
