"""`python -m pneumonia.recalibrate` on real labelled images with the pipeline's own model,
and its result registered as a site's version and fetched back by deployment."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.integration.pipeline_repo import run

pytestmark = pytest.mark.integration

SITE = "children-north"


def recalibrate(repo: Path, folder: Path, output: Path, *extra: str, check: bool = True):
    return run(
        repo,
        *(sys.executable, "-m", "pneumonia.recalibrate", str(folder)),
        *("--model-dir", str(repo / "models"), "--output", str(output), *extra),
        check=check,
    )


@pytest.fixture(scope="module")
def site_dir(repo, sample_data, tmp_path_factory) -> Path:
    """The pipeline's model recalibrated on the committed sample (50 NORMAL, 100 PNEUMONIA)."""
    output = tmp_path_factory.mktemp("site") / "model"
    result = recalibrate(repo, sample_data / "train", output, "--site", SITE, "--bootstrap", "200")
    assert "before (shipped)" in result.stdout
    return output


def sample_files(sample_data: Path) -> list[tuple[int, Path]]:
    return [
        (label, path)
        for label, name in enumerate(("NORMAL", "PNEUMONIA"))
        for path in sorted((sample_data / "train" / name).iterdir())
    ]


def test_the_graph_is_the_same_and_the_version_new(repo, site_dir):
    base = json.loads((repo / "models/model.json").read_text())
    site = json.loads((site_dir / "model.json").read_text())
    assert (site_dir / "model.onnx").read_bytes() == (repo / "models/model.onnx").read_bytes()
    assert site["model_version"] != base["model_version"]
    assert site["site"] == SITE
    assert site["versions"]["recalibrated_from"] == base["model_version"]
    assert site["recalibration"]["method"] == "platt" and base.get("recalibration") is None
    # what does not belong to the operating point is carried over as it was
    for field in ("preprocessing", "ood_gate", "outputs", "calibration", "operating_point"):
        assert site[field] == base[field], field


def test_the_report_compares_before_and_after_on_the_held_out_half(site_dir):
    report = json.loads((site_dir / "recalibration.json").read_text())
    assert report["sample"]["NORMAL"]["files"] == 50
    assert report["sample"]["PNEUMONIA"]["files"] == 100
    answered = sum(report["sample"][name]["answered"] for name in ("NORMAL", "PNEUMONIA"))
    held = report["held_out"]
    assert held["images"] + held["fitted_on"] == answered == report["written"]["fitted_on"]
    assert held["fitted_on"] - held["images"] in (0, 1, 2)  # each class cut in two
    for side in ("before", "after"):
        for name in ("roc_auc", "accuracy", "sensitivity", "specificity"):
            low, high = held[side]["ci95"][name]
            assert low <= held[side][name] <= high, (side, name)
            # an interval, unless the rate sits at 0 or 1 in every resample (the slice's
            # one-epoch model can put a held-out class wholly on one side of the threshold)
            assert high > low or held[side][name] in (0.0, 1.0), (side, name)
    # a Platt map keeps the ranking: the same AUC before and after
    assert held["after"]["roc_auc"] == pytest.approx(held["before"]["roc_auc"], abs=1e-12)
    table = (site_dir / "recalibration.md").read_text()
    assert "| specificity |" in table and "| ece |" in table


def test_the_endpoint_answers_the_sites_probability_label_and_decision(repo, site_dir, sample_data):
    from pneumonia.serving.classifier import Classifier

    base, site = Classifier.load(repo / "models"), Classifier.load(site_dir)
    spec = json.loads((site_dir / "model.json").read_text())
    scale, shift = spec["recalibration"]["scale"], spec["recalibration"]["shift"]
    low, high = spec["decision_band"]["low"], spec["decision_band"]["high"]
    for _, path in sample_files(sample_data)[::25]:
        p = base.classify(path.read_bytes()).probability
        z = math.log(p) - math.log1p(-p)
        expected = 1 / (1 + math.exp(-(scale * z + shift)))  # by hand, not the product's code
        answer = site.classify(path.read_bytes())
        assert answer.probability == pytest.approx(expected, rel=1e-9)
        # the label and the decision from the served probability, by the site's thresholds
        # (a probability a rounding away from one is not tested against `expected`)
        served = answer.probability
        assert answer.label == ("PNEUMONIA" if served >= spec["threshold"] else "NORMAL")
        decision = "NORMAL" if served < low else "PNEUMONIA" if served >= high else None
        assert answer.decision == (decision or "INDETERMINATE")


def test_the_threshold_is_the_models_rule_on_the_sites_images(site_dir, sample_data):
    from pneumonia.serving.classifier import Classifier
    from pneumonia.serving.requests import ClientError

    site = Classifier.load(site_dir)
    rule = site.metadata.operating_point
    assert rule is not None and rule.policy == "target_sensitivity"
    pneumonia = []
    for label, path in sample_files(sample_data):
        try:
            answer = site.classify(path.read_bytes())
        except ClientError:
            continue
        if label == 1:
            pneumonia.append(answer.probability)
    scores = np.array(pneumonia)
    threshold = site.metadata.threshold
    assert np.mean(scores >= threshold) >= rule.target_sensitivity
    # the chosen score is the lowest pneumonia score called; the threshold lies below it,
    # clear of every score, and one step above that score misses the target
    chosen = scores[scores >= threshold].min()
    assert not np.any(np.isclose(scores, threshold, rtol=0, atol=1e-9))
    assert np.mean(scores >= np.nextafter(chosen, 1.0)) < rule.target_sensitivity


def test_recalibrating_again_fits_from_the_graph_not_on_top_of_the_last_fit(
    repo, site_dir, sample_data, tmp_path
):
    again = tmp_path / "again"
    run(
        repo,
        *(sys.executable, "-m", "pneumonia.recalibrate", str(sample_data / "train")),
        *("--model-dir", str(site_dir), "--output", str(again), "--site", SITE),
        *("--bootstrap", "50"),
    )
    first = json.loads((site_dir / "model.json").read_text())
    second = json.loads((again / "model.json").read_text())
    assert second["recalibration"] == pytest.approx(first["recalibration"])
    assert second["threshold"] == pytest.approx(first["threshold"])
    assert second["model_version"] == first["model_version"]


def test_too_few_images_of_a_class_is_refused_with_the_counts(repo, sample_data, tmp_path):
    output = tmp_path / "out"
    result = recalibrate(repo, sample_data / "train", output, "--min-per-class", "60", check=False)
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]  # the one line after the progress log
    assert message.startswith("recalibrate: too few images to refit on: NORMAL: ")
    assert "of 50 files" in message and "at least 60" in message
    assert "PNEUMONIA:" not in message  # 98 of 100 answered: enough
    assert not output.exists()


def test_the_model_folder_is_never_the_output(repo, sample_data):
    before = {p.name: p.read_bytes() for p in (repo / "models").iterdir() if p.is_file()}
    result = recalibrate(repo, sample_data / "train", repo / "models", check=False)
    assert result.returncode == 2 and "never changed" in result.stderr
    after = {p.name: p.read_bytes() for p in (repo / "models").iterdir() if p.is_file()}
    assert after == before


def test_folders_other_than_the_labels_are_refused(repo, sample_data, tmp_path):
    folder = tmp_path / "labelled"
    shutil.copytree(sample_data / "train", folder)
    (folder / "BACTERIA").mkdir()
    result = recalibrate(repo, folder, tmp_path / "out", check=False)
    assert result.returncode == 2 and "BACTERIA" in result.stderr
    shutil.rmtree(folder / "BACTERIA")
    shutil.rmtree(folder / "PNEUMONIA")
    result = recalibrate(repo, folder, tmp_path / "out", check=False)
    assert result.returncode == 2 and "no PNEUMONIA folder" in result.stderr


def test_a_sites_version_is_registered_and_deployment_fetches_it_by_site(
    own_repo, site_dir, tmp_path
):
    repo = own_repo
    registry = (sys.executable, "-m", "pneumonia.registry")
    result = run(repo, *registry, "register", str(site_dir))
    assert "registered" in result.stdout
    fetched = tmp_path / "fetched"
    run(repo, *registry, "fetch", "--site", SITE, "--output", str(fetched))
    for name in ("model.onnx", "model.json"):
        assert (fetched / name).read_bytes() == (site_dir / name).read_bytes()
    # without --site, the newest version that is no site's: the pipeline's own export
    default = tmp_path / "default"
    run(repo, *registry, "fetch", "--output", str(default))
    assert (default / "model.json").read_bytes() == (repo / "models/model.json").read_bytes()
    elsewhere = ("--site", "elsewhere", "--output", str(tmp_path / "x"))
    missing = run(repo, *registry, "fetch", *elsewhere, check=False)
    assert missing.returncode == 2 and "elsewhere" in missing.stderr


def test_only_a_recalibration_is_registered_as_a_site(own_repo):
    result = run(
        own_repo,
        *(sys.executable, "-m", "pneumonia.registry", "register", str(own_repo / "models")),
        check=False,
    )
    assert result.returncode == 2 and "names no site" in result.stderr
