"""The machine a benchmark ran on, for the table's header."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path


def describe() -> str:
    """'Linux x86_64, 2 cores (AMD EPYC), Python 3.11.7'."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.*)", cpuinfo.read_text())
        cpu = found.group(1) if found else cpu
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), "
        f"Python {platform.python_version()}"
    )
