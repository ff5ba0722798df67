"""Smoke-test a deployed (or local) endpoint: /health and one prediction. Exit 1 on failure.

Over HTTP, through API Gateway (the API key, when one is needed, is read from the API_KEY
environment variable, never from the command line, where every process can read it):

    API_KEY=... python lambda/smoke.py --url https://ID.execute-api.REGION.amazonaws.com/prod \\
        --expect-version sha256-... --image tests/events/smoke.jpeg

Or one published Lambda version invoked directly with API Gateway's event shape, before any
alias routes traffic to it (AWS credentials from the environment):

    python lambda/smoke.py --function NAME --qualifier 7 --expect-version sha256-... \\
        --image tests/events/smoke.jpeg
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

# (path, body or None for a GET) -> (HTTP status, JSON body)
Send = Callable[[str, bytes | None], tuple[int, dict]]


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


def over_http(base_url: str, api_key: str | None) -> Send:
    return lambda path, data: call(f"{base_url.rstrip('/')}{path}", api_key, data)


def api_gateway_event(path: str, data: bytes | None) -> dict:
    """A REST API proxy event as API Gateway hands the function a request (binary body)."""
    method = "POST" if data is not None else "GET"
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "image/jpeg"
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": path,
            "httpMethod": method,
            "path": path,
            "stage": "smoke",
            "requestId": "smoke-test",
            "identity": {"sourceIp": "127.0.0.1"},
        },
        "body": base64.b64encode(data).decode() if data is not None else None,
        "isBase64Encoded": data is not None,
    }


def invoking(function: str, qualifier: str, client: Any = None) -> Send:
    """Invoke one version of the function directly (no API Gateway, no alias, no API key)."""
    if client is None:
        import boto3

        client = boto3.client("lambda")

    def send(path: str, data: bytes | None) -> tuple[int, dict]:
        answer = client.invoke(
            FunctionName=function,
            Qualifier=qualifier,
            Payload=json.dumps(api_gateway_event(path, data)).encode(),
        )
        payload = json.loads(answer["Payload"].read() or b"{}")
        if answer.get("FunctionError"):
            return 502, {"error": f"{answer['FunctionError']}: {payload.get('errorType')}"}
        return int(payload.get("statusCode", 502)), json.loads(payload.get("body") or "{}")

    return send


def smoke(send: Send, expect_version: str | None, image: Path) -> list[str]:
    """Every problem found; empty when the endpoint is healthy."""
    problems = []
    status, health = send("/health", None)
    if status != 200:
        problems.append(f"/health answered {status}: {health}")
    elif expect_version and health.get("modelVersion") != expect_version:
        problems.append(f"/health serves {health.get('modelVersion')}, expected {expect_version}")
    status, prediction = send("/predict", image.read_bytes())
    if status != 200:
        problems.append(f"/predict answered {status}: {prediction}")
    elif not 0.0 <= prediction.get("probability_pneumonia", -1) <= 1.0:
        problems.append(f"/predict gave no probability: {prediction}")
    elif expect_version and prediction.get("modelVersion") != expect_version:
        problems.append(f"/predict answered with model {prediction.get('modelVersion')}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="the API's base URL; API_KEY from the environment")
    target.add_argument("--function", help="a Lambda function to invoke directly")
    parser.add_argument("--qualifier", help="with --function: the version to invoke")
    parser.add_argument("--expect-version")
    parser.add_argument("--image", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.function and not args.qualifier:
        parser.error("--function needs --qualifier (a published version)")
    send = (
        over_http(args.url, os.environ.get("API_KEY") or None)
        if args.url
        else invoking(args.function, args.qualifier)
    )
    problems = smoke(send, args.expect_version, args.image)
    for problem in problems:
        print(f"FAIL {problem}")
    print("smoke test failed" if problems else "smoke test passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
