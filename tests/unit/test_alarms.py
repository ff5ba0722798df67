"""The SAM template's alarms and the drift monitor's read-only role, read from
lambda/template.yaml itself: every alarm notifies the alarm topic, each reads the metrics the
endpoint really emits (pneumonia/serving/app.py, as Powertools writes them), its metric math
means what its description says (evaluated here on made-up values), and the role can only
list and read the scoring rows, only from the repository's main branch. cfn-lint checks the
template's schema in `make lint`."""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.unit.test_delivery import template

APP = REPO_ROOT / "pneumonia" / "serving" / "app.py"
ALARM = "AWS::CloudWatch::Alarm"
MISSING = None  # a metric with no data point in the period


@pytest.fixture(scope="module")
def spec() -> dict:
    return template()


@pytest.fixture(scope="module")
def resources(spec) -> dict:
    return spec["Resources"]


def alarm(resources: dict, name: str) -> dict:
    assert resources[name]["Type"] == ALARM
    return resources[name]["Properties"]


def returned(properties: dict) -> dict:
    (result,) = [query for query in properties["Metrics"] if query.get("ReturnData", True)]
    assert "Expression" in result
    return result


def stats(properties: dict) -> dict[str, dict]:
    """The alarm's metrics (not its expressions) by Id: {namespace, name, dimensions, stat}."""
    found = {}
    for query in properties["Metrics"]:
        if "MetricStat" in query:
            assert query["ReturnData"] is False  # only the one expression is the alarm's
            metric = query["MetricStat"]["Metric"]
            found[query["Id"]] = {
                "namespace": metric["Namespace"],
                "name": metric["MetricName"],
                "dimensions": {d["Name"]: d["Value"] for d in metric["Dimensions"]},
                "stat": query["MetricStat"]["Stat"],
                "period": query["MetricStat"]["Period"],
            }
    return found


# ---- the endpoint's metrics, read from its source and from Powertools itself ----


def app_tree() -> ast.Module:
    return ast.parse(APP.read_text())


def keyword(call: ast.Call, name: str) -> str:
    (value,) = [k.value for k in call.keywords if k.arg == name]
    assert isinstance(value, ast.Constant), f"{name}= is not a literal in app.py"
    return value.value


def calls_to(node: ast.AST, attribute: str) -> list[ast.Call]:
    return [
        call
        for call in ast.walk(node)
        if isinstance(call, ast.Call)
        and (
            (isinstance(call.func, ast.Attribute) and call.func.attr == attribute)
            or (isinstance(call.func, ast.Name) and call.func.id == attribute)
        )
    ]


def emitted_in(node: ast.AST) -> set[str]:
    """Metric names with a literal name= that `node` passes to add_metric."""
    names = set()
    for call in calls_to(node, "add_metric"):
        value = next(k.value for k in call.keywords if k.arg == "name")
        if isinstance(value, ast.Constant):
            names.add(value.value)
    return names


@pytest.fixture(scope="module")
def endpoint() -> dict:
    """app.py's Metrics(namespace, service), the names it emits, and the dimensions Powertools
    writes for them (serialized by Powertools, not assumed)."""
    from aws_lambda_powertools import Metrics
    from aws_lambda_powertools.metrics import MetricUnit

    (constructor,) = calls_to(app_tree(), "Metrics")
    namespace, service = keyword(constructor, "namespace"), keyword(constructor, "service")
    metrics = Metrics(namespace=namespace, service=service)
    metrics.add_metric(name="Predictions", unit=MetricUnit.Count, value=1)
    blob = metrics.serialize_metric_set()
    metrics.clear_metrics()
    (directive,) = blob["_aws"]["CloudWatchMetrics"]
    (dimension_names,) = directive["Dimensions"]
    return {
        "namespace": directive["Namespace"],
        "dimensions": {name: blob[name] for name in dimension_names},
        "names": emitted_in(app_tree()),
    }


def test_powertools_writes_the_namespace_and_service_app_py_names(endpoint):
    (constructor,) = calls_to(app_tree(), "Metrics")
    assert endpoint["namespace"] == keyword(constructor, "namespace") == "PneumoniaEndpoint"
    assert endpoint["dimensions"] == {"service": keyword(constructor, "service")}


def test_refusals_are_a_part_of_client_errors_and_predictions_are_the_answers():
    """The refusal rate's denominator rests on this: every answered /predict counts once in
    Predictions or in ClientErrors, and a NotAChestXray is also a ClientErrors."""
    functions = {
        node.name: node for node in ast.walk(app_tree()) if isinstance(node, ast.FunctionDef)
    }
    (refusing,) = [f for f in functions.values() if "NotAChestXray" in emitted_in(f)]
    assert {"ClientErrors", "NotAChestXray"} <= emitted_in(refusing)
    assert "Predictions" in emitted_in(functions["predict"])
    assert "ProbabilityPneumonia" in emitted_in(functions["predict"])


# ---- metric math, evaluated on made-up values ----


def evaluate(properties: dict, parameters: dict, values: Mapping[str, float | None]) -> float:
    """The alarm's returned expression for one period: `values` are its metrics' statistics
    (MISSING for no data point), the template's parameters at their defaults. Supports the
    subset of CloudWatch metric math the template uses: + - * /, comparisons, AND/OR, IF, FILL."""
    scope: dict = {
        "_if": lambda condition, yes, no: yes if condition else no,
        "_fill": lambda series, value: np.float64(value) if series is None else series,
    }
    scope |= {key: None if v is None else np.float64(v) for key, v in values.items()}
    expressions = {q["Id"]: q["Expression"] for q in properties["Metrics"] if "Expression" in q}
    # Expressions may use earlier ones: evaluate in the template's order.
    for query_id, text in expressions.items():
        text = re.sub(r"\$\{(\w+)\}", lambda m: str(parameters[m.group(1)]["Default"]), text)
        assert "${" not in text, text
        text = re.sub(r"\bIF\(", "_if(", text)
        text = re.sub(r"\bFILL\(", "_fill(", text)
        text = re.sub(r"\bAND\b|&&", " and ", text)
        text = re.sub(r"\bOR\b|\|\|", " or ", text)
        assert re.fullmatch(r"[\w\s.+\-*/()<>=!,]+", text), text
        try:
            # float64: x / 0 is inf or nan, as in an IF branch CloudWatch does not take.
            with np.errstate(divide="ignore", invalid="ignore"):
                scope[query_id] = eval(text, {"__builtins__": {}}, scope)
        except TypeError:  # an unfilled missing metric: no data point
            scope[query_id] = MISSING
    return scope[returned(properties)["Id"]]


def breaches(properties: dict, parameters: dict, value: float | None) -> bool:
    """Whether one period's value breaches the alarm's threshold (MISSING: per
    TreatMissingData)."""
    if value is None:
        return properties["TreatMissingData"] == "breaching"
    threshold = properties["Threshold"]
    if isinstance(threshold, str):
        threshold = parameters[threshold]["Default"]
    compare = {
        "GreaterThanThreshold": value > threshold,
        "GreaterThanOrEqualToThreshold": value >= threshold,
        "LessThanThreshold": value < threshold,
        "LessThanOrEqualToThreshold": value <= threshold,
    }
    return compare[properties["ComparisonOperator"]]


# ---- the alarms ----

EXPECTED_ALARMS = {
    "DeadLettersAlarm",
    "Api5xxRateAlarm",
    "ApiLatencyP99Alarm",
    "RefusalRateAlarm",
    "ProbabilityBandAlarm",
}


def test_every_alarm_notifies_the_alarm_topic_when_it_fires_and_when_it_clears(spec, resources):
    alarms = {name for name, r in resources.items() if r["Type"] == ALARM}
    assert alarms >= EXPECTED_ALARMS
    assert resources["AlarmTopic"]["Type"] == "AWS::SNS::Topic"
    for name in alarms:
        properties = resources[name]["Properties"]
        assert properties["AlarmActions"] == ["AlarmTopic"], name
        assert properties["OKActions"] == ["AlarmTopic"], name
        assert properties["TreatMissingData"] in ("notBreaching", "breaching", "ignore", "missing")
        assert len(properties["AlarmDescription"]) > 80, f"{name}: say what to do"
    subscription = resources["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"]["TopicArn"] == "AlarmTopic"
    assert subscription["Properties"]["Endpoint"] == "AlarmEmail"
    assert spec["Parameters"]["AlarmEmail"]["Default"] == ""
    assert "AlarmEmail" in str(spec["Conditions"]["HasAlarmEmail"])
    assert spec["Outputs"]["AlarmTopicArn"]["Value"] == "AlarmTopic"


def test_thresholds_are_parameters_with_defaults(spec, resources):
    parameters = spec["Parameters"]
    for name in EXPECTED_ALARMS - {"DeadLettersAlarm", "ProbabilityBandAlarm"}:
        threshold = resources[name]["Properties"]["Threshold"]
        assert threshold in parameters, f"{name}: threshold {threshold!r} is not a parameter"
        assert isinstance(parameters[threshold]["Default"], int | float)
    # Every ${Parameter} in an expression or a description names a parameter.
    for name in EXPECTED_ALARMS:
        for used in re.findall(r"\$\{(\w+)\}", str(resources[name]["Properties"])):
            assert used in parameters or used.startswith("AWS"), (name, used)


def test_the_5xx_alarm_is_5xx_errors_over_requests_of_the_api_stage(spec, resources):
    properties = alarm(resources, "Api5xxRateAlarm")
    api = resources["PredictionApi"]["Properties"]
    dimensions = {"ApiName": api["Name"], "Stage": api["StageName"]}
    assert dimensions == {"ApiName": "AWS::StackName", "Stage": "StageName"}
    metrics = stats(properties)
    by_name = {metric["name"]: (query_id, metric) for query_id, metric in metrics.items()}
    assert set(by_name) == {"5XXError", "Count"}
    for _, metric in by_name.values():
        assert metric["namespace"] == "AWS/ApiGateway"
        assert metric["dimensions"] == dimensions
        assert metric["stat"] == "Sum" and metric["period"] == 300
    errors, requests = by_name["5XXError"][0], by_name["Count"][0]
    assert re.fullmatch(rf"100 \* {errors} / {requests}", returned(properties)["Expression"])
    parameters = spec["Parameters"]
    assert evaluate(properties, parameters, {errors: 3, requests: 200}) == pytest.approx(1.5)
    assert breaches(
        properties, parameters, evaluate(properties, parameters, {errors: 3, requests: 200})
    )
    assert not breaches(
        properties, parameters, evaluate(properties, parameters, {errors: 1, requests: 200})
    )
    assert parameters["Api5xxRatePercent"]["Default"] == 1
    assert (properties["EvaluationPeriods"], properties["DatapointsToAlarm"]) == (3, 2)


def test_the_latency_alarm_is_the_api_stages_p99(spec, resources):
    properties = alarm(resources, "ApiLatencyP99Alarm")
    assert properties["Namespace"] == "AWS/ApiGateway"
    assert properties["MetricName"] == "Latency"
    assert {d["Name"]: d["Value"] for d in properties["Dimensions"]} == {
        "ApiName": "AWS::StackName",
        "Stage": "StageName",
    }
    assert properties["ExtendedStatistic"] == "p99"
    assert properties["Threshold"] == "LatencyP99ThresholdMs"
    assert spec["Parameters"]["LatencyP99ThresholdMs"]["Default"] >= 1000  # above a cold start


def test_the_refusal_rate_reads_what_the_endpoint_emits(spec, resources, endpoint):
    properties = alarm(resources, "RefusalRateAlarm")
    metrics = stats(properties)
    for metric in metrics.values():
        assert metric["namespace"] == endpoint["namespace"]
        assert metric["dimensions"] == endpoint["dimensions"]
        assert metric["name"] in endpoint["names"], f"app.py emits no {metric['name']}"
        assert metric["stat"] == "Sum"
    by_name = {metric["name"]: query_id for query_id, metric in metrics.items()}
    assert set(by_name) == {"NotAChestXray", "Predictions", "ClientErrors"}


def test_the_refusal_rate_is_refusals_over_answered_predict_requests(spec, resources):
    properties = alarm(resources, "RefusalRateAlarm")
    parameters = spec["Parameters"]
    ids = {metric["name"]: query_id for query_id, metric in stats(properties).items()}
    refused, answered, rejected = ids["NotAChestXray"], ids["Predictions"], ids["ClientErrors"]
    least = parameters["RefusalMinRequests"]["Default"]

    def share(refusals, predictions, client_errors):
        values = {refused: refusals, answered: predictions, rejected: client_errors}
        return evaluate(properties, parameters, values)

    # 15 refused of 100 requests (80 answered, 20 client errors of which 15 refusals): 15%.
    assert share(15, 80, 20) == pytest.approx(15.0)
    assert share(30, 60, 40) == pytest.approx(30.0)
    assert breaches(properties, parameters, share(30, 60, 40))
    assert not breaches(properties, parameters, share(15, 80, 20))
    # A period with nothing refused (no NotAChestXray data point) is 0%, not missing.
    assert share(MISSING, 100, MISSING) == 0
    # Only refusals: every request refused.
    assert share(least, MISSING, least) == pytest.approx(100.0)
    # No traffic at all, or too few requests to judge: never breaching.
    assert not breaches(properties, parameters, share(MISSING, MISSING, MISSING))
    assert not breaches(properties, parameters, share(least - 1, MISSING, least - 1))
    assert parameters["RefusalRatePercent"]["Default"] == 20


def test_the_probability_band_alarm_reads_the_calibrated_probability(spec, resources, endpoint):
    properties = alarm(resources, "ProbabilityBandAlarm")
    metrics = stats(properties)
    assert {metric["name"] for metric in metrics.values()} == {"ProbabilityPneumonia"}
    assert "ProbabilityPneumonia" in endpoint["names"]
    for metric in metrics.values():
        assert metric["namespace"] == endpoint["namespace"]
        assert metric["dimensions"] == endpoint["dimensions"]
        assert metric["period"] == 3600
    assert sorted(metric["stat"] for metric in metrics.values()) == ["Average", "SampleCount"]
    expression = returned(properties)["Expression"]
    for bound in ("ProbabilityMeanLow", "ProbabilityMeanHigh", "ProbabilityMinPredictions"):
        assert "${" + bound + "}" in expression
    parameters = spec["Parameters"]
    low, high = (parameters[p]["Default"] for p in ("ProbabilityMeanLow", "ProbabilityMeanHigh"))
    assert 0 < low < high < 1


def test_the_probability_band_alarm_fires_outside_the_band_on_enough_predictions(spec, resources):
    properties = alarm(resources, "ProbabilityBandAlarm")
    parameters = spec["Parameters"]
    ids = {metric["stat"]: query_id for query_id, metric in stats(properties).items()}
    low, high = (parameters[p]["Default"] for p in ("ProbabilityMeanLow", "ProbabilityMeanHigh"))
    enough = parameters["ProbabilityMinPredictions"]["Default"]

    def fires(mean, predictions):
        values = {ids["Average"]: mean, ids["SampleCount"]: predictions}
        return breaches(properties, parameters, evaluate(properties, parameters, values))

    middle = (low + high) / 2
    assert not fires(middle, enough)
    assert fires(low - 0.01, enough) and fires(high + 0.01, enough)
    assert not fires(low + 0.01, enough) and not fires(high - 0.01, enough)
    assert not fires(low - 0.3, enough - 1)  # too few predictions to judge
    assert not fires(MISSING, MISSING) or properties["TreatMissingData"] == "breaching"


# ---- the drift monitor's role ----


def test_the_monitor_role_is_made_only_with_a_provider_and_a_repository(spec, resources):
    role = resources["MonitorReadRole"]
    assert role["Type"] == "AWS::IAM::Role"
    assert role["Condition"] == "CreateMonitorReadRole"
    condition = str(spec["Conditions"]["CreateMonitorReadRole"])
    assert "GitHubOidcProviderArn" in condition and "GitHubRepository" in condition
    assert spec["Parameters"]["GitHubOidcProviderArn"]["Default"] == ""
    output = spec["Outputs"]["MonitorReadRoleArn"]
    assert output["Condition"] == "CreateMonitorReadRole"
    assert output["Value"] == "MonitorReadRole.Arn"


def test_the_monitor_role_trusts_only_the_repositorys_main_branch(resources):
    trust = resources["MonitorReadRole"]["Properties"]["AssumeRolePolicyDocument"]
    (statement,) = trust["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Principal"] == {"Federated": "GitHubOidcProviderArn"}
    # Exact matches only: no StringLike, no wildcard in what is matched.
    assert set(statement["Condition"]) == {"StringEquals"}
    claims = statement["Condition"]["StringEquals"]
    assert claims == {
        "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
        "token.actions.githubusercontent.com:sub": "repo:${GitHubRepository}:ref:refs/heads/main",
    }


def test_the_monitor_role_may_only_list_and_read_the_rows_and_its_reference(resources):
    role = resources["MonitorReadRole"]["Properties"]
    assert set(role) <= {
        "Description",
        "MaxSessionDuration",
        "AssumeRolePolicyDocument",
        "Policies",
    }
    prefix = resources["ScoreFunction"]["Properties"]["Environment"]["Variables"]["OUTPUT_PREFIX"]
    assert prefix.endswith("/")
    statements = [s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]]
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}
        assert isinstance(statement["Action"], str), "one action a statement"
    granted = sorted((s["Action"], s["Resource"]) for s in statements)
    assert granted == [
        ("s3:GetObject", "${StudiesBucket.Arn}/monitor/reference.jsonl"),
        ("s3:GetObject", "${StudiesBucket.Arn}/" + f"{prefix}*"),
        ("s3:ListBucket", "StudiesBucket.Arn"),
    ]
    listing = next(s for s in statements if s["Action"] == "s3:ListBucket")
    assert listing["Condition"] == {"StringLike": {"s3:prefix": f"{prefix}*"}}
    assert all("Condition" not in s for s in statements if s["Action"] == "s3:GetObject")
