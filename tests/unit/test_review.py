"""The pull-request gate on good, regressed, below-floor, missing, non-finite and malformed
metrics, with its floors read from the base revision."""

import json
import math
import shutil
import subprocess

import pytest
import yaml

from pneumonia.config import GateParams
from pneumonia.ops import review
from pneumonia.ops.review import MetricsError, check_gate, held_out_table, main, read_metrics
from tests.conftest import REPO_ROOT

GATE = GateParams(min_roc_auc=0.975, min_sensitivity=0.96, max_regression=0.01)


def metrics(roc_auc: float, sensitivity: float) -> dict:
    return {"threshold": 0.4, "test": {"roc_auc": roc_auc, "sensitivity": sensitivity}}


def test_good_metrics_pass_against_a_baseline():
    assert check_gate(metrics(0.990, 0.97), metrics(0.992, 0.975), GATE) == []


def test_below_a_floor_fails_and_says_which():
    failures = check_gate(metrics(0.970, 0.97), None, GATE)
    assert failures == ["test roc_auc 0.9700 is below the floor 0.9750"]


def test_a_regression_beyond_the_tolerance_fails_even_above_the_floors():
    failures = check_gate(metrics(0.990, 0.965), metrics(0.995, 0.990), GATE)
    assert failures == [
        "test sensitivity fell from 0.9900 to 0.9650, more than the tolerance 0.0100"
    ]


def test_a_base_without_the_metric_is_no_regression():
    assert check_gate(metrics(0.99, 0.97), {"test": {}}, GATE) == []


def test_metrics_without_test_values_are_an_error():
    with pytest.raises(MetricsError, match=r"test\.roc_auc"):
        check_gate({"threshold": 0.5}, None, GATE)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None, "nan"])
def test_a_non_finite_or_null_metric_fails_the_gate(bad):
    # NaN compares false with every floor and tolerance: unchecked, it passed the gate.
    failures = check_gate(metrics(bad, 0.97), metrics(0.99, 0.97), GATE)
    assert len(failures) == 1
    assert failures[0].startswith("test roc_auc is ") and "not a finite number" in failures[0]
    failures = check_gate(metrics(0.99, bad), None, GATE)
    assert len(failures) == 1 and failures[0].startswith("test sensitivity is ")


def test_a_missing_gated_metric_fails_the_gate():
    assert check_gate({"test": {"roc_auc": 0.99}}, None, GATE) == [
        "test sensitivity is missing: the gate cannot pass without it"
    ]


def test_nan_written_by_evaluate_fails_the_gate_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    current, base = tmp_path / "metrics.json", tmp_path / "base.json"
    current.write_text(json.dumps(metrics(math.nan, math.nan)))  # json writes NaN literals
    base.write_text(json.dumps(metrics(0.99, 0.97)))
    assert main(["gate", "--metrics", str(current), "--base-metrics", str(base)]) == 1
    out = capsys.readouterr().out
    assert "FAIL test roc_auc is nan, not a finite number" in out
    assert "FAIL test sensitivity is nan" in out and "gate failed" in out


def test_a_non_finite_base_is_no_baseline():
    assert check_gate(metrics(0.99, 0.97), metrics(math.nan, math.inf), GATE) == []


def test_missing_and_malformed_files_are_clear_errors(tmp_path):
    with pytest.raises(MetricsError, match="not found"):
        read_metrics(tmp_path / "metrics.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(MetricsError, match="not valid JSON"):
        read_metrics(bad)


def test_the_gate_command_exit_codes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")  # floors from params
    good, base, bad = (tmp_path / name for name in ("good.json", "base.json", "bad.json"))
    good.write_text(json.dumps(metrics(0.99, 0.97)))
    base.write_text(json.dumps(metrics(0.99, 0.97)))
    bad.write_text(json.dumps(metrics(0.90, 0.97)))
    assert main(["gate", "--metrics", str(good), "--base-metrics", str(base)]) == 0
    assert main(["gate", "--metrics", str(bad), "--base-metrics", str(base)]) == 1
    assert "FAIL test roc_auc 0.9000 is below the floor" in capsys.readouterr().out
    assert (
        main(["gate", "--metrics", str(tmp_path / "absent.json"), "--base-metrics", str(base)]) == 2
    )
    assert "not found" in capsys.readouterr().err


SPREAD = {
    "seeds": [42, 7, 123],
    "cpu": {"model": "AMD EPYC", "isa": "AVX2"},
    "splits": {
        "test": {
            "roc_auc": {"mean": 0.990, "min": 0.985, "max": 0.995},
            "sensitivity": {"mean": 0.975, "min": 0.962, "max": 0.990},
        }
    },
}


def test_with_a_seed_spread_a_regression_is_measured_from_the_lowest_seed():
    # 0.965 is 0.025 below the base's own run but within the tolerance of its lowest seed.
    assert check_gate(metrics(0.990, 0.965), metrics(0.995, 0.990), GATE, SPREAD) == []
    failures = check_gate(metrics(0.990, 0.950), metrics(0.995, 0.990), GATE, SPREAD)
    assert failures == [
        "test sensitivity 0.9500 is below the floor 0.9600",
        "test sensitivity 0.9500 is below the base's lowest of 3 seeds (0.9620) by more than "
        "the tolerance 0.0100",
    ]


def test_the_report_shows_every_held_out_split_against_the_base_spread():
    current = {
        "test": {"roc_auc": 0.99, "accuracy": 0.95, "sensitivity": 0.97, "specificity": 0.9},
        "early": {"roc_auc": 0.97, "accuracy": 0.93, "sensitivity": 0.99, "specificity": 0.8},
    }
    table = held_out_table(current, {"early": {"roc_auc": 0.96}}, SPREAD)
    assert "| test | roc_auc | 0.9900 | 0.9900 [0.9850, 0.9950] |" in table
    assert "| early | roc_auc | 0.9700 | 0.9600 |" in table
    assert "| early | specificity | 0.8000 | - |" in table
    assert "late" not in table and "AMD EPYC (AVX2)" in table


def git(repo, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def params_with_gate(gate: dict | None) -> str:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    if gate is None:
        del params["gate"]
    else:
        params["gate"] = gate
    return yaml.safe_dump(params)


@pytest.fixture
def pr_repo(tmp_path, monkeypatch):
    """A git repo whose `main` holds params.yaml, and a `pr` branch that edits it."""

    def make(base_gate: dict | None, pr_gate: dict):
        git(tmp_path, "init", "-q", "-b", "main")
        (tmp_path / "params.yaml").write_text(params_with_gate(base_gate))
        git(tmp_path, "add", "params.yaml")
        git(tmp_path, "commit", "-qm", "base")
        git(tmp_path, "checkout", "-qb", "pr")
        (tmp_path / "params.yaml").write_text(params_with_gate(pr_gate))
        git(tmp_path, "commit", "-qam", "lower the floor")
        (tmp_path / "metrics.json").write_text(json.dumps(metrics(0.90, 0.97)))
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(review, "dvc_output", lambda *args: "_dvc not run in this test_")
        return tmp_path

    return make


STRICT = {"min_roc_auc": 0.975, "min_sensitivity": 0.96, "max_regression": 0.01}
LAX = {"min_roc_auc": 0.5, "min_sensitivity": 0.5, "max_regression": 1.0}


def test_a_pull_request_that_lowers_its_floor_still_fails_on_the_base_floor(pr_repo, capsys):
    repo = pr_repo(STRICT, LAX)
    assert main(["gate", "--base", "main", "--metrics", "metrics.json"]) == 1
    out = capsys.readouterr().out
    assert "Gate from `params.yaml` at `main` (the base): min_roc_auc 0.975" in out
    assert "FAIL test roc_auc 0.9000 is below the floor 0.9750" in out
    assert "Warning" not in out
    assert main(["report", "--base", "main", "--metrics", "metrics.json"]) == 0
    text = (repo / "review.md").read_text()
    assert "Metric gate **failed**." in text
    assert "Gate from `params.yaml` at `main` (the base)" in text
    assert "below the floor 0.9750" in text


def test_a_base_without_a_gate_section_falls_back_to_the_change_with_a_warning(pr_repo, capsys):
    repo = pr_repo(None, LAX)
    assert main(["gate", "--base", "main", "--metrics", "metrics.json"]) == 0
    out = capsys.readouterr().out
    assert "Warning: params.yaml at `main` has no gate section" in out
    assert "Gate from this change's own `params.yaml`: min_roc_auc 0.5" in out
    assert main(["report", "--base", "main", "--metrics", "metrics.json"]) == 0
    assert (
        "**Warning**: params.yaml at `main` has no gate section" in (repo / "review.md").read_text()
    )
    assert "warning: params.yaml at `main` has no gate section" in capsys.readouterr().err


def test_an_invalid_base_gate_is_an_error_not_a_fallback(pr_repo, capsys):
    pr_repo({**STRICT, "min_roc_auc": "high"}, LAX)
    assert main(["gate", "--base", "main", "--metrics", "metrics.json"]) == 2
    assert "gate section of params.yaml at main is invalid" in capsys.readouterr().err
