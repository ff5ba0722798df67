"""The local endpoint (pneumonia.serving.local) in a child process, for the tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path


def start_server(model_dir: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "pneumonia.serving.local", "--port", "0", *extra],
        env={**os.environ, "MODEL_DIR": str(model_dir), "POWERTOOLS_TRACE_DISABLED": "true"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"serving on (\S+)", line)
    assert match, f"no address announced: {line!r}"
    # The handler logs each request to stdout: drain it, or a full pipe stalls the server.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    return process, match.group(1)
