"""Drift monitoring on synthetic predictions whose truth is known: calibrated probabilities
and class-dependent features drawn from fixed distributions, then shifted on purpose."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from pneumonia.decision.calibration import sigmoid
from pneumonia.evaluation.reference import write_reference
from pneumonia.ops.monitor import (
    MonitorError,
    Sample,
    compare,
    estimate_prevalence,
    main,
    read_rows,
    resample_to_prevalence,
)

PRIOR = 0.75  # the reference's share of pneumonia, which its probabilities are calibrated at
SEPARATION = 1.5  # class means of the score at +-SEPARATION, unit variance
FEATURES = 20


def draw(
    n: int,
    prevalence: float,
    rng: np.random.Generator,
    feature_shift: float = 0.0,
    exact: bool = False,
):
    """(labels, calibrated probabilities, features) of n images at a share of pneumonia:
    each image's class drawn on its own, or with `exact` the share exactly (a reference
    representative of its population, as a validation split is meant to be).

    The score is N(+-SEPARATION, 1) by class, so the posterior at PRIOR is exactly
    sigmoid(logit(PRIOR) + 2 * SEPARATION * score): calibrated, whatever the window's
    share (label shift). Features: noise, the class in the first three, plus
    `feature_shift` in the first four (an acquisition change the probabilities ignore).
    """
    if exact:
        labels = rng.permutation(np.arange(n) < round(n * prevalence)).astype(int)
    else:
        labels = (rng.random(n) < prevalence).astype(int)
    score = rng.normal(np.where(labels == 1, SEPARATION, -SEPARATION), 1.0)
    probabilities = sigmoid(np.log(PRIOR / (1 - PRIOR)) + 2 * SEPARATION * score)
    features = rng.normal(0.0, 1.0, (n, FEATURES))
    features[:, :3] += 0.8 * labels[:, None]
    features[:, :4] += feature_shift
    return labels, probabilities, features


def reference(rng: np.random.Generator, n: int = 400) -> Sample:
    labels, probabilities, features = draw(n, PRIOR, rng, exact=True)
    return Sample(probabilities, features, labels)


def window(rng: np.random.Generator, n: int = 100, prevalence: float = PRIOR, shift: float = 0.0):
    _, probabilities, features = draw(n, prevalence, rng, shift)
    return Sample(probabilities, features)


# ---------------------------------------------------------------- the statistics


def test_in_distribution_windows_alarm_at_most_alpha():
    # GIVEN 60 fresh windows of 100 independent images from the reference's distribution
    rng = np.random.default_rng(0)
    fixed = reference(rng)
    windows = 60
    # WHEN each is compared at alpha 0.05, the tests taking the images as independent
    alarms = sum(
        bool(compare(fixed, window(rng), permutations=200, seed=i, design_effect=1).drifted)
        for i in range(windows)
    )
    # THEN the false alarms are what a rate of at most 5% gives (99.9% binomial bound)
    assert alarms <= binom.ppf(0.999, windows, 0.05)


def twice(sample: Sample, rng: np.random.Generator) -> Sample:
    """Every image with a near copy beside it: patients imaged twice."""
    assert sample.features is not None
    jitter = rng.normal(0, 0.02, sample.features.shape)
    probabilities = np.clip(
        sample.probabilities + rng.normal(0, 1e-4, len(sample.probabilities)), 0, 1
    )
    return Sample(
        np.concatenate([sample.probabilities, probabilities]),
        np.concatenate([sample.features, sample.features + jitter]),
        None if sample.labels is None else np.concatenate([sample.labels, sample.labels]),
    )


def test_the_design_effect_holds_the_level_when_patients_have_several_images():
    # GIVEN a reference and windows of 100 images of 50 patients, each imaged twice
    rng = np.random.default_rng(6)
    fixed = twice(reference(rng, 200), rng)
    windows = [twice(window(rng, 50), rng) for _ in range(40)]

    def alarms(design_effect: float) -> int:
        return sum(
            bool(compare(fixed, w, permutations=200, seed=i, design_effect=design_effect).drifted)
            for i, w in enumerate(windows)
        )

    # THEN taking the images as independent alarms too often, counting them as halves not
    bound = binom.ppf(0.999, len(windows), 0.05)
    assert alarms(1.0) > bound
    assert alarms(2.0) <= bound


@pytest.mark.parametrize(("shift", "design_effect"), [(0.6, 1.0), (0.8, 2.0)])
def test_a_mean_shift_in_the_features_is_caught_by_the_mmd_test(shift, design_effect):
    # GIVEN windows whose features moved in 4 of 20 dimensions, the probabilities not
    rng = np.random.default_rng(1)
    fixed = reference(rng)
    caught, on_probabilities = 0, 0
    for seed in range(8):
        comparison = compare(
            fixed,
            window(rng, shift=shift),
            permutations=300,
            seed=seed,
            design_effect=design_effect,
        )
        caught += "mmd" in comparison.drifted
        on_probabilities += len({"ks", "prevalence"} & set(comparison.drifted))
    # THEN the MMD test flags each window; the tests on the probabilities, which did not
    # move, stay (almost) quiet
    assert caught == 8
    assert on_probabilities <= 2


def test_the_mmd_p_value_is_seeded_and_deterministic():
    rng = np.random.default_rng(2)
    fixed, shifted = reference(rng), window(rng, shift=0.2)
    first = compare(fixed, shifted, seed=5).results[1]
    again = compare(fixed, shifted, seed=5).results[1]
    assert first.p_value == again.p_value and first.statistic == again.statistic
    assert first.null is not None and len(first.null) == 1000
    assert first.detail["dims"] == FEATURES  # fewer features than the 32 components


@pytest.mark.parametrize("prevalence", [0.1, 0.4, 0.75, 0.95])
def test_the_prevalence_estimate_recovers_the_share_of_pneumonia(prevalence):
    rng = np.random.default_rng(3)
    labels, probabilities, _ = draw(2000, prevalence, rng)
    estimate, low, high = estimate_prevalence(probabilities, PRIOR)
    truth = labels.mean()
    assert estimate == pytest.approx(truth, abs=0.03)
    assert low < truth < high
    assert high - low < 0.1


def test_a_prevalence_change_from_25_to_60_percent_is_caught_and_estimated():
    # GIVEN a reference at the calibration's 75%, monitored as a site at 25%
    rng = np.random.default_rng(4)
    fixed = reference(rng, 800)
    quiet, caught, covered = 0, 0, 0
    for seed in range(10):
        # WHEN windows of 100 at 25% and at 60% are compared (default design effect)
        _, at_25, _ = draw(100, 0.25, rng)
        labels, at_60, _ = draw(100, 0.60, rng)
        calm = compare(fixed, Sample(at_25, None), reference_prevalence=0.25, seed=seed)
        moved = compare(fixed, Sample(at_60, None), reference_prevalence=0.25, seed=seed)
        quiet += "prevalence" not in calm.drifted
        caught += "prevalence" in moved.drifted
        # THEN the estimate is the window's share of pneumonia, within its interval
        detail = moved.results[2].detail
        assert detail["estimate"] == pytest.approx(labels.mean(), abs=0.1)
        covered += detail["ci95"][0] <= labels.mean() <= detail["ci95"][1]
        assert detail["reference"] == pytest.approx(0.25, abs=0.01)
    assert quiet >= 9 and caught == 10 and covered >= 8


def test_resampling_the_reference_keeps_the_largest_subset_at_the_share_asked():
    labels = np.array([1] * 100 + [0] * 300)
    index = resample_to_prevalence(labels, 0.6, seed=0)
    assert len(np.unique(index)) == len(index)  # no image twice
    assert labels[index].sum() == 100 and len(index) == 166  # all positives kept
    assert labels[index].mean() == pytest.approx(0.6, abs=1 / len(index))
    assert np.array_equal(index, resample_to_prevalence(labels, 0.6, seed=0))
    assert not np.array_equal(index, resample_to_prevalence(labels, 0.6, seed=1))
    with pytest.raises(MonitorError, match="cannot be resampled"):
        resample_to_prevalence(np.array([1] * 50 + [0]), 0.001, seed=0)


# ---------------------------------------------------------------- files and the command line


def write_current(path: Path, sample: Sample, errors: int = 0, features: bool = True) -> None:
    """Rows as pneumonia.batch writes them, with `errors` refused files among them."""
    with path.open("w") as sink:
        for number, probability in enumerate(sample.probabilities):
            row = {
                "file": f"NORMAL/patient{number}_image.jpeg",
                "sha256": f"{number:064x}",
                "status": "ok",
                "predicted_label": "PNEUMONIA" if probability >= 0.5 else "NORMAL",
                "probability_pneumonia": float(probability),
                "decision": "PNEUMONIA" if probability >= 0.5 else "NORMAL",
                "modelVersion": "sha256-0123456789ab",
            }
            if features and sample.features is not None:
                row["features"] = [float(value) for value in sample.features[number]]
            sink.write(json.dumps(row) + "\n")
            if number < errors:
                error = {"file": f"NORMAL/patient{number}_bad.jpeg", "sha256": "f" * 64}
                error |= {"status": "error", "error": "not a chest X-ray (422)"}
                sink.write(json.dumps(error | {"modelVersion": "sha256-0123456789ab"}) + "\n")


@pytest.fixture
def files(tmp_path: Path):
    rng = np.random.default_rng(5)
    labels, probabilities, features = draw(400, PRIOR, rng)
    reference_file = tmp_path / "reference.jsonl"
    write_reference(reference_file, labels, probabilities, features)
    return reference_file, tmp_path / "predictions.jsonl", rng


def run(reference_file: Path, current: Path, *extra: str, plot: bool = False) -> tuple[int, dict]:
    """The CLI's status and report; without the plot (most of a run's time) unless asked."""
    report, plot_file = current.with_name("report.json"), current.with_name("plot.png")
    paths = ["--reference", str(reference_file), "--current", str(current)]
    drawing = ["--plot", str(plot_file)] if plot else ["--no-plot"]
    status = main([*paths, "--report", str(report), *drawing, *extra])
    return status, json.loads(report.read_text())


def test_the_reference_file_round_trips(files):
    reference_file, _, _ = files
    rows = read_rows(reference_file)
    assert len(rows) == 400
    assert {row["label"] for row in rows} == {"NORMAL", "PNEUMONIA"}
    assert len(rows[0]["features"]) == FEATURES and "file" not in rows[0]


def test_the_cli_reports_no_drift_with_exit_status_0(files, capsys):
    reference_file, current, rng = files
    write_current(current, window(rng))
    status, report = run(reference_file, current, plot=True)
    assert status == 0
    assert report["drift"] is False and report["drifted_tests"] == []
    assert {name for name, test in report["tests"].items() if test["run"]} == {
        "ks",
        "mmd",
        "prevalence",
    }
    assert report["tests"]["ks"]["level"] == pytest.approx(0.05 / 3)
    assert report["counts"]["window"] == 100
    # a PNG, and no file name (patient ids) in the report
    assert current.with_name("plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "patient" not in current.with_name("report.json").read_text()
    printed = json.loads(capsys.readouterr().out)
    assert printed["drift"] is False and printed["window"] == 100


def test_the_cli_reports_drift_with_exit_status_1(files):
    reference_file, current, rng = files
    write_current(current, window(rng, shift=1.0))
    status, report = run(reference_file, current)
    assert status == 1
    assert report["drift"] is True and "mmd" in report["drifted_tests"]
    assert report["tests"]["mmd"]["p_value"] < report["tests"]["mmd"]["level"]


def test_report_and_plot_default_beside_the_current_file(files):
    reference_file, current, rng = files
    write_current(current, window(rng))
    assert main(["--reference", str(reference_file), "--current", str(current)]) == 0
    assert json.loads((current.parent / "predictions.monitor.json").read_text())["drift"] is False
    assert (current.parent / "predictions.monitor.png").stat().st_size > 1000


def test_no_plot_writes_the_report_alone(files, capsys):
    reference_file, current, rng = files
    write_current(current, window(rng))
    assert main(["--reference", str(reference_file), "--current", str(current), "--no-plot"]) == 0
    assert json.loads((current.parent / "predictions.monitor.json").read_text())["drift"] is False
    assert not (current.parent / "predictions.monitor.png").exists()
    assert json.loads(capsys.readouterr().out)["plot"] is None


def test_without_features_the_mmd_test_is_not_run_and_the_others_are(files):
    reference_file, current, rng = files
    write_current(current, window(rng, prevalence=0.2), features=False)
    status, report = run(reference_file, current)
    assert report["tests"]["mmd"]["run"] is False
    assert "carry no features" in report["tests"]["mmd"]["reason"]
    assert report["tests"]["ks"]["level"] == pytest.approx(0.05 / 2)  # two tests run
    assert status == 1 and "prevalence" in report["drifted_tests"]


def test_error_rows_are_counted_and_left_out_of_the_window(files):
    reference_file, current, rng = files
    write_current(current, window(rng, n=120), errors=12)
    status, report = run(reference_file, current, "--window", "50")
    assert report["counts"] == {
        "rows": 132,
        "ok": 120,
        "errors": 12,
        "window": 50,
        "error_share": pytest.approx(12 / 132),
        "reference": 400,
    }
    assert status == 0


def test_the_window_is_the_last_ok_rows(files, tmp_path):
    # GIVEN 100 shifted rows followed by 100 in-distribution rows
    reference_file, current, rng = files
    old, new = window(rng, shift=1.0), window(rng)
    write_current(tmp_path / "old.jsonl", old)
    write_current(tmp_path / "new.jsonl", new)
    current.write_text((tmp_path / "old.jsonl").read_text() + (tmp_path / "new.jsonl").read_text())
    # THEN the last 100 do not drift, all 200 do
    assert run(reference_file, current, "--window", "100")[0] == 0
    assert run(reference_file, current)[0] == 1


def test_a_torn_last_line_is_skipped(files):
    reference_file, current, rng = files
    write_current(current, window(rng))
    with current.open("a") as sink:
        sink.write('{"file": "x.jpeg", "status": "o')  # a batch run still writing
    status, report = run(reference_file, current)
    assert status == 0 and report["counts"]["rows"] == 100


def test_differing_model_versions_are_a_warning(files, tmp_path, capsys):
    _, current, rng = files
    labels, probabilities, features = draw(400, PRIOR, rng)
    other = tmp_path / "other.jsonl"
    write_reference(other, labels, probabilities, features, model_version="sha256-ffffffffffff")
    write_current(current, window(rng))
    _, report = run(other, current)
    assert report["warnings"] and "model versions differ" in report["warnings"][0]
    assert "model versions differ" in capsys.readouterr().err


def bad_input_cases(tmp_path: Path, reference_file: Path, rng) -> dict[str, tuple[list[str], str]]:
    good = tmp_path / "good.jsonl"
    write_current(good, window(rng))
    only_errors = tmp_path / "errors.jsonl"
    only_errors.write_text(json.dumps({"file": "a", "status": "error"}) + "\n")
    short = tmp_path / "short.jsonl"
    _, probabilities, features = draw(50, PRIOR, rng)
    write_current(short, Sample(probabilities, features[:, :19]))
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json}\n" + good.read_text())
    hostile = {  # each as the third line of a good file
        "long number": '{"status": "ok", "probability_pneumonia": ' + "9" * 5000 + "}",
        "deep nesting": '{"status": "ok", "features": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "invalid UTF-8": b'{"status": "ok", "file": "\xff\xfe"}'.decode("latin-1"),
        "huge feature": json.dumps(
            {"status": "ok", "probability_pneumonia": 0.5, "features": [1.0] * FEATURES}
        ).replace("[1.0,", "[" + "7" * 400 + ","),
    }
    lines = good.read_text().splitlines(keepends=True)
    files = {}
    for name, line in hostile.items():
        files[name] = tmp_path / f"{name.replace(' ', '-')}.jsonl"
        files[name].write_bytes("".join([*lines[:2], line + "\n", *lines[2:]]).encode("latin-1"))
    ref = ["--reference", str(reference_file)]
    return {
        "long number": ([*ref, "--current", str(files["long number"])], "line 3: not JSON"),
        "deep nesting": ([*ref, "--current", str(files["deep nesting"])], "line 3: not JSON"),
        "invalid UTF-8": ([*ref, "--current", str(files["invalid UTF-8"])], "line 3: not JSON"),
        "huge feature": ([*ref, "--current", str(files["huge feature"])], "not numbers"),
        "missing file": ([*ref, "--current", str(tmp_path / "absent.jsonl")], "cannot read"),
        "no ok rows": ([*ref, "--current", str(only_errors)], "no rows with status ok"),
        "feature lengths": ([*ref, "--current", str(short)], "features of length 19"),
        "not JSON": ([*ref, "--current", str(broken)], "line 1: not JSON"),
        "alpha": ([*ref, "--current", str(good), "--alpha", "1.5"], "not between 0 and 1"),
        "window": ([*ref, "--current", str(good), "--window", "0"], "not a positive integer"),
    }


@pytest.mark.parametrize(
    "case",
    [
        *("missing file", "no ok rows", "feature lengths", "not JSON", "alpha", "window"),
        *("long number", "deep nesting", "invalid UTF-8", "huge feature"),
    ],
)
def test_bad_input_is_exit_status_2_with_a_message(files, tmp_path, capsys, case):
    reference_file, _, rng = files
    argv, message = bad_input_cases(tmp_path, reference_file, rng)[case]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_reading_a_window_keeps_only_the_window_in_memory(tmp_path):
    import tracemalloc

    from pneumonia.ops.monitor import read_window

    # GIVEN 20,000 rows of 32 features each (about 12 MB of JSON)
    big = tmp_path / "big.jsonl"
    rng = np.random.default_rng(3)
    features = [json.dumps(rng.normal(size=32).round(6).tolist()) for _ in range(97)]
    with big.open("w") as sink:
        sink.writelines(
            f'{{"status": "ok", "probability_pneumonia": 0.5, "index": {index}, '
            f'"features": {features[index % 97]}}}\n'
            for index in range(20_000)
        )
    # WHEN the last 100 are read
    tracemalloc.start()
    window = read_window(big, 100)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # THEN they are the last 100, the counts cover the file, and far less than it was held
    assert [row["index"] for row in window.rows] == list(range(19_900, 20_000))
    assert window.counts == {"rows": 20_000, "ok": 20_000, "errors": 0}
    assert peak < 2_000_000 < big.stat().st_size


def test_the_mmd_test_subsamples_a_large_window():
    from pneumonia.ops.monitor import mmd_test

    rng = np.random.default_rng(4)
    result = mmd_test(rng.normal(size=(300, 8)), rng.normal(size=(2500, 8)), permutations=50)
    assert result.detail["window_rows"] == 1000 and result.detail["reference_rows"] == 300
