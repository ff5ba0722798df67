"""The endpoint's answer for each file, as JSON lines: the same script runs on this machine
and on aarch64 (emulated), and tests/integration/test_arm64.py compares the two.

    python tests/arm64/answers.py MODEL_DIR FILE...

Imports only what the Lambda image holds (pneumonia.serving and what it needs).
"""

from __future__ import annotations

import json
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
    model = Classifier.load(Path(sys.argv[1]))
    print(json.dumps({"machine": platform.machine()}))
    for name in sys.argv[2:]:
        print(json.dumps(answer(model, Path(name))), flush=True)


if __name__ == "__main__":
    main()
