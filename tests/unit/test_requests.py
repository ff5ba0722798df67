"""parse_request on real API Gateway event shapes: the explain flag in every accepted spelling,
and the rest refused with the reason the endpoint answers."""

from __future__ import annotations

import base64
import json

import pytest
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent

from pneumonia.serving.requests import ClientError, parse_request
from tests.conftest import REPO_ROOT

EVENT = json.loads((REPO_ROOT / "tests" / "events" / "predict_binary.json").read_text())
IMAGE = b"\xff\xd8\xff\xe0 not decoded here"


def event(query: dict | None, json_explain: bool | None = None) -> APIGatewayProxyEvent:
    raw = {**EVENT, "queryStringParameters": query}
    if json_explain is not None:
        body = {"image": base64.b64encode(IMAGE).decode(), "explain": json_explain}
        raw |= {
            "body": json.dumps(body),
            "isBase64Encoded": False,
            "headers": {**EVENT["headers"], "Content-Type": "application/json"},
        }
    else:
        raw |= {"body": base64.b64encode(IMAGE).decode(), "isBase64Encoded": True}
    return APIGatewayProxyEvent(raw)


@pytest.mark.parametrize(
    ("query", "explain"),
    [
        (None, False),
        ({"explain": "true"}, True),
        ({"explain": "TRUE "}, True),
        ({"explain": "1"}, True),
        ({"explain": "false"}, False),
        ({"explain": "0"}, False),
    ],
)
def test_the_explain_flag_of_the_query(query, explain):
    submission = parse_request(event(query))
    assert submission.explain is explain
    assert submission.image == IMAGE


@pytest.mark.parametrize(
    ("query", "field", "explain"),
    [({"explain": "0"}, True, True), ({"explain": "1"}, False, True), (None, False, False)],
)
def test_the_json_field_or_the_query_asks_for_it(query, field, explain):
    assert parse_request(event(query, json_explain=field)).explain is explain


@pytest.mark.parametrize("value", ["yes", "2", "", "on"])
def test_any_other_explain_value_is_a_400(value):
    with pytest.raises(ClientError) as refused:
        parse_request(event({"explain": value}))
    assert (refused.value.status.value, refused.value.reason) == (400, "invalid_request")
