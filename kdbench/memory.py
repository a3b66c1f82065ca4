"""Peak memory of one stretch of work (a run, or a fused column), for result rows and
benchmarks.

On a CUDA device it is the caching allocator's peak (``torch.cuda.max_memory_allocated``),
reset with ``torch.cuda.reset_peak_memory_stats``. On the CPU it is the process's peak
resident set size: on Linux ``VmHWM`` of ``/proc/self/status``, which writing ``5`` to
``/proc/self/clear_refs`` resets to the current resident set; elsewhere (or where that
file cannot be written) ``getrusage``'s ``ru_maxrss``, the peak of the process's whole
life, which cannot be reset — :func:`reset_peak` then returns False and the figure may
belong to earlier work of the same process (several columns trained inline).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak(device: torch.device) -> bool:
    """Start a new peak from now; False when the platform cannot (the peak stays lifetime)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_mb(device: torch.device) -> float | None:
    """The peak since the last :func:`reset_peak` (MB), or None where it cannot be read."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return round(hwm / 2**10, 1)
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)


def resident_mb() -> float | None:
    """The process's current resident set (MB; Linux only, else None)."""
    rss = _status_kb("VmRSS")
    return None if rss is None else round(rss / 2**10, 1)


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None
