"""Command-line flags that change a verdict: `pneumonia.review --base-spread` (the base's seed
spread, not its single run, is what a regression is measured from) and `pneumonia.monitor
--reference-prevalence` / `--design-effect` (the reference resampled to a site's share of
pneumonia; n images counted as n / D independent ones), each run through its `main(argv)`."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumonia.evaluation.reference import write_reference
from pneumonia.ops import review
from tests.conftest import REPO_ROOT
from tests.unit.test_monitor import PRIOR, Sample, draw, run, write_current
from tests.unit.test_review import SPREAD, metrics

# ---------------------------------------------------------------- review --base-spread


@pytest.fixture
def gate_files(tmp_path, monkeypatch):
    """A writer, in tmp_path beside params.yaml (floors 0.975 / 0.96, tolerance 0.01, as
    the repository's), of the change's metrics, the base's single run and its seed spread;
    it returns the arguments without and with --base-spread. `review.main` runs there
    without dvc."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(review, "dvc_output", lambda *args: "_dvc not run in this test_")
    shutil.copyfile(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")

    def write(sensitivity: float, base: float, spread: dict) -> tuple[list[str], list[str]]:
        (tmp_path / "current.json").write_text(json.dumps(metrics(0.990, sensitivity)))
        (tmp_path / "base.json").write_text(json.dumps(metrics(0.995, base)))
        (tmp_path / "spread.json").write_text(json.dumps(spread))
        files = ["--metrics", "current.json", "--base-metrics", "base.json"]
        return files, [*files, "--base-spread", "spread.json"]

    return write


def test_a_drop_within_the_base_seed_spread_passes_the_gate(gate_files, capsys):
    # GIVEN sensitivity 0.965: 0.025 below the base's run, 0.003 below its lowest seed (0.962)
    without, with_spread = gate_files(0.965, 0.990, SPREAD)
    # THEN against the base's run it is a regression; against its spread it is not
    assert review.main(["gate", *without]) == 1
    assert capsys.readouterr().out.splitlines()[1:] == [
        "FAIL test sensitivity fell from 0.9900 to 0.9650, more than the tolerance 0.0100",
        "gate failed",
    ]
    assert review.main(["gate", *with_spread]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["gate passed"]


def test_a_drop_beyond_the_base_seed_spread_fails_the_gate(gate_files, capsys):
    # GIVEN a base whose run drew sensitivity 0.975 and whose seeds drew at least 0.985,
    # and the change at 0.970: within the tolerance of that run, not of the lowest seed
    spread = copy.deepcopy(SPREAD)
    spread["splits"]["test"]["sensitivity"] = {"mean": 0.988, "min": 0.985, "max": 0.991}
    without, with_spread = gate_files(0.970, 0.975, spread)
    assert review.main(["gate", *without]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["gate passed"]
    assert review.main(["gate", *with_spread]) == 1
    assert capsys.readouterr().out.splitlines()[1:] == [
        "FAIL test sensitivity 0.9700 is below the base's lowest of 3 seeds (0.9850) by more "
        "than the tolerance 0.0100",
        "gate failed",
    ]


def test_the_report_shows_the_base_spread_and_its_verdict(gate_files, tmp_path):
    without, with_spread = gate_files(0.965, 0.990, SPREAD)
    assert review.main(["report", *without, "--output", "single.md"]) == 0
    assert review.main(["report", *with_spread, "--output", "spread.md"]) == 0
    single, ranged = (tmp_path / "single.md").read_text(), (tmp_path / "spread.md").read_text()
    assert "| test | sensitivity | 0.9650 | 0.9900 |" in single
    assert "Metric gate **failed**." in single and "Base column" not in single
    assert "| test | sensitivity | 0.9650 | 0.9750 [0.9620, 0.9900] |" in ranged
    assert "| test | roc_auc | 0.9900 | 0.9900 [0.9850, 0.9950] |" in ranged
    assert "Base column: mean [min, max] over seeds [42, 7, 123] on AMD EPYC (AVX2)." in ranged
    assert "Metric gate passed." in ranged


# ---------------------------------------------------------------- monitor flags


@pytest.fixture
def at_60_percent(tmp_path) -> tuple[Path, Path]:
    """(reference, current): a reference of 400 images at the calibration's 75% of pneumonia
    (300 PNEUMONIA, 100 NORMAL), and a window of 200 at exactly 60%, from the same class
    distributions (label shift only); no features, so KS and prevalence run."""
    rng = np.random.default_rng(7)
    labels, probabilities, features = draw(400, PRIOR, rng, exact=True)
    reference_file = tmp_path / "reference.jsonl"
    write_reference(reference_file, labels, probabilities, features)
    _, window, _ = draw(200, 0.6, rng, exact=True)
    current = tmp_path / "predictions.jsonl"
    write_current(current, Sample(window, None), features=False)
    return reference_file, current


def test_a_site_at_its_own_prevalence_is_compared_with_the_reference_resampled_to_it(
    at_60_percent,
):
    reference_file, current = at_60_percent
    # WHEN the window at 60% is compared with the reference as it is (75%)
    status, report = run(reference_file, current)
    prevalence = report["tests"]["prevalence"]
    # THEN its share of pneumonia is flagged
    assert status == 1 and report["drifted_tests"] == ["ks", "prevalence"]
    assert report["counts"]["reference"] == 400
    assert prevalence["reference"] == 0.75
    assert prevalence["reference_share_from"] == "reference labels"
    assert prevalence["estimate"] == pytest.approx(0.5742, abs=1e-4)
    assert prevalence["p_value"] < prevalence["level"] == 0.025
    # WHEN the reference is resampled to the site's 60% (all 100 NORMAL, 150 PNEUMONIA)
    status, report = run(reference_file, current, "--reference-prevalence", "0.6")
    resampled = report["tests"]["prevalence"]
    # THEN the same window is no drift
    assert status == 0 and report["drifted_tests"] == []
    assert report["counts"]["reference"] == 250
    assert resampled["reference"] == 0.6 and resampled["reference_share_from"] == "given"
    assert resampled["estimate"] == prevalence["estimate"]  # the window's, either way
    assert resampled["p_value"] > 0.5 > resampled["level"]
    assert report["tests"]["ks"]["p_value"] > 0.5


def test_a_larger_design_effect_raises_the_p_values_of_the_same_window(at_60_percent):
    reference_file, current = at_60_percent
    status_1, independent = run(reference_file, current, "--design-effect", "1")
    status_4, clustered = run(reference_file, current, "--design-effect", "4")
    assert (independent["design_effect"], clustered["design_effect"]) == (1.0, 4.0)
    ks_1, ks_4 = (report["tests"]["ks"] for report in (independent, clustered))
    prevalence_1, prevalence_4 = (
        report["tests"]["prevalence"] for report in (independent, clustered)
    )
    # The statistics are the window's; counting 200 images as 50 weakens the evidence.
    assert ks_1["statistic"] == ks_4["statistic"] == 0.1625
    assert ks_1["p_value"] < 0.002 < 0.1 < ks_4["p_value"]
    assert prevalence_4["statistic"] == pytest.approx(prevalence_1["statistic"] / 4, rel=1e-12)
    assert prevalence_1["p_value"] < 0.001 < 0.025 < prevalence_4["p_value"]
    low_1, high_1 = prevalence_1["ci95"]
    low_4, high_4 = prevalence_4["ci95"]
    assert low_4 < low_1 < prevalence_1["estimate"] < high_1 < high_4
    assert (status_1, independent["drifted_tests"]) == (1, ["ks", "prevalence"])
    assert (status_4, clustered["drifted_tests"]) == (0, [])
