"""A benchmark process's memory, from /proc (Linux). Not collected by pytest."""
from __future__ import annotations

from pathlib import Path


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def peak_rss_mib() -> float:
    """This process's peak resident memory, MiB (VmHWM: unlike ``ru_maxrss``, not inherited from the parent that
    started it)."""
    return _status_mib("VmHWM")


def rss_mib() -> float:
    """This process's resident memory now, MiB."""
    return _status_mib("VmRSS")
