"""The CPU a run used: model name and widest vector instruction set, for records and tables.

Training on CPU goes through oneDNN kernels picked at run time by instruction set,
so the same params can give other weights on another CPU family (README, "Devices").
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from functools import cache
from pathlib import Path

# Widest first: the first flag the CPU reports names its instruction set.
_ISA_FLAGS = (
    ("avx512f", "AVX-512"),
    ("avx2", "AVX2"),
    ("avx", "AVX"),
    ("sse4_2", "SSE4.2"),
    ("asimd", "NEON"),  # aarch64 Linux
)


@cache
def cpu() -> dict[str, str]:
    """{'model': 'AMD EPYC', 'isa': 'AVX2', 'cores': '2', 'onednn_isa_cap': ...}."""
    model = platform.processor() or platform.machine()
    isa = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        text = cpuinfo.read_text()
        found = re.search(r"^model name\s*:\s*(.*)$", text, re.MULTILINE)
        model = found.group(1).strip() if found else model
        flags_line = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.MULTILINE)
        flags = set(flags_line.group(1).split()) if flags_line else set()
        isa = next((name for flag, name in _ISA_FLAGS if flag in flags), isa)
    elif platform.system() == "Darwin":
        brand = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True
        )
        model = brand.stdout.strip() or model
        isa = "NEON" if platform.machine() == "arm64" else isa
    return {
        "model": model,
        "isa": isa,
        "cores": str(os.cpu_count()),
        # oneDNN's own switches, as set for this process (unset: TensorFlow's default).
        "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        "onednn_isa_cap": os.environ.get("ONEDNN_MAX_CPU_ISA", "none"),
    }


def describe() -> str:
    """'Linux x86_64, 2 cores (AMD EPYC, AVX2), Python 3.11.7'."""
    info = cpu()
    return (
        f"{platform.system()} {platform.machine()}, {info['cores']} cores "
        f"({info['model']}, {info['isa']}), Python {platform.python_version()}"
    )
