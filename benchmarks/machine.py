"""Machine readings shared by the benchmarks (imported as `benchmarks.machine`; ROOT is on sys.path)."""

from __future__ import annotations

import os


def machine_busy_s() -> float:
    """CPU seconds all processes on the machine spent busy (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
