"""Score the objects that land in S3, through SQS: the image's second handler.

    S3 (ObjectCreated under the input prefix) -> SQS -> pneumonia.serving.fanout.lambda_handler

Each SQS message is an S3 event notification; each of its records names an object. For each
object: read it, hash it, score it as `pneumonia.batch` does (the endpoint's decode, checks,
preprocessing, graph, gate and decision; a file that cannot be scored is a row with the
endpoint's error), and write its row, as JSON, to OUTPUT_BUCKET under OUTPUT_PREFIX
(`<key>.json`, the key without INPUT_PREFIX).

- Powertools' batch utility answers with the messages that failed (a partial batch
  response): SQS redelivers only those, and after the queue's maxReceiveCount its dead-letter
  queue keeps them. A message fails when it is not an S3 notification, or when its object
  cannot be read or its row written; a broken image is an answer, not a failure.
- Powertools' idempotency utility (a DynamoDB table, IDEMPOTENCY_TABLE) keys each scoring on
  (sha256 of the bytes, modelVersion): a redelivered message, or the same bytes under
  another key, is answered from the table and the model runs once. A message whose scoring
  is still in flight elsewhere fails and comes back later.
- No key, image byte or row goes to the logs: keys can carry patient identifiers.

The model loads once per cold start, from MODEL_DIR as for the endpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes import S3Event
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)

from pneumonia.serving.batch import Job, score_jobs
from pneumonia.serving.classifier import Classifier

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

# An object larger than this is a row with a too_large error, not read: DICOM files of one
# radiograph are tens of MB at most, and the function's memory holds a few of them.
MAX_OBJECT_BYTES = 64 * 1024 * 1024
# An answer depends only on the bytes and the model, so any expiry is right; a week bounds
# the table without rescoring a backlog that is resubmitted within it.
KEEP_ANSWERS_SECONDS = 7 * 24 * 3600

logger = Logger(service="pneumonia-scoring")
metrics = Metrics(namespace="PneumoniaScoring", service="pneumonia-scoring")
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)

# Once per cold start. A model that does not load fails every message, and the queue's
# redrive policy keeps them: no answer is written that the model did not give.
MODEL = Classifier.from_environment()
OUTPUT_BUCKET = os.environ.get("OUTPUT_BUCKET")  # default: the object's own bucket
OUTPUT_PREFIX = os.environ.get("OUTPUT_PREFIX", "predictions/")
INPUT_PREFIX = os.environ.get("INPUT_PREFIX", "")
s3 = boto3.client("s3")
idempotency = IdempotencyConfig(expires_after_seconds=KEEP_ANSWERS_SECONDS)
answers = DynamoDBPersistenceLayer(table_name=os.environ.get("IDEMPOTENCY_TABLE", "idempotency"))


@idempotent_function(
    data_keyword_argument="identity", config=idempotency, persistence_store=answers
)
def answer(identity: dict[str, str], data: bytes) -> dict[str, Any]:
    """The row's fields other than the file name, for bytes whose hash and the model's
    version are `identity`; runs the model once per identity (the table keeps the answer)."""
    metrics.add_metric(name="ObjectsScored", unit=MetricUnit.Count, value=1)
    (row,) = score_jobs([Job(file="", sha256=identity["sha256"], data=data)], MODEL)
    row.pop("file")
    return row


def too_large(size: int) -> dict[str, Any]:
    """The row of an object over MAX_OBJECT_BYTES (not read, so not hashed)."""
    return {
        "sha256": None,
        "status": "error",
        "error": f"the object is {size:,} bytes; the limit is {MAX_OBJECT_BYTES:,}",
        "modelVersion": MODEL.metadata.model_version,
    }


def output_key(key: str) -> str:
    """Where an input object's row goes: OUTPUT_PREFIX + the key after INPUT_PREFIX + .json."""
    return f"{OUTPUT_PREFIX}{key.removeprefix(INPUT_PREFIX)}.json"


def score_object(bucket: str, key: str, size: int) -> None:
    """Read one object, answer it (from the table when these bytes were scored by this model
    before) and write its row."""
    if size > MAX_OBJECT_BYTES:
        fields = too_large(size)
    else:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        identity = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "modelVersion": MODEL.metadata.model_version,
        }
        fields = answer(identity=identity, data=data)
    row = {"file": key, **fields}
    s3.put_object(
        Bucket=OUTPUT_BUCKET or bucket,
        Key=output_key(key),
        Body=json.dumps(row).encode(),
        ContentType="application/json",
    )
    metrics.add_metric(
        name="RowsWritten" if row["status"] == "ok" else "ErrorRowsWritten",
        unit=MetricUnit.Count,
        value=1,
    )


def record_handler(record: SQSRecord) -> None:
    """One SQS message: every object its S3 notification names. Raises (the message fails
    and comes back) for a body that is not an S3 notification or an object that cannot be
    read or answered."""
    notification = json.loads(record.body)
    if notification.get("Event") == "s3:TestEvent":  # S3 sends one when notifications are set
        return
    event = S3Event(notification)
    for entry in event.records:
        # Keys arrive URL-encoded in S3 notifications ("a b.png" is "a+b.png").
        s3_object = entry.s3.get_object
        score_object(entry.s3.bucket.name, unquote_plus(s3_object.key), s3_object.size)


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    """The Lambda entry point for the SQS event source: {"batchItemFailures": [...]}."""
    idempotency.register_lambda_context(context)
    response = process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
    failed = len(response.get("batchItemFailures", []))
    metrics.add_metric(name="MessagesFailed", unit=MetricUnit.Count, value=failed)
    logger.info("batch", extra={"messages": len(event.get("Records", [])), "failed": failed})
    return dict(response)
