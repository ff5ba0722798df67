"""What a client may send to POST /predict, and the 4xx answers for what it must not."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from http import HTTPStatus

from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

# Lambda's synchronous payload limit is 6 MB; API Gateway base64-encodes binary
# bodies (x4/3), so a 4 MB image is the most that can arrive whole.
MAX_BODY_BYTES = 5_500_000  # of the request body as API Gateway hands it over
MAX_IMAGE_BYTES = MAX_BODY_BYTES * 3 // 4  # the largest file a body carries: base64 of it
IMAGE_TYPES = ("image/jpeg", "image/png", "application/dicom")  # raw bodies


class ClientError(Exception):
    """Something the client sent; answered with its status and a JSON error."""

    def __init__(
        self,
        status: HTTPStatus,
        message: str,
        reason: str = "bad_request",
        check: str | None = None,
    ) -> None:
        """`status` is the 4xx to answer; `message` and `reason` (a stable short code) go
        into the JSON error. `check`: which of the model's checks refused the image
        (`intended_use`, `view_check` or `gate`; None for the request, the decoder and the
        cheap checks), for the logs and the benchmarks, not the answer."""
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.check = check


# No docstring: pydantic would publish it as the request schema's description in
# lambda/openapi.json. The field's description says what to send.
class PredictRequest(BaseModel):  # noqa: D101
    model_config = ConfigDict(extra="forbid")

    image: str = Field(
        min_length=1,
        description="base64 (RFC 4648, with padding) of a JPEG, PNG or DICOM (Part 10) "
        "frontal chest X-ray",
        json_schema_extra={"contentEncoding": "base64"},
    )
    explain: StrictBool = Field(
        default=False,
        description="add a heatmap of where the evidence for pneumonia is (as ?explain=true)",
    )


@dataclass(frozen=True)
class Submission:
    """What one request asks for: the encoded image, and whether to explain the answer."""

    image: bytes
    explain: bool


def parse_request(event: APIGatewayProxyEvent) -> Submission:
    """The image, from a JSON {"image": base64, "explain": bool} body or a raw image body
    (image/jpeg, image/png, application/dicom), and the explain flag (the JSON field or
    ?explain=true)."""
    query = event.query_string_parameters or {}
    flag = query.get("explain", "false").strip().lower()
    if flag not in ("true", "false", "1", "0"):
        raise ClientError(
            HTTPStatus.BAD_REQUEST, "explain must be true or false", "invalid_request"
        )
    body = event.body or ""
    if len(body) > MAX_BODY_BYTES:
        raise ClientError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"request body is {len(body):,} bytes; the limit is {MAX_BODY_BYTES:,}",
            "too_large",
        )
    content_type = event.headers.get("content-type") or event.headers.get("Content-Type") or ""
    media_type = content_type.split(";")[0].strip().lower()
    if media_type in (*IMAGE_TYPES, "application/octet-stream"):
        if event.is_base64_encoded:
            image = decode_base64(body, "body")
        else:
            image = body.encode("latin-1", errors="replace")
        return Submission(image, flag in ("true", "1"))
    payload = json_payload(event, body, media_type)
    return Submission(
        decode_base64(payload.image, "image"), flag in ("true", "1") or payload.explain
    )


def json_payload(event: APIGatewayProxyEvent, body: str, media_type: str) -> PredictRequest:
    """The JSON body, checked; 400 or 415 for what it must not be."""
    if media_type not in ("application/json", ""):
        raise ClientError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"content type {media_type!r} is not accepted; send application/json with "
            "{'image': base64} or an image/jpeg, image/png or application/dicom body",
            "unsupported_media_type",
        )
    text = (
        decode_base64(body, "body").decode("utf-8", "replace") if event.is_base64_encoded else body
    )
    try:
        return PredictRequest.model_validate_json(text)
    except ValidationError as exc:
        problems = exc.errors()
        if problems and problems[0]["type"] == "json_invalid":
            raise ClientError(
                HTTPStatus.BAD_REQUEST, "the body is not valid JSON", "invalid_json"
            ) from None
        raise ClientError(
            HTTPStatus.BAD_REQUEST,
            'the JSON body needs a non-empty string field "image" (base64) and, optionally, '
            'a boolean "explain"',
            "invalid_request",
        ) from None


def decode_base64(text: str, what: str) -> bytes:
    """Strict base64 (RFC 4648); a 400 naming `what` when it is not."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(
            HTTPStatus.BAD_REQUEST, f"{what} is not valid base64", "invalid_base64"
        ) from None
