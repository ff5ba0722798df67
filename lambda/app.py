"""POST /predict and GET /health behind API Gateway (REST), serving models/model.onnx.

The ONNX session and the model's metadata load once per cold start, from the
folder named by MODEL_DIR (default: ./model beside this file, where the image
puts them). Images go through `pneumonia.imaging.prepare_image`, the function
the pipeline trained on. Anything a client sends that is not a usable JPEG or
PNG gets a 4xx with a JSON {"error": ...}; no image bytes reach the logs.
"""

import base64
import binascii
import json
import os
import time
from http import HTTPStatus
from pathlib import Path

import numpy as np
import onnxruntime
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, Field, ValidationError

from pneumonia.imaging import MAX_PIXELS, MAX_SIDE, ImageError, prepare_image
from pneumonia.metadata import ModelMetadata

# Lambda's synchronous payload limit is 6 MB; API Gateway base64-encodes binary
# bodies (x4/3), so a 4 MB image is the most that can arrive whole.
MAX_BODY_BYTES = 5_500_000  # of the request body as API Gateway hands it over
IMAGE_TYPES = ("image/jpeg", "image/png")
ROUTES = {"/predict": ["POST"], "/health": ["GET"]}  # for 405 answers with an Allow header
STATUS_FOR_REASON = {
    "empty": HTTPStatus.BAD_REQUEST,
    "not_an_image": HTTPStatus.BAD_REQUEST,
    "corrupt": HTTPStatus.BAD_REQUEST,
    "unsupported_format": HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    "too_large": HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    "too_complex": HTTPStatus.UNPROCESSABLE_ENTITY,
}

logger = Logger(service="pneumonia-endpoint")
tracer = Tracer(service="pneumonia-endpoint")
metrics = Metrics(namespace="PneumoniaEndpoint", service="pneumonia-endpoint")
app = APIGatewayRestResolver(enable_validation=True)


class PredictRequest(BaseModel):
    image: str = Field(description="base64 of a JPEG or PNG chest X-ray")


class PredictResponse(BaseModel):
    predicted_label: str = Field(description="NORMAL or PNEUMONIA")
    probability_pneumonia: float = Field(ge=0.0, le=1.0)
    modelVersion: str
    threshold: float = Field(description="probability at or above which the label is PNEUMONIA")


class HealthResponse(BaseModel):
    status: str
    modelVersion: str


class ErrorResponse(BaseModel):
    error: str


class ClientError(Exception):
    """Something the client sent; answered with its status and a JSON error."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class ModelUnavailable(Exception):
    """The model did not load at cold start."""


def load_model(model_dir: Path) -> tuple[onnxruntime.InferenceSession, ModelMetadata]:
    """The session and its metadata; refuses a model.json that is malformed or names other bytes."""
    metadata = ModelMetadata.load(model_dir / "model.json")  # types and ranges checked
    onnx_bytes = (model_dir / "model.onnx").read_bytes()
    metadata.check_describes(onnx_bytes)  # the served bytes are the ones hashed
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("ONNX_THREADS", "1"))
    session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    return session, metadata


MODEL_DIR = Path(os.environ.get("MODEL_DIR", Path(__file__).resolve().parent / "model"))
SESSION: onnxruntime.InferenceSession | None
METADATA: ModelMetadata | None
try:  # once per cold start
    SESSION, METADATA = load_model(MODEL_DIR)
except Exception:
    # onnxruntime's errors (NoSuchFile, InvalidProtobuf, ...) derive from Exception alone.
    # Whatever it was, the function stays up: /health answers 503 and the cause is in the
    # log, instead of an init error on every request.
    logger.exception("model could not be loaded", extra={"model_dir": str(MODEL_DIR)})
    SESSION, METADATA = None, None


def documented(description: str, model: type[BaseModel]) -> OpenAPIResponse:
    """One OpenAPI response entry: a JSON body shaped like `model`."""
    return {"description": description, "content": {"application/json": {"model": model}}}


def error_response(status: HTTPStatus, message: str) -> Response:
    return Response(
        status_code=status.value,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps({"error": message}),
    )


def request_image(event) -> bytes:
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
            HTTPStatus.BAD_REQUEST, 'the JSON body needs a string field "image" (base64)'
        ) from None
    return decode_base64(payload.image, "image")


def decode_base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(HTTPStatus.BAD_REQUEST, f"{what} is not valid base64") from None


def classify(image_bytes: bytes) -> tuple[str, float]:
    """(predicted label, P(PNEUMONIA)) for one encoded image."""
    if SESSION is None or METADATA is None:
        raise ModelUnavailable
    try:
        # Format and pixel caps are checked from the header before any pixel is decoded.
        pixels = prepare_image(image_bytes, METADATA.preprocessing)  # (S, S, 1) uint8
    except ImageError as error:
        status = STATUS_FOR_REASON.get(error.reason, HTTPStatus.BAD_REQUEST)
        raise ClientError(status, str(error)) from None
    batch = pixels[np.newaxis].astype(np.float32)  # (1, S, S, 1)
    (output,) = SESSION.run([METADATA.output_name], {METADATA.input_name: batch})
    probability = float(np.clip(output.reshape(-1)[0], 0.0, 1.0))
    return METADATA.label_for(probability), probability


@app.post(
    "/predict",
    summary="Classify one chest X-ray",
    description=(
        'JSON {"image": "<base64 JPEG or PNG>"}, or a raw image/jpeg or image/png body. '
        f"Limits: {MAX_BODY_BYTES:,} bytes of request body, {MAX_PIXELS:,} pixels, "
        f"{MAX_SIDE} px a side."
    ),
    responses={
        200: documented("the prediction", PredictResponse),
        400: documented(
            "malformed JSON, missing field, bad base64 or undecodable image", ErrorResponse
        ),
        413: documented("body or image over the limits", ErrorResponse),
        415: documented("not JPEG or PNG", ErrorResponse),
        422: documented(
            "a JPEG or PNG whose structure is over the caps (scans, segments, chunks)",
            ErrorResponse,
        ),
    },
)
# Client errors are answered, not faults; responses and exception text stay out of traces.
@tracer.capture_method(capture_response=False, capture_error=False)
def predict() -> PredictResponse:
    image_bytes = request_image(app.current_event)
    label, probability = classify(image_bytes)
    metrics.add_metric(name="Predictions", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name=f"Predicted{label.title()}", unit=MetricUnit.Count, value=1)
    assert METADATA is not None
    return PredictResponse(
        predicted_label=label,
        probability_pneumonia=probability,
        modelVersion=METADATA.model_version,
        threshold=METADATA.threshold,
    )


@app.get(
    "/health",
    summary="Model loaded?",
    responses={
        200: documented("ready", HealthResponse),
        503: documented("the model did not load", ErrorResponse),
    },
)
def health() -> HealthResponse:
    if METADATA is None:
        raise ModelUnavailable
    return HealthResponse(status="ok", modelVersion=METADATA.model_version)


@app.exception_handler(ClientError)
def handle_client_error(error: ClientError) -> Response:
    metrics.add_metric(name="ClientErrors", unit=MetricUnit.Count, value=1)
    logger.info("rejected", extra={"status": error.status.value, "reason": str(error)})
    return error_response(error.status, str(error))


@app.exception_handler(ModelUnavailable)
def handle_model_unavailable(_: ModelUnavailable) -> Response:
    return error_response(HTTPStatus.SERVICE_UNAVAILABLE, "the model is not loaded")


@app.not_found
def handle_not_found(_: Exception) -> Response:
    path = app.current_event.path
    allowed = ROUTES.get(path)
    if allowed:
        response = error_response(
            HTTPStatus.METHOD_NOT_ALLOWED,
            f"{app.current_event.http_method} is not allowed on {path}; use {', '.join(allowed)}",
        )
        response.headers["Allow"] = ", ".join(allowed)
        return response
    return error_response(HTTPStatus.NOT_FOUND, f"no route {path}")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler(capture_response=False, capture_error=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    started = time.perf_counter()
    response = app.resolve(event, context)
    logger.info(
        "request",
        extra={
            "method": event.get("httpMethod"),
            "path": event.get("path"),
            "status": response["statusCode"],
            "body_bytes": len(event.get("body") or ""),
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )
    return response
