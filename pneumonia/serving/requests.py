"""What a client may send to POST /predict, and the 4xx answers for what it must not."""

from __future__ import annotations

import base64
import binascii
from http import HTTPStatus

from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent
from pydantic import BaseModel, Field, ValidationError

# Lambda's synchronous payload limit is 6 MB; API Gateway base64-encodes binary
# bodies (x4/3), so a 4 MB image is the most that can arrive whole.
MAX_BODY_BYTES = 5_500_000  # of the request body as API Gateway hands it over
IMAGE_TYPES = ("image/jpeg", "image/png")


class ClientError(Exception):
    """Something the client sent; answered with its status and a JSON error."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        """`status` is the 4xx to answer; `message` goes into the JSON error."""
        super().__init__(message)
        self.status = status


# No docstring: pydantic would publish it as the request schema's description in
# lambda/openapi.json. The field's description says what to send.
class PredictRequest(BaseModel):  # noqa: D101
    image: str = Field(
        min_length=1,
        description="base64 (RFC 4648, with padding) of a JPEG or PNG chest X-ray",
        json_schema_extra={"contentEncoding": "base64"},
    )


def request_image(event: APIGatewayProxyEvent) -> bytes:
    """The image bytes from a JSON {"image": base64} or a raw image/jpeg|png body."""
    body = event.body or ""
    if len(body) > MAX_BODY_BYTES:
        raise ClientError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"request body is {len(body):,} bytes; the limit is {MAX_BODY_BYTES:,}",
        )
    content_type = event.headers.get("content-type") or event.headers.get("Content-Type") or ""
    media_type = content_type.split(";")[0].strip().lower()
    if media_type in IMAGE_TYPES or media_type == "application/octet-stream":
        if event.is_base64_encoded:
            return decode_base64(body, "body")
        return body.encode("latin-1", errors="replace")
    if media_type not in ("application/json", ""):
        raise ClientError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"content type {media_type!r} is not accepted; send application/json with "
            "{'image': base64} or an image/jpeg or image/png body",
        )
    text = (
        decode_base64(body, "body").decode("utf-8", "replace") if event.is_base64_encoded else body
    )
    try:
        payload = PredictRequest.model_validate_json(text)
    except ValidationError as exc:
        problems = exc.errors()
        if problems and problems[0]["type"] == "json_invalid":
            raise ClientError(HTTPStatus.BAD_REQUEST, "the body is not valid JSON") from None
        raise ClientError(
            HTTPStatus.BAD_REQUEST, 'the JSON body needs a non-empty string field "image" (base64)'
        ) from None
    return decode_base64(payload.image, "image")


def decode_base64(text: str, what: str) -> bytes:
    """Strict base64 (RFC 4648); a 400 naming `what` when it is not."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(HTTPStatus.BAD_REQUEST, f"{what} is not valid base64") from None
