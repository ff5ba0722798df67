"""The fan-out handler's other branches, against moto's server on loopback as in
test_fanout.py: an object over the size cap is an error row and is never read, S3's test
event (sent when a bucket's notifications are configured) is skipped, and with OUTPUT_BUCKET
set the rows go there rather than beside the images.

The messages are the ones moto's S3 sends to SQS; `deliver` and `drain` (test_fanout.py) do
what Lambda's SQS event source does with them."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest

from tests.integration.test_fanout import deliver, drain, import_fanout

pytestmark = pytest.mark.integration

SOURCE, OUTPUT = "branch-studies", "branch-rows"
QUEUE, TABLE = "branch-scoring", "branch-answers"


def notify(s3, queue_arn: str) -> None:
    """Objects created under incoming/ of SOURCE notify the queue (S3 then sends a test event)."""
    rule = {"Key": {"FilterRules": [{"Name": "prefix", "Value": "incoming/"}]}}
    s3.put_bucket_notification_configuration(
        Bucket=SOURCE,
        NotificationConfiguration={
            "QueueConfigurations": [
                {"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"], "Filter": rule}
            ]
        },
    )


@pytest.fixture(scope="module")
def aws(s3_server):
    """The images' bucket notifying the queue, a separate bucket for the rows, the
    idempotency table; boto3 clients for them (the names are this module's own)."""
    import boto3

    s3, sqs = (boto3.client(name, endpoint_url=s3_server) for name in ("s3", "sqs"))
    queue = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    s3.create_bucket(Bucket=SOURCE)
    s3.create_bucket(Bucket=OUTPUT)
    notify(s3, queue_arn["Attributes"]["QueueArn"])
    boto3.client("dynamodb", endpoint_url=s3_server).create_table(
        TableName=TABLE,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return {"s3": s3, "sqs": sqs, "queue": queue, "queue_arn": queue_arn["Attributes"]["QueueArn"]}


@pytest.fixture(scope="module")
def fanout(aws, s3_server, model_dir):
    """pneumonia.serving.fanout imported as the Lambda runtime does, with OUTPUT_BUCKET set
    (the module reads its environment at import)."""
    yield import_fanout(model_dir, s3_server, TABLE, OUTPUT_BUCKET=OUTPUT)
    sys.modules.pop("pneumonia.serving.fanout", None)


def rows(aws: dict, bucket: str) -> dict[str, dict]:
    """Every row under predictions/ of `bucket`, by key."""
    listed = aws["s3"].list_objects_v2(Bucket=bucket, Prefix="predictions/").get("Contents", [])
    return {
        entry["Key"]: json.loads(
            aws["s3"].get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
        )
        for entry in listed
    }


def study(sample_data, index: int) -> bytes:
    return sorted((sample_data / "train" / "PNEUMONIA").iterdir())[index].read_bytes()


def test_the_test_event_of_a_new_notification_is_skipped(aws, fanout, lambda_context):
    before = {bucket: rows(aws, bucket) for bucket in (SOURCE, OUTPUT)}
    notify(aws["s3"], aws["queue_arn"])  # configured again: S3 sends another test event
    messages, failed = deliver(aws, fanout, lambda_context)
    assert messages, "no test event arrived"
    assert {json.loads(m["Body"])["Event"] for m in messages} == {"s3:TestEvent"}
    # skipped: not a failure (so not redelivered, never dead-lettered), and no row
    assert failed == set()
    assert deliver(aws, fanout, lambda_context) == ([], set())
    assert {bucket: rows(aws, bucket) for bucket in (SOURCE, OUTPUT)} == before


def test_an_object_over_the_cap_is_an_error_row_and_is_not_read(
    aws, fanout, lambda_context, sample_data, monkeypatch
):
    # The cap lowered to the smaller of two X-rays (the code compares the notification's
    # size with the module's constant when the message is handled).
    at_cap, large = sorted((study(sample_data, 0), study(sample_data, 1)), key=len)
    monkeypatch.setattr(fanout, "MAX_OBJECT_BYTES", len(at_cap))
    assert len(large) > len(at_cap)
    aws["s3"].put_object(Bucket=SOURCE, Key="incoming/cap/large.jpeg", Body=large)
    aws["s3"].put_object(Bucket=SOURCE, Key="incoming/cap/at-cap.jpeg", Body=at_cap)
    # The large object is gone before its message is handled: reading it would fail the
    # message (NoSuchKey), so its row shows it was answered from the notification alone.
    aws["s3"].delete_object(Bucket=SOURCE, Key="incoming/cap/large.jpeg")
    assert drain(aws, fanout, lambda_context) == set()
    written = rows(aws, OUTPUT)
    assert written["predictions/cap/large.jpeg.json"] == {
        "file": "incoming/cap/large.jpeg",
        "sha256": None,
        "status": "error",
        "error": f"the object is {len(large):,} bytes; the limit is {len(at_cap):,}",
        "modelVersion": fanout.MODEL.metadata.model_version,
    }
    # At the cap exactly, the object is read and scored.
    scored = written["predictions/cap/at-cap.jpeg.json"]
    assert scored["sha256"] == hashlib.sha256(at_cap).hexdigest()
    assert scored["status"] == "ok"


def test_with_output_bucket_set_the_row_goes_there_not_beside_the_image(
    aws, fanout, lambda_context, sample_data
):
    image = study(sample_data, 2)
    aws["s3"].put_object(Bucket=SOURCE, Key="incoming/routed/a.jpeg", Body=image)
    assert drain(aws, fanout, lambda_context) == set()
    row = rows(aws, OUTPUT)["predictions/routed/a.jpeg.json"]
    assert row["file"] == "incoming/routed/a.jpeg"
    assert row["sha256"] == hashlib.sha256(image).hexdigest()
    assert row["status"] == "ok"
    assert rows(aws, SOURCE) == {}  # nothing is written beside the images
