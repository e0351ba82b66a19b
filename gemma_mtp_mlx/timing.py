"""How long this process has run before the model loads: the first of the load phases."""

from __future__ import annotations

import os
import time

IMPORTED_AT = time.perf_counter()  # when gemma_mtp_mlx was first imported


def process_age() -> float:
    """Seconds since this process started (Linux: /proc, to 0.01 s), else since gemma_mtp_mlx
    was imported."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime in ticks
        return max(0.0, uptime - started)
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - IMPORTED_AT
