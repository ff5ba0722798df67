"""Backlog scoring on AWS's engines, end to end against moto's server on loopback: S3 object
notifications into SQS, the image's second handler (pneumonia.serving.fanout) with
Powertools' batch and idempotency utilities, a DynamoDB table and a dead-letter queue.

The Lambda service's SQS event source is the one part that does not run here; `deliver`
does what it does: receive up to 10 messages, hand them over in Lambda's SQS event shape,
delete those not reported failed, and let the failed ones come back."""

from __future__ import annotations

import importlib
import json
import sys

import pytest
from PIL import Image

from tests.images import encode, gradient
from tests.integration.conftest import probabilities_from_keras

pytestmark = pytest.mark.integration

BUCKET, QUEUE, DEAD_LETTERS, TABLE = "studies", "scoring", "scoring-dead-letters", "answers"
MAX_RECEIVE_COUNT = 2


@pytest.fixture(scope="module")
def aws(s3_server):
    """Bucket (notifying the queue of objects under incoming/), queue with a redrive policy
    to its dead-letter queue, and the idempotency table; boto3 clients for them."""
    import boto3

    clients = {name: boto3.client(name, endpoint_url=s3_server) for name in ("s3", "sqs")}
    dynamodb = boto3.client("dynamodb", endpoint_url=s3_server)
    sqs = clients["sqs"]
    dead_letters = sqs.create_queue(QueueName=DEAD_LETTERS)["QueueUrl"]
    dead_arn = sqs.get_queue_attributes(QueueUrl=dead_letters, AttributeNames=["QueueArn"])
    redrive = {
        "deadLetterTargetArn": dead_arn["Attributes"]["QueueArn"],
        "maxReceiveCount": str(MAX_RECEIVE_COUNT),
    }
    queue = sqs.create_queue(QueueName=QUEUE, Attributes={"RedrivePolicy": json.dumps(redrive)})[
        "QueueUrl"
    ]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    clients["s3"].create_bucket(Bucket=BUCKET)
    clients["s3"].put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": queue_arn["Attributes"]["QueueArn"],
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "incoming/"}]}},
                }
            ]
        },
    )
    dynamodb.create_table(
        TableName=TABLE,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return {
        **clients,
        "dynamodb": dynamodb,
        "queue": queue,
        "queue_arn": queue_arn["Attributes"]["QueueArn"],
        "dead_letters": dead_letters,
    }


@pytest.fixture(scope="module")
def fanout(aws, s3_server, model_dir):
    """pneumonia.serving.fanout imported as the Lambda runtime does (its clients and model are
    made at import), with the template's environment pointing at the loopback server."""
    yield import_fanout(model_dir, s3_server, TABLE)
    sys.modules.pop("pneumonia.serving.fanout", None)


def import_fanout(model_dir, s3_server: str, table: str, **environment: str):
    """pneumonia.serving.fanout freshly imported with the template's environment (and
    `environment` on top) set for the import only: the module reads it once."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {
            "MODEL_DIR": str(model_dir),
            "AWS_ENDPOINT_URL": s3_server,
            "IDEMPOTENCY_TABLE": table,
            "INPUT_PREFIX": "incoming/",
            "OUTPUT_PREFIX": "predictions/",
            "POWERTOOLS_METRICS_NAMESPACE": "PneumoniaScoringTests",
            **environment,
        }.items():
            patch.setenv(key, value)
        sys.modules.pop("pneumonia.serving.fanout", None)
        return importlib.import_module("pneumonia.serving.fanout")


def lambda_record(message: dict, queue_arn: str) -> dict:
    """One SQS message as Lambda's SQS event source hands it to the function."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": {},
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": "us-east-1",
    }


def deliver(aws: dict, fanout, context, delete: bool = True) -> tuple[list[dict], set[str]]:
    """One poll of the event source: (the messages handed over, the ids reported failed).
    Succeeded messages are deleted (unless `delete` is False: a lost delete, so SQS delivers
    them again); failed ones are made visible again at once (their visibility timeout)."""
    sqs = aws["sqs"]
    messages = sqs.receive_message(
        QueueUrl=aws["queue"], MaxNumberOfMessages=10, AttributeNames=["All"]
    ).get("Messages", [])
    if not messages:
        return [], set()
    event = {"Records": [lambda_record(message, aws["queue_arn"]) for message in messages]}
    response = fanout.lambda_handler(event, context)
    failed = {failure["itemIdentifier"] for failure in response["batchItemFailures"]}
    for message in messages:
        if message["MessageId"] in failed:
            sqs.change_message_visibility(
                QueueUrl=aws["queue"], ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        elif delete:
            sqs.delete_message(QueueUrl=aws["queue"], ReceiptHandle=message["ReceiptHandle"])
    return messages, failed


def drain(aws: dict, fanout, context) -> set[str]:
    """Deliver until the queue is empty; the bodies of every message that ever failed."""
    failed_bodies: set[str] = set()
    for _ in range(20):
        messages, failed = deliver(aws, fanout, context)
        if not messages:
            return failed_bodies
        failed_bodies |= {m["Body"] for m in messages if m["MessageId"] in failed}
    raise AssertionError("the queue did not drain")


def row(aws: dict, key: str) -> dict:
    body = aws["s3"].get_object(Bucket=BUCKET, Key=f"predictions/{key}.json")["Body"].read()
    return json.loads(body)


def scored_count(output: str) -> int:
    """How many times the model ran, from the function's embedded metrics on stdout."""
    runs = 0
    for line in output.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            value = json.loads(line).get("ObjectsScored", [])  # a list when added repeatedly
            runs += sum(value) if isinstance(value, list) else int(value)
    return runs


def test_objects_under_the_prefix_become_the_endpoints_rows(
    aws, fanout, lambda_context, sample_data, capsys, keras_model
):
    from pneumonia.serving.requests import ClientError

    studies = (
        sorted((sample_data / "train" / "PNEUMONIA").iterdir())[:3]
        + sorted((sample_data / "train" / "NORMAL").iterdir())[:3]
    )
    objects = {f"incoming/ward 7/{path.name}": path.read_bytes() for path in studies}
    objects["incoming/broken.jpeg"] = studies[0].read_bytes()[:400]  # a poisoned object
    objects["incoming/report.txt"] = b"radiology report, not an image\n"
    objects["incoming/gradient.png"] = encode(Image.fromarray(gradient()), "PNG")
    for key, data in objects.items():
        aws["s3"].put_object(Bucket=BUCKET, Key=key, Body=data)
    aws["s3"].put_object(Bucket=BUCKET, Key="elsewhere/x.jpeg", Body=studies[0].read_bytes())
    capsys.readouterr()

    assert drain(aws, fanout, lambda_context) == set()  # bad objects are answers, not failures
    for key, data in objects.items():
        answer = row(aws, key.removeprefix("incoming/"))
        assert answer["file"] == key  # spaces came URL-encoded in the notification
        assert answer["modelVersion"] == fanout.MODEL.metadata.model_version
        try:
            fanout.MODEL.classify(data)  # refused here too: the row carries the same message
        except ClientError as error:
            assert (answer["status"], answer["error"]) == ("error", str(error))
            continue
        assert answer["status"] == "ok"
        # An oracle apart from the code under test: Keras on the same input, and the
        # test model's rule (threshold 0.5, band [0.45, 0.55)) written out.
        (keras_p,) = probabilities_from_keras(keras_model, [data], fanout.MODEL.metadata)
        p = answer["probability_pneumonia"]
        assert abs(p - keras_p) <= 1e-5
        label = "PNEUMONIA" if p >= 0.5 else "NORMAL"
        decision = label if not 0.45 <= p < 0.55 else "INDETERMINATE"
        assert (answer["predicted_label"], answer["decision"]) == (label, decision)
    assert sum(row(aws, k.removeprefix("incoming/"))["status"] == "ok" for k in objects) >= 6
    # Outside incoming/ nothing is announced, so nothing is scored.
    listed = aws["s3"].list_objects_v2(Bucket=BUCKET, Prefix="predictions/")["Contents"]
    assert len(listed) == len(objects)
    assert scored_count(capsys.readouterr().out) == len(objects)


def test_a_redelivered_message_and_repeated_bytes_are_answered_from_the_table(
    aws, fanout, lambda_context, sample_data, capsys
):
    study = sorted((sample_data / "train" / "PNEUMONIA").iterdir())[5].read_bytes()
    aws["s3"].put_object(Bucket=BUCKET, Key="incoming/again/a.jpeg", Body=study)
    capsys.readouterr()
    # GIVEN a message whose delete was lost: SQS delivers it a second time.
    first, failed = deliver(aws, fanout, lambda_context, delete=False)
    assert len(first) == 1 and not failed
    aws["sqs"].change_message_visibility(
        QueueUrl=aws["queue"], ReceiptHandle=first[0]["ReceiptHandle"], VisibilityTimeout=0
    )
    second, failed = deliver(aws, fanout, lambda_context)
    assert [m["MessageId"] for m in second] == [first[0]["MessageId"]] and not failed
    assert second[0]["Attributes"]["ApproximateReceiveCount"] == "2"
    # AND the same bytes under another key.
    aws["s3"].put_object(Bucket=BUCKET, Key="incoming/again/b.jpeg", Body=study)
    assert drain(aws, fanout, lambda_context) == set()
    # THEN the model ran once, both keys have the same answer, the table holds one record.
    assert scored_count(capsys.readouterr().out) == 1
    a, b = row(aws, "again/a.jpeg"), row(aws, "again/b.jpeg")
    assert a.pop("file") == "incoming/again/a.jpeg" and b.pop("file") == "incoming/again/b.jpeg"
    assert a == b and a["status"] == "ok"
    items = aws["dynamodb"].scan(TableName=TABLE)["Items"]
    completed = [item for item in items if item["status"]["S"] == "COMPLETED"]
    assert len(completed) == len(items)
    assert sum(a["sha256"] in item["data"]["S"] for item in items) == 1


def test_a_poisoned_message_fails_alone_and_ends_in_the_dead_letter_queue(
    aws, fanout, lambda_context, sample_data
):
    sqs = aws["sqs"]
    study = sorted((sample_data / "train" / "NORMAL").iterdir())[6].read_bytes()
    # A message that is not an S3 notification, and one whose object is gone before it is
    # read (deleted, or a notification replayed late), beside a good one.
    sqs.send_message(QueueUrl=aws["queue"], MessageBody="{not json")
    aws["s3"].put_object(Bucket=BUCKET, Key="incoming/gone.jpeg", Body=study)
    aws["s3"].delete_object(Bucket=BUCKET, Key="incoming/gone.jpeg")
    aws["s3"].put_object(Bucket=BUCKET, Key="incoming/good.jpeg", Body=study)

    failed_bodies = drain(aws, fanout, lambda_context)
    # The good object is answered in the same batches; the two bad messages failed each time
    # and SQS moved them to the dead-letter queue after MAX_RECEIVE_COUNT deliveries.
    assert row(aws, "good.jpeg")["status"] == "ok"
    assert "{not json" in failed_bodies
    assert any("gone.jpeg" in body for body in failed_bodies)  # the key, URL-encoded
    dead = sqs.receive_message(QueueUrl=aws["dead_letters"], MaxNumberOfMessages=10)["Messages"]
    assert sorted(m["Body"] == "{not json" for m in dead) == [False, True]
    with pytest.raises(aws["s3"].exceptions.NoSuchKey):
        row(aws, "gone.jpeg")
