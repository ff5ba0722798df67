"""What the security review asked of the workflows, the SAM template and the Lambda image,
read from the files themselves (their tools, zizmor, cfn-lint and hadolint, run in
`make lint`)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.conftest import REPO_ROOT

WORKFLOWS = REPO_ROOT / ".github" / "workflows"


class AnyTagLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !Sub, ...) read as their plain values."""


AnyTagLoader.add_multi_constructor(
    "!",
    lambda loader, suffix, node: (
        loader.construct_scalar(node)
        if isinstance(node, yaml.ScalarNode)
        else loader.construct_sequence(node)
        if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node)
    ),
)


def workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def steps_of(job: dict) -> list[dict]:
    return job["steps"]


def index_of(steps: list[dict], text: str) -> int:
    matches = [i for i, step in enumerate(steps) if text in step.get("run", "")]
    assert len(matches) == 1, f"one step runs {text!r}: {matches}"
    return matches[0]


@pytest.fixture(scope="module")
def deploy() -> dict:
    return workflow("deploy.yml")["jobs"]["deploy"]


def test_the_deploy_needs_the_tests_of_the_same_commit():
    jobs = workflow("deploy.yml")["jobs"]
    assert jobs["deploy"]["needs"] in ("test", ["test"])
    assert any("make test" in step.get("run", "") for step in jobs["test"]["steps"])
    assert "id-token" not in jobs["test"].get("permissions", {})


def test_traffic_moves_to_a_published_version_only_after_its_smoke_test(deploy):
    steps = steps_of(deploy)
    update = index_of(
        steps, 'update-function-code --function-name "$FUNCTION_NAME" --image-uri "$IMAGE_URI"'
    )
    publish = index_of(steps, "publish-version")
    direct = index_of(steps, "smoke.py --function")
    promote = index_of(steps, '--function-version "$VERSION"')
    through_api = index_of(steps, "smoke.py --url")
    assert update < publish < direct < promote < through_api
    assert '--qualifier "$VERSION"' in steps[direct]["run"]
    assert deploy["env"]["LAMBDA_ALIAS"] == "live"


def test_the_image_is_deployed_and_restored_by_digest(deploy):
    steps = steps_of(deploy)
    build = steps[index_of(steps, "docker push")]["run"]
    assert "RepoDigests" in build and "uri=$digest" in build
    previous = steps[index_of(steps, "get-alias")]["run"]
    assert "Code.ResolvedImageUri" in previous and '--qualifier "$LAMBDA_ALIAS"' in previous
    assert "@sha256:" in previous  # no digest, no deploy


def test_rollback_runs_on_failure_and_on_cancellation(deploy):
    rollbacks = [step for step in steps_of(deploy) if step.get("name", "").startswith("Roll back")]
    assert len(rollbacks) == 2
    for step in rollbacks:
        assert step["if"].startswith("(failure() || cancelled())")
    alias, code = rollbacks
    assert "update-alias" in alias["run"] and "$PREVIOUS_VERSION" in alias["run"]
    assert "steps.previous.outputs.version" in alias["env"]["PREVIOUS_VERSION"]
    assert '--image-uri "$PREVIOUS_IMAGE"' in code["run"]
    assert "steps.previous.outputs.image" in code["env"]["PREVIOUS_IMAGE"]


@pytest.mark.parametrize("name", ["ci.yml", "deploy.yml", "monitor.yml", "retrain.yml"])
def test_no_secret_is_passed_on_a_command_line(name):
    text = (WORKFLOWS / name).read_text()
    assert "--api-key" not in text and "x-api-key" not in text.lower()
    for job in workflow(name)["jobs"].values():
        for step in job.get("steps", []):
            for secret in re.findall(r"\$\{\{\s*secrets\.(\w+)", str(step.get("with", ""))):
                pytest.fail(f"{name}: secrets.{secret} handed to an action's inputs")
            for variable, value in step.get("env", {}).items():
                if "secrets." in str(value):
                    assert f"${variable}" not in step.get("run", ""), (
                        f"{name}: ${variable} expanded into a command line"
                    )


def test_ci_grants_id_token_only_where_aws_is_assumed_and_only_a_read_only_role():
    ci = workflow("ci.yml")
    assert "id-token" not in ci.get("permissions", {})
    for name, job in ci["jobs"].items():
        assumes = [
            step
            for step in job.get("steps", [])
            if "configure-aws-credentials" in step.get("uses", "")
        ]
        if job.get("permissions", {}).get("id-token") == "write":
            assert assumes, f"{name} may request OIDC tokens but assumes no role"
        for step in assumes:
            assert job["permissions"].get("id-token") == "write"
            assert step["with"]["role-to-assume"] == "${{ vars.DVC_REMOTE_READ_ROLE_ARN }}"
    review, comment = ci["jobs"]["review"], ci["jobs"]["comment"]
    assert "pull-requests" not in review["permissions"]  # it runs the pull request's code
    assert comment["permissions"] == {"pull-requests": "write"}
    assert not any("checkout" in step.get("uses", "") for step in comment["steps"])


def template() -> dict:
    return yaml.load((REPO_ROOT / "lambda" / "template.yaml").read_text(), Loader=AnyTagLoader)


def test_the_function_has_reserved_concurrency_and_a_live_alias():
    parsed = template()
    function = parsed["Resources"]["PredictFunction"]["Properties"]
    assert function["ReservedConcurrentExecutions"] == "ReservedConcurrency"
    assert parsed["Parameters"]["ReservedConcurrency"]["Default"] == 10
    assert function["AutoPublishAlias"] == "live"


def test_traces_capture_neither_responses_nor_errors():
    variables = template()["Resources"]["PredictFunction"]["Properties"]["Environment"]
    assert variables["Variables"]["POWERTOOLS_TRACER_CAPTURE_RESPONSE"] == "false"
    assert variables["Variables"]["POWERTOOLS_TRACER_CAPTURE_ERROR"] == "false"
    dockerfile = (REPO_ROOT / "lambda" / "Dockerfile").read_text()
    assert "POWERTOOLS_TRACER_CAPTURE_RESPONSE=false" in dockerfile
    assert "POWERTOOLS_TRACER_CAPTURE_ERROR=false" in dockerfile


def test_api_access_logs_are_json_with_retention_and_no_body():
    parsed = template()
    setting = parsed["Resources"]["PredictionApi"]["Properties"]["AccessLogSetting"]
    assert setting["DestinationArn"] == "ApiAccessLogs.Arn"
    fields = json.loads(re.sub(r"\$context\.[\w.]+", "x", setting["Format"]))
    assert "requestId" in fields and "status" in fields
    assert not re.search(r"\$input|body|header", setting["Format"], re.IGNORECASE)
    logs = parsed["Resources"]["ApiAccessLogs"]
    assert logs["Type"] == "AWS::Logs::LogGroup"
    assert logs["Properties"]["RetentionInDays"] == "LogRetentionDays"


def test_the_image_is_python_3_12_on_amazon_linux_2023_with_the_dev_pins():
    dockerfile = (REPO_ROOT / "lambda" / "Dockerfile").read_text()
    assert re.search(r"^FROM public\.ecr\.aws/lambda/python:3\.12$", dockerfile, re.M)
    pins = dict(
        line.split("==")
        for line in (REPO_ROOT / "lambda" / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    # The runtime the export's parity check ran with (pyproject.toml) is the one that serves.
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert f'"onnxruntime=={pins["onnxruntime"]}"' in pyproject
    assert int(pins["numpy"].split(".")[0]) >= 2


def test_backlog_scoring_is_wired_s3_to_sqs_to_the_second_handler_with_a_dead_letter_queue():
    resources = template()["Resources"]
    function = resources["ScoreFunction"]["Properties"]
    (command,) = function["ImageConfig"]["Command"]
    assert command == "pneumonia.serving.fanout.lambda_handler"
    module = command.rpartition(".")[0].replace(".", "/") + ".py"
    assert (
        f"COPY {module.rpartition('/')[0]}/ " in (REPO_ROOT / "lambda" / "Dockerfile").read_text()
    )
    source = function["Events"]["Studies"]["Properties"]
    assert source["Queue"] == "ScoringQueue.Arn"
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    queue = resources["ScoringQueue"]["Properties"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == "ScoringDeadLetterQueue.Arn"
    assert queue["VisibilityTimeout"] >= 6 * function["Timeout"]  # Lambda's SQS guidance
    # Rows go outside the prefix that notifies the queue: a row never triggers scoring.
    (notification,) = resources["StudiesBucket"]["Properties"]["NotificationConfiguration"][
        "QueueConfigurations"
    ]
    (rule,) = notification["Filter"]["S3Key"]["Rules"]
    variables = function["Environment"]["Variables"]
    assert rule["Value"] == variables["INPUT_PREFIX"]
    assert not variables["OUTPUT_PREFIX"].startswith(rule["Value"])
    table = resources["IdempotencyTable"]["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"]["AttributeName"] == "expiration"  # Powertools'


def test_both_functions_take_the_architecture_parameter_and_the_deploy_follows_it(deploy):
    spec = template()
    parameter = spec["Parameters"]["Architecture"]
    assert parameter["Default"] == "x86_64" and set(parameter["AllowedValues"]) == {
        "x86_64",
        "arm64",
    }
    functions = [
        resource
        for resource in spec["Resources"].values()
        if resource["Type"] == "AWS::Serverless::Function"
    ]
    assert len(functions) == 2
    for function in functions:
        assert function["Properties"]["Architectures"] == ["Architecture"]  # !Ref Architecture
    env = deploy["env"]
    assert "vars.LAMBDA_ARCHITECTURE" in env["LAMBDA_ARCHITECTURE"]
    scripts = "\n".join(step.get("run", "") for step in steps_of(deploy))
    assert 'docker build --platform "$platform"' in scripts
    assert scripts.count('--architectures "$LAMBDA_ARCHITECTURE"') == 2  # both functions
    assert '--architectures "$PREVIOUS_ARCHITECTURE"' in scripts  # and the rollback
