"""Smoke-test a deployed (or local) endpoint: /health and one prediction. Exit 1 on failure.

    python lambda/smoke.py --url https://ID.execute-api.REGION.amazonaws.com/prod \\
        --api-key KEY --expect-version sha256-... --image tests/events/smoke.jpeg
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path


def call(url: str, api_key: str | None, data: bytes | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "image/jpeg"} if data else {}
    if api_key:
        headers["x-api-key"] = api_key
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def smoke(base_url: str, api_key: str | None, expect_version: str | None, image: Path) -> list[str]:
    """Every problem found; empty when the endpoint is healthy."""
    problems = []
    status, health = call(f"{base_url.rstrip('/')}/health", api_key)
    if status != 200:
        problems.append(f"/health answered {status}: {health}")
    elif expect_version and health.get("modelVersion") != expect_version:
        problems.append(f"/health serves {health.get('modelVersion')}, expected {expect_version}")
    status, prediction = call(f"{base_url.rstrip('/')}/predict", api_key, image.read_bytes())
    if status != 200:
        problems.append(f"/predict answered {status}: {prediction}")
    elif not 0.0 <= prediction.get("probability_pneumonia", -1) <= 1.0:
        problems.append(f"/predict gave no probability: {prediction}")
    elif expect_version and prediction.get("modelVersion") != expect_version:
        problems.append(f"/predict answered with model {prediction.get('modelVersion')}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--api-key")
    parser.add_argument("--expect-version")
    parser.add_argument("--image", type=Path, required=True)
    args = parser.parse_args()
    problems = smoke(args.url, args.api_key, args.expect_version, args.image)
    for problem in problems:
        print(f"FAIL {problem}")
    print("smoke test failed" if problems else "smoke test passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
