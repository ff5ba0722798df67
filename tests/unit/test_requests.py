"""parse_request on real API Gateway event shapes: the explain flag in every accepted spelling,
and the rest refused with the reason the endpoint answers."""

from __future__ import annotations

import base64
import json
from http import HTTPStatus

import pytest
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent

from pneumonia.serving.requests import MAX_BODY_BYTES, ClientError, Submission, parse_request
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


# ---------------------------------------------------------------- bodies, as API Gateway sends them

JSON_EVENT = json.loads((REPO_ROOT / "tests" / "events" / "predict_json.json").read_text())


def raw_event(
    body: str | None, content_type: str | None, encoded: bool, header: str = "Content-Type"
) -> APIGatewayProxyEvent:
    headers = {k: v for k, v in EVENT["headers"].items() if k != "Content-Type"}
    if content_type is not None:
        headers[header] = content_type
    return APIGatewayProxyEvent(
        {**EVENT, "headers": headers, "body": body, "isBase64Encoded": encoded}
    )


def refused(event: APIGatewayProxyEvent) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as error:
        parse_request(event)
    return error.value.status.value, error.value.reason, str(error.value)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_the_committed_events_as_they_are_hold_no_image():
    # their bodies are filled in by the tests that send them: empty, as committed
    assert parse_request(APIGatewayProxyEvent(EVENT)) == Submission(b"", False)
    assert refused(APIGatewayProxyEvent(JSON_EVENT))[1] == "invalid_request"


@pytest.mark.parametrize(
    "content_type",
    [
        "image/jpeg",
        "image/png",
        "application/dicom",
        "application/octet-stream",
        "IMAGE/PNG",
        " image/png ; charset=binary",
    ],
)
@pytest.mark.parametrize("header", ["Content-Type", "content-type"])
def test_a_raw_image_body_is_the_image(content_type, header):
    submission = parse_request(raw_event(b64(IMAGE), content_type, True, header))
    assert submission == Submission(IMAGE, False)


def test_a_raw_body_api_gateway_did_not_encode_is_read_as_latin_1_bytes():
    body = "\xff\xd8\xff\xe0 text \u2603"  # the snowman is no byte: replaced
    submission = parse_request(raw_event(body, "image/jpeg", False))
    assert submission.image == b"\xff\xd8\xff\xe0 text ?"
    assert parse_request(raw_event(None, "image/png", False)).image == b""


@pytest.mark.parametrize("body", ["not base64!", "QUJD=A", "QUJ", "QU JD"])
def test_a_raw_body_that_is_not_base64_is_a_400(body):
    assert refused(raw_event(body, "image/png", True)) == (
        400,
        "invalid_base64",
        "body is not valid base64",
    )


def test_the_body_cap_is_checked_before_anything_else():
    at_cap = "A" * MAX_BODY_BYTES
    assert parse_request(raw_event(at_cap, "image/png", False)).image == at_cap.encode()
    over = at_cap + "A"
    assert refused(raw_event(over, "image/png", False)) == (
        413,
        "too_large",
        "request body is 5,500,001 bytes; the limit is 5,500,000",
    )
    assert refused(raw_event(over, "text/plain", True))[1] == "too_large"


@pytest.mark.parametrize(
    ("payload", "explain"),
    [({"image": b64(IMAGE)}, False), ({"image": b64(IMAGE), "explain": True}, True)],
)
@pytest.mark.parametrize(
    "content_type", ["application/json", "Application/JSON; charset=utf-8", None]
)
def test_a_json_body_is_its_image_and_explain_field(payload, explain, content_type):
    submission = parse_request(raw_event(json.dumps(payload), content_type, False))
    assert submission == Submission(IMAGE, explain)


def test_a_json_body_api_gateway_encoded_is_decoded_first():
    body = b64(json.dumps({"image": b64(IMAGE), "explain": True}).encode())
    assert parse_request(raw_event(body, "application/json", True)) == Submission(IMAGE, True)
    # bytes that are not UTF-8 are replaced, not an unhandled error: the JSON is then invalid
    broken = b64(b'{"image": "QUJD"}\xff')
    assert refused(raw_event(broken, "application/json", True)) == (
        400,
        "invalid_json",
        "the body is not valid JSON",
    )
    assert refused(raw_event("{not base64}", "application/json", True)) == (
        400,
        "invalid_base64",
        "body is not valid base64",
    )


SHAPE = (
    'the JSON body needs a non-empty string field "image" (base64) and, optionally, '
    'a boolean "explain"'
)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"image": ""},
        {"image": 5},
        {"image": b64(IMAGE), "explain": "true"},
        {"image": b64(IMAGE), "explain": 1},
        {"image": b64(IMAGE), "extra": 1},
        [b64(IMAGE)],
        None,
    ],
)
def test_a_json_body_of_the_wrong_shape_is_a_400_saying_what_to_send(payload):
    assert refused(raw_event(json.dumps(payload), "application/json", False)) == (
        400,
        "invalid_request",
        SHAPE,
    )


@pytest.mark.parametrize("body", ["{", "", None, "image=abc", '{"image": "QUJD"} trailing'])
def test_a_body_that_is_not_json_is_a_400(body):
    assert refused(raw_event(body, "application/json", False)) == (
        400,
        "invalid_json",
        "the body is not valid JSON",
    )


def test_an_image_field_that_is_not_base64_is_a_400_naming_the_field():
    assert refused(raw_event(json.dumps({"image": "QUJ"}), "application/json", False)) == (
        400,
        "invalid_base64",
        "image is not valid base64",
    )


@pytest.mark.parametrize("content_type", ["text/plain", "image/gif", "multipart/form-data; b=x"])
def test_another_content_type_is_a_415_saying_what_to_send(content_type):
    media = content_type.split(";")[0]
    assert refused(raw_event(json.dumps({"image": b64(IMAGE)}), content_type, False)) == (
        415,
        "unsupported_media_type",
        f"content type {media!r} is not accepted; send application/json with "
        "{'image': base64} or an image/jpeg, image/png or application/dicom body",
    )


def test_a_client_error_defaults_to_bad_request():
    error = ClientError(HTTPStatus.NOT_FOUND, "gone")
    assert (error.status, error.reason, str(error), error.args) == (
        HTTPStatus.NOT_FOUND,
        "bad_request",
        "gone",
        ("gone",),
    )
