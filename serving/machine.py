"""The machine every published figure names."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import psutil


def describe_machine() -> str:
    """CPU model, cores and memory: what every published figure names."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}")
