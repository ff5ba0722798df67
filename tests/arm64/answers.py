"""The endpoint's answer for each file, as JSON lines: the same script runs on this machine
and on aarch64 (emulated), and tests/integration/test_arm64.py compares the two.

    python tests/arm64/answers.py MODEL_DIR FILE...

Imports only what the Lambda image holds (pneumonia.serving and what it needs).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from pneumonia.serving.classifier import Classifier
from pneumonia.serving.requests import ClientError


def answer(model: Classifier, path: Path) -> dict:
    """status 200 with the probability and decision, or the refusal's status and reason."""
    try:
        prediction = model.classify(path.read_bytes())
    except ClientError as refused:
        return {"file": path.name, "status": refused.status.value, "reason": refused.reason}
    return {
        "file": path.name,
        "status": 200,
        "probability": prediction.probability,
        "decision": prediction.decision,
        "label": prediction.label,
    }


def main() -> None:
    if os.environ.get("CHILD_PYTHON"):  # emulated: children go through qemu too
        sys.executable = os.environ["CHILD_PYTHON"]
        # The decoder child's caps are for real CPUs: qemu's start-up alone takes more than
        # 2 s of CPU and its reservations more than 1 GiB of address space. Emulated
        # seconds say nothing, so the caps are lifted here (the decode path is unchanged).
        from pneumonia.images import dicom

        dicom.CHILD_CPU_S, dicom.CHILD_TIMEOUT_S = 120, 300
        dicom.CHILD_MEMORY_BYTES = 64 << 30
    model = Classifier.load(Path(sys.argv[1]))
    print(json.dumps({"machine": platform.machine()}))
    for name in sys.argv[2:]:
        print(json.dumps(answer(model, Path(name))), flush=True)


if __name__ == "__main__":
    main()
