"""The OpenAPI document against the running local endpoint: schemathesis, default checks.

Positive cases (schema-valid requests) must get a documented answer: 200, or 400 / 413 /
415 / 422 for valid base64 whose bytes are not a usable image, which JSON Schema cannot
express. Negative cases (schema-invalid: an empty `image`, a number, a missing field, other
content types) must be rejected with a 4xx; no case may get a 5xx, an undocumented status or
a body that does not match its response schema.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import schemathesis
from hypothesis import settings

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

DOCUMENT = json.loads((REPO_ROOT / "lambda" / "openapi.json").read_text())
CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"mode": "all"},
        "checks": {
            "positive_data_acceptance": {"expected-statuses": ["200", "400", "413", "415", "422"]}
        },
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


COVERED: set[tuple[str, str]] = set()  # the operations given a test below


def keeps_its_contract(method: str, path: str) -> Callable:
    """One operation's test. A test per operation, not one `schema.parametrize()` over all:
    schemathesis gives each operation's case of one function the same node id, and
    pytest-xdist (`make test` runs on two processes) runs only one test per node id."""
    COVERED.add((method, path))

    @schema.include(method=method, path=path).parametrize()
    @settings(max_examples=150, deadline=None)
    def test(case, local_url):
        case.call_and_validate(base_url=local_url)

    return test


test_predict_keeps_its_openapi_contract = keeps_its_contract("POST", "/predict")
test_health_keeps_its_openapi_contract = keeps_its_contract("GET", "/health")
test_the_page_keeps_its_openapi_contract = keeps_its_contract("GET", "/")


def test_every_operation_of_the_document_has_its_contract_test():
    documented = {
        (method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item
    }
    assert documented == COVERED


def test_the_document_says_image_is_non_empty_base64():
    body = DOCUMENT["paths"]["/predict"]["post"]["requestBody"]["content"]
    image = body["application/json"]["schema"]["properties"]["image"]
    assert image["minLength"] == 1 and image["contentEncoding"] == "base64"
    assert body["image/jpeg"]["schema"] == {"type": "string", "format": "binary"}
