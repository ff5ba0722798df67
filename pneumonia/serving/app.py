"""POST /predict, GET /health and GET / (a page to try it) behind API Gateway (REST),
serving model.onnx.

The image's CMD is `pneumonia.serving.app.lambda_handler`. The model loads once per
cold start from the folder named by MODEL_DIR (default: ./model in the task root,
where the image puts it). Anything a client sends that is not a usable JPEG or PNG
gets a 4xx with a JSON {"error": ...}; no image bytes reach the logs or traces.
"""

import base64
import functools
import json
import time
from http import HTTPStatus
from typing import Literal

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, Field

from pneumonia.images.formats import MAX_PIXELS, MAX_SIDE
from pneumonia.images.screening import NOT_A_CHEST_XRAY
from pneumonia.serving.classifier import Classifier, model_dir
from pneumonia.serving.page import page
from pneumonia.serving.requests import MAX_BODY_BYTES, ClientError, parse_request

logger = Logger(service="pneumonia-endpoint")
tracer = Tracer(service="pneumonia-endpoint")
metrics = Metrics(namespace="PneumoniaEndpoint", service="pneumonia-endpoint")
app = APIGatewayRestResolver(enable_validation=True)


# The response models have no docstrings: pydantic would publish one as the schema's
# description, changing lambda/openapi.json. Their fields say what they are.
class Explanation(BaseModel):  # noqa: D101
    method: str = Field(description="how the heatmap was computed")
    heatmap_png: str = Field(
        description="base64 8-bit grayscale PNG with the image's aspect ratio, brighter where "
        "the evidence for pneumonia is stronger",
        json_schema_extra={"contentEncoding": "base64", "contentMediaType": "image/png"},
    )


class PredictResponse(BaseModel):  # noqa: D101
    predicted_label: Literal["NORMAL", "PNEUMONIA"] = Field(
        description="the label at the threshold (the published contract)"
    )
    decision: Literal["NORMAL", "PNEUMONIA", "INDETERMINATE"] = Field(
        description="INDETERMINATE when the probability is inside the decision band: "
        "route the study to a person"
    )
    probability_pneumonia: float = Field(ge=0.0, le=1.0, description="calibrated P(PNEUMONIA)")
    modelVersion: str
    threshold: float = Field(description="probability at or above which the label is PNEUMONIA")
    explanation: Explanation | None = Field(
        default=None, description="only when asked for (explain)"
    )


class HealthResponse(BaseModel):  # noqa: D101
    status: str
    modelVersion: str


class ErrorResponse(BaseModel):  # noqa: D101
    error: str
    reason: str = Field(description="a stable short code, e.g. not_a_chest_xray")


class ModelUnavailable(Exception):
    """The model did not load at cold start."""


MODEL: Classifier | None
try:  # once per cold start
    MODEL = Classifier.from_environment()
except Exception:
    # onnxruntime's errors (NoSuchFile, InvalidProtobuf, ...) derive from Exception alone.
    # Whatever it was, the function stays up: /health answers 503 and the cause is in the
    # log, instead of an init error on every request.
    logger.exception("model could not be loaded", extra={"model_dir": str(model_dir())})
    MODEL = None


def loaded() -> Classifier:
    """The model loaded at cold start; ModelUnavailable (503) when it did not load."""
    if MODEL is None:
        raise ModelUnavailable
    return MODEL


def documented(description: str, model: type[BaseModel] = ErrorResponse) -> OpenAPIResponse:
    """One OpenAPI response entry: a JSON body shaped like `model`."""
    return {"description": description, "content": {"application/json": {"model": model}}}


def error_response(status: HTTPStatus, message: str, reason: str) -> Response:
    """A JSON {"error": message, "reason": reason} response with the given status."""
    return Response(
        status_code=status.value,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps({"error": message, "reason": reason}),
    )


@app.post(
    "/predict",
    summary="Classify one frontal chest X-ray",
    description=(
        'JSON {"image": "<base64 JPEG, PNG or DICOM>", "explain": false}, or a raw image/jpeg, '
        "image/png or application/dicom body (DICOM Part 10: uncompressed, RLE, JPEG baseline "
        "or lossless, JPEG 2000). `?explain=true` (or the JSON field) adds a heatmap. "
        f"Limits: {MAX_BODY_BYTES:,} bytes of request body, {MAX_PIXELS:,} pixels, "
        f"{MAX_SIDE} px a side."
    ),
    responses={
        200: documented("the prediction", PredictResponse),
        400: documented("malformed JSON, missing field, bad base64 or undecodable image"),
        405: documented("a method other than POST"),
        413: documented("body or image over the limits"),
        415: documented("not JPEG, PNG or DICOM, or a DICOM transfer syntax we cannot decode"),
        422: documented(
            "not a frontal chest X-ray (reason not_a_chest_xray: colour, near-uniform, "
            "odd aspect ratio, or a radiograph of another body part); an adult chest X-ray, "
            "or a DICOM of a patient older than the training population "
            "(outside_training_population); a lateral view (lateral_view); a DICOM that is "
            "multi-frame, colour or of another modality; an image unlike the training "
            "X-rays, with the reason of the kind it is most like (a chest X-ray of a child "
            "refused this way: outside_training_population); a JPEG or PNG whose "
            "structure is over the caps"
        ),
        503: documented("the model did not load"),
    },
)
# Client errors are answered, not faults; responses and exception text stay out of traces.
@tracer.capture_method(capture_response=False, capture_error=False)
def predict() -> PredictResponse:
    """POST /predict: label, decision and calibrated P(PNEUMONIA) for the request's image."""
    model = loaded()
    submission = parse_request(app.current_event)
    prediction = model.classify(submission.image, explain=submission.explain)
    metrics.add_metric(name="Predictions", unit=MetricUnit.Count, value=1)
    metrics.add_metric(
        name=f"Decision{prediction.decision.title()}", unit=MetricUnit.Count, value=1
    )
    # The calibrated probability itself: CloudWatch keeps its distribution (percentiles), the
    # first thing to watch for drift. A number, never image data.
    metrics.add_metric(
        name="ProbabilityPneumonia", unit=MetricUnit.NoUnit, value=prediction.probability
    )
    explanation = None
    if prediction.heatmap_png is not None:
        explanation = Explanation(
            method="class activation map of the pneumonia logit (last feature map)",
            heatmap_png=base64.b64encode(prediction.heatmap_png).decode(),
        )
    return PredictResponse(
        predicted_label=prediction.label,  # type: ignore[arg-type]
        decision=prediction.decision,  # type: ignore[arg-type]
        probability_pneumonia=prediction.probability,
        modelVersion=model.metadata.model_version,
        threshold=model.metadata.threshold,
        explanation=explanation,
    )


@app.get(
    "/",
    summary="A page to try the model: drop an X-ray, see the answer and its heatmap",
    responses={
        200: {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}},
        405: documented("a method other than GET"),
    },
)
def index() -> Response[str]:
    """GET /: the static page (pneumonia/serving/page.html) with its security headers. It
    needs no model: the page asks /predict."""
    html, headers = page()
    return Response(
        status_code=HTTPStatus.OK.value,
        content_type="text/html; charset=utf-8",
        body=html,
        headers=headers,
    )


@app.get(
    "/health",
    summary="Model loaded?",
    responses={
        200: documented("ready", HealthResponse),
        405: documented("a method other than GET"),
        503: documented("the model did not load"),
    },
)
def health() -> HealthResponse:
    """GET /health: ok and the model version, or 503 when the model did not load."""
    return HealthResponse(status="ok", modelVersion=loaded().metadata.model_version)


@app.exception_handler(ClientError)
def handle_client_error(error: ClientError) -> Response:
    """A bad request: its 4xx, counted and logged without the request's bytes."""
    metrics.add_metric(name="ClientErrors", unit=MetricUnit.Count, value=1)
    if error.reason == NOT_A_CHEST_XRAY:
        metrics.add_metric(name="NotAChestXray", unit=MetricUnit.Count, value=1)
    # which of the model's checks refused (None: the request, the decoder, the cheap checks)
    extra = {"status": error.status.value, "reason": error.reason, "check": error.check}
    logger.info("rejected", extra=extra)
    return error_response(error.status, str(error), error.reason)


@app.exception_handler(ModelUnavailable)
def handle_model_unavailable(_: ModelUnavailable) -> Response:
    """503 while the model is not loaded."""
    return error_response(
        HTTPStatus.SERVICE_UNAVAILABLE, "the model is not loaded", "model_unavailable"
    )


@functools.cache
def allowed_methods() -> dict[str, list[str]]:
    """Each path's methods, read from the resolver (its OpenAPI schema): the decorators above
    stay the only route table. Computed on the first 405, never at cold start."""
    verbs = ("get", "put", "post", "delete", "options", "head", "patch")
    paths = app.get_openapi_schema().paths or {}
    return {
        path: [verb.upper() for verb in verbs if getattr(item, verb, None)]
        for path, item in paths.items()
    }


@app.not_found
def handle_not_found(_: Exception) -> Response:
    """405 with an Allow header for a known path, 404 for an unknown one."""
    path = app.current_event.path
    allowed = allowed_methods().get(path)
    if allowed:
        response = error_response(
            HTTPStatus.METHOD_NOT_ALLOWED,
            f"{app.current_event.http_method} is not allowed on {path}; use {', '.join(allowed)}",
            "method_not_allowed",
        )
        response.headers["Allow"] = ", ".join(allowed)
        return response
    return error_response(HTTPStatus.NOT_FOUND, f"no route {path}", "not_found")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler(capture_response=False, capture_error=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    """The Lambda entry point: route the API Gateway event and log one line per request."""
    started = time.perf_counter()
    response = app.resolve(event, context)
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    metrics.add_metric(name="Latency", unit=MetricUnit.Milliseconds, value=latency_ms)
    logger.info(
        "request",
        extra={
            "method": event.get("httpMethod"),
            "path": event.get("path"),
            "status": response["statusCode"],
            "body_bytes": len(event.get("body") or ""),
            "latency_ms": latency_ms,
        },
    )
    return response
