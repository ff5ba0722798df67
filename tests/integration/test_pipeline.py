"""The real `dvc repro` of all five stages on a small slice, in a temporary copy of the repository.

The slice: 150 real images of the default dataset plus four faulty files, 64 px,
a narrow network, 1 epoch. MLflow writes to a SQLite store inside the copy.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumonia.evaluation.headline import VIEWS
from tests.integration.pipeline_repo import STAGES, pipeline_env, run, set_params, stages_run

pytestmark = pytest.mark.integration


def test_ingest_quarantines_bad_files_accepts_the_png_and_reports(repo):
    report = json.loads((repo / "data/ingest_report.json").read_text())
    reasons = {row["file"].rsplit("/", 1)[-1]: row["reason"] for row in report["quarantined"]}
    assert reasons == {
        "IM-9001-0001.jpeg": "corrupt",
        "IM-9002-0001.jpeg": "empty",
        "IM-9003-0001.jpeg": "not_an_image",
    }
    for name in reasons:  # kept, not dropped
        assert (repo / "data/quarantine/train/NORMAL" / name).exists()
    manifest = pd.read_csv(repo / "data/manifest.csv")
    assert "train/NORMAL/IM-9004-0001.jpeg" in set(manifest["file"])  # the PNG named .jpeg
    assert report["files_found"] == 154
    summary = json.loads((repo / "metrics/ingest.json").read_text())  # the part git keeps
    assert summary["quarantined"] == 3 and summary["files_found"] == 154
    assert "IM-9001" not in json.dumps(summary) and "/NORMAL/" not in json.dumps(summary)
    assert report["images_accepted"] == len(manifest) == 151
    assert sum(sum(c.values()) for c in report["per_split"].values()) == 151
    assert list(manifest.columns) == [
        "file",
        "label",
        "patient_id",
        "split",
        "source_split",
        "sha256",
        "size_bytes",
        "width",
        "height",
    ]
    for row in manifest.itertuples():
        assert (repo / "data/raw" / row.file).stat().st_size == row.size_bytes


def test_no_patient_is_in_two_splits(repo):
    manifest = pd.read_csv(repo / "data/manifest.csv")
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
    assert set(manifest["split"]) == {"train", "val", "test", "early", "late"}


def test_prepared_arrays_match_the_manifest(repo):
    manifest = pd.read_csv(repo / "data/manifest.csv")
    assert set(manifest["split"]) == {"train", "val", "test", "early", "late"}
    for split in ("train", "val", "test", "early", "late"):
        with np.load(repo / f"data/prepared/{split}.npz") as arrays:
            rows = manifest[manifest["split"] == split]
            assert arrays["images"].shape == (len(rows), 64, 64, 1)
            assert arrays["images"].dtype == np.uint8
            assert sorted(arrays["files"]) == sorted(rows["file"])
    made_with = json.loads((repo / "data/prepared/params.json").read_text())
    assert made_with["image_size"] == 64


def test_evaluate_writes_metrics_with_intervals_and_plots(repo):
    metrics = json.loads((repo / "metrics/evaluate/metrics.json").read_text())
    assert 0.0 <= metrics["threshold"] <= 1.0
    for name in ("accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1"):
        low, value, high = (metrics[k][name] for k in ("test_ci95_low", "test", "test_ci95_high"))
        assert 0.0 <= low <= value <= high <= 1.0, name
    assert 0.0 <= metrics["test"]["brier"] <= 1.0 and 0.0 <= metrics["test"]["ece"] <= 1.0
    # The id blocks are evaluated at the validation threshold like test, and the worst of the
    # three named per metric.
    for split in ("early", "late"):
        low, value, high = (
            metrics[k]["roc_auc"] for k in (f"{split}_ci95_low", split, f"{split}_ci95_high")
        )
        assert 0.0 <= low <= value <= high <= 1.0, split
    worst = metrics["worst_split"]
    assert worst["roc_auc"] == min(metrics[s]["roc_auc"] for s in ("test", "early", "late"))
    assert set(metrics["policies"]) == {"youden", "youden_shifted", "target_sensitivity", "fixed"}
    assert metrics["policies"][metrics["threshold_policy"]]["threshold"] == metrics["threshold"]
    assert (repo / "metrics/evaluate/plots/images/held_out_roc.png").stat().st_size > 5000
    for plot in ("roc", "precision_recall", "confusion_matrix", "calibration"):
        assert json.loads((repo / f"metrics/evaluate/plots/sklearn/{plot}.json").read_text())
    from pneumonia.evaluation.shifts import SHIFTS

    assert set(metrics["robustness"]) == set(SHIFTS)
    for shifted in metrics["robustness"].values():
        assert all(0.0 <= value <= 1.0 for value in shifted.values())
    assert (repo / "metrics/evaluate/plots/images/robustness.png").stat().st_size > 5000
    from pneumonia.evaluation.shifts import FRAMING

    # Framing: every shift, on the held-out splits pooled, with the gate's refusals; the
    # worst of each figure is the lowest (or, for refusals, highest) over the shifts.
    framing = metrics["framing"]
    assert set(framing) == {"unchanged", *FRAMING}
    for row in framing.values():
        assert all(0.0 <= row[key] <= 1.0 for key in ("specificity", "refused", "roc_auc"))
    worst = metrics["worst_framing"]
    shifted = [framing[name] for name in FRAMING]
    assert worst["specificity"] == min(row["specificity"] for row in shifted)
    assert worst["refused"] == max(row["refused"] for row in shifted)
    assert worst["images"] == sum(metrics[s]["images"] for s in ("test", "early", "late"))
    # The band's evidence under the framings: each error rate's band, per shift; the
    # committed rate's row is the band the report above used.
    band = metrics["framing_band"]
    rate = str(metrics["decision"]["error_rate"])
    assert set(band["by_framing"]) == set(framing) and rate in band["worst"]
    assert band["worst"][rate]["share_indeterminate"] == worst["share_indeterminate"]
    assert (
        band["by_framing"]["crop 8%"][rate]["accuracy_decided"]
        == (framing["crop 8%"]["accuracy_decided"])
    )
    assert (repo / "metrics/evaluate/plots/images/framing.png").stat().st_size > 5000
    assert json.loads((repo / "metrics/evaluate/plots/custom/framing.json").read_text())
    shown = json.loads(run(repo, "dvc", "metrics", "show", "--json").stdout)
    assert shown, "dvc metrics show found no metrics"
    run(repo, "dvc", "plots", "show", "-o", "plots_html")
    assert (repo / "plots_html" / "index.html").stat().st_size > 1000


def test_evaluate_writes_the_monitors_reference_from_validation(repo):
    rows = [
        json.loads(line)
        for line in (repo / "metrics/evaluate/reference.jsonl").read_text().splitlines()
    ]
    with np.load(repo / "data/prepared/val.npz") as val:
        labels = val["labels"]
    assert [row["label"] for row in rows] == [["NORMAL", "PNEUMONIA"][i] for i in labels]
    assert all(0.0 <= row["probability_pneumonia"] <= 1.0 for row in rows)
    assert {len(row["features"]) for row in rows} == {
        len(np.load(repo / "models/gate.npz")["mean"])
    }
    assert not any("file" in row for row in rows)  # file names carry patient ids


def test_training_curves_and_mlflow_run(repo):
    curve = pd.read_csv(repo / "metrics/train/plots/metrics/eval/auc.tsv", sep="\t")
    assert len(curve) == 1 and 0.0 <= curve["auc"].iloc[0] <= 1.0
    info = json.loads((repo / "models/train_info.json").read_text())
    assert info["device"] == "cpu"
    from pneumonia.machine import cpu

    assert info["cpu"]["model"] == cpu()["model"] and info["cpu"]["isa"] == cpu()["isa"]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    run_data = mlflow.get_run(info["mlflow_run_id"]).data
    assert run_data.params["epochs"] == "1"
    assert "test_roc_auc" in run_data.metrics and "best_val_auc" in run_data.metrics
    assert run_data.tags["device"] == "cpu"
    assert run_data.tags["cpu.isa"] == info["cpu"]["isa"]


def test_onnx_export_agrees_with_keras_and_carries_its_metadata(repo):
    parity = json.loads((repo / "metrics/export_onnx.json").read_text())["parity"]
    assert parity["passed"] is True
    # The served graph answers what evaluate scored, and its int8 network stays near Keras
    assert parity["max_abs_diff"] <= 1e-4 and parity["labels_differing"] == 0
    assert parity["quantize"] == "int8" and parity["keras"]["max_abs_diff"] <= 0.25
    assert parity["keras"]["max_abs_diff"] > 0  # int8: not the float graph
    metadata = json.loads((repo / "models/model.json").read_text())
    import hashlib

    # The documented formula (docs/serving.md#model-version), computed here from the files.
    onnx_bytes = (repo / "models/model.onnx").read_bytes()
    answering = ("labels", "input_name", "outputs", "preprocessing", "threshold")
    answering += ("calibration", "decision_band", "ood_gate", "max_patient_age_years")
    answering += ("view_check", "reason")
    assert metadata["max_patient_age_years"] == 17 and metadata["outputs"]["use"] == "use_logits"
    # the reason head beside the graph, named by its hash: the version covers it
    reason_bytes = (repo / "models/reason.onnx").read_bytes()
    assert metadata["reason"] == {
        "file": "reason.onnx",
        "sha256": hashlib.sha256(reason_bytes).hexdigest(),
        "image_size": 128,
    }
    canonical = json.dumps(
        {k: metadata[k] for k in answering}, sort_keys=True, separators=(",", ":")
    )
    digest = hashlib.sha256(onnx_bytes + b"\n" + canonical.encode()).hexdigest()
    assert metadata["model_version"] == "sha256-" + digest[:12]
    assert metadata["preprocessing"]["image_size"] == 64
    assert metadata["labels"] == ["NORMAL", "PNEUMONIA"]
    evaluation = json.loads((repo / "metrics/evaluate/metrics.json").read_text())
    assert metadata["threshold"] == evaluation["threshold"]
    manifest_hash = hashlib.sha256((repo / "data/manifest.csv").read_bytes()).hexdigest()
    assert metadata["training_data_sha256"] == manifest_hash
    # What evaluate chose on validation travels to serving: calibration, band, gate.
    assert metadata["calibration"] == {
        "method": "platt",
        **{key: evaluation["calibration"][key] for key in ("scale", "shift")},
    }
    band = metadata["decision_band"]
    assert [band["low"], band["high"]] == [
        evaluation["decision"]["low"],
        evaluation["decision"]["high"],
    ]
    assert band["low"] <= metadata["threshold"] <= band["high"]
    assert metadata["ood_gate"]["threshold"] == evaluation["ood_gate"]["threshold"]
    view = evaluation["intended_use"]["view_check"]
    assert metadata["view_check"]["threshold"] == view["threshold"]
    assert metadata["view_check"]["false_rejection_rate"] == view["false_rejection_rate"]
    with np.load(repo / "models/gate.npz") as stored:  # the check evaluate saved, as fitted
        np.testing.assert_array_equal(metadata["view_check"]["weights"], stored["view_weights"])
        assert set(metadata["view_check"]) == {
            "weights",
            "bias",
            "threshold",
            "false_rejection_rate",
        }
    # ... and the graph computes what evaluate computed with onnxruntime and numpy, on the
    # network whose bytes evaluate recorded.
    assert parity["max_rel_diff_distance"] <= 1e-3
    assert parity["gradcam_min_pearson"] >= 0.95
    assert evaluation["network"]["quantize"] == "int8"
    assert len(evaluation["network"]["sha256"]) == 64


def test_evaluate_reports_the_decision_the_gate_and_the_explanations(repo):
    evaluation = json.loads((repo / "metrics/evaluate/metrics.json").read_text())
    assert evaluation["test"]["ece"] <= evaluation["test_uncalibrated"]["ece"] + 0.05
    for split in ("test", "val_pooled"):
        report = evaluation["decision"][split]
        assert 0 <= report["share_indeterminate"] <= 1 and 0 <= report["accuracy_decided"] <= 1
    gate = evaluation["ood_gate"]
    assert set(gate["ood_detection"]) >= {"colour_photo", "document", "noise", "blank", "all"}
    assert gate["ood_images"] >= 80 and sum(gate["ood_refused_by"].values()) == gate["ood_images"]
    assert 0 <= gate["false_rejections"]["test"] <= 1
    assert gate["ood_refused_by"].get("decoder", 0) >= 1  # the CT and MR DICOM files
    assert evaluation["explanations"]["deletion"]["images"] >= 1
    plots = repo / "metrics/evaluate/plots/images"
    for name in ("ood_gate.png", "attention.png"):
        assert (plots / name).stat().st_size > 1000
    card = (repo / "models/MODEL_CARD.md").read_text()
    assert "INDETERMINATE" in card and "Not a chest X-ray" in card and "Explanations" in card


def test_the_export_is_registered_in_mlflow_and_fetchable(repo, tmp_path):
    run(repo, "python", "-m", "pneumonia.registry", "fetch", "--output", str(tmp_path))
    for name in ("model.onnx", "model.json", "reason.onnx"):
        assert (tmp_path / name).read_bytes() == (repo / "models" / name).read_bytes()


def test_exporting_again_gives_the_same_bytes_and_refuses_a_network_not_evaluated(own_repo):
    repo = own_repo  # a private copy: this test changes it
    # tf2onnx alone names and orders nodes differently on each run; the canonical form does not.
    before = (repo / "models/model.onnx").read_bytes()
    version = json.loads((repo / "models/model.json").read_text())["model_version"]
    run(repo, "dvc", "repro", "--force", "--single-item", "export_onnx")
    assert (repo / "models/model.onnx").read_bytes() == before
    assert json.loads((repo / "models/model.json").read_text())["model_version"] == version
    # AND export refuses to serve a network other than the one evaluate scored
    metrics = repo / "metrics/evaluate/metrics.json"
    evaluation = json.loads(metrics.read_text())
    evaluation["network"]["sha256"] = "0" * 64
    metrics.write_text(json.dumps(evaluation))
    refused = run(repo, "python", "-m", "stages.export_onnx", check=False)
    assert refused.returncode != 0
    assert "is not the one evaluate scored" in refused.stderr
    assert (repo / "models/model.onnx").read_bytes() == before


def test_model_card_is_written_from_this_runs_metrics(repo):
    card = (repo / "models/MODEL_CARD.md").read_text()
    metadata = json.loads((repo / "models/model.json").read_text())
    evaluation = json.loads((repo / "metrics/evaluate/metrics.json").read_text())
    assert metadata["model_version"] in card
    assert f"{evaluation['threshold']:.4f}" in card
    assert f"{evaluation['test']['roc_auc']:.3f} [" in card
    assert "Not a diagnostic device" in card and "pediatric" in card.lower()
    for shift in [*evaluation["robustness"], *evaluation["framing"]]:
        assert f"| {shift} |" in card
    assert f"specificity is {evaluation['worst_framing']['specificity']:.3f}" in card


def test_threshold_is_chosen_without_the_test_split(own_repo):
    repo = own_repo  # a private copy: this test changes it
    metrics_file = repo / "metrics/evaluate/metrics.json"
    # The threshold the first `dvc repro` chose on these very inputs (an untampered run of
    # evaluate here would repeat that run: about 80 s of the suite saved).
    threshold = json.loads(metrics_file.read_text())["threshold"]
    # WHEN the test split's labels are all flipped, THEN the threshold does not move.
    test_split = repo / "data/prepared/test.npz"
    original = test_split.read_bytes()
    with np.load(test_split) as arrays:
        tampered = {key: arrays[key] for key in arrays.files}
    tampered["labels"] = 1 - tampered["labels"]
    np.savez(test_split, **tampered)
    try:
        run(repo, "python", "-m", "stages.evaluate")
        assert json.loads(metrics_file.read_text())["threshold"] == threshold
    finally:
        test_split.write_bytes(original)


def test_training_is_deterministic_on_cpu_and_never_reads_the_test_split(own_repo):
    repo = own_repo  # a private copy: this test changes it
    summaries = []
    test_split = repo / "data/prepared/test.npz"
    for hide_test_split in (False, True):
        # The second run without the prepared test split: train neither needs nor reads it.
        hidden = test_split.rename(repo / "test.npz.hidden") if hide_test_split else None
        try:
            run(repo, "dvc", "repro", "--force", "--single-item", "train")
        finally:
            if hidden:
                hidden.rename(test_split)
        summary = json.loads((repo / "metrics/train/metrics.json").read_text())
        summary.pop("train_seconds")
        summaries.append(summary)
    assert summaries[0] == summaries[1]
    assert "val_auc" in json.dumps(summaries[0])


README = Path(__file__).resolve().parents[2] / "README.md"
# The README's commands that print tables, as a person reads them in a terminal.
TABLES = ("dvc exp show", "dvc metrics show", "dvc metrics diff main", "dvc params diff main")
WIDTH = 120


def readme_commands() -> dict[str, list[str]]:
    """The README walkthrough's table commands, by their start, as the README spells them."""
    commands = {}
    for line in README.read_text().splitlines():
        for start in TABLES:
            if line.startswith(start) and start not in commands:
                commands[start] = shlex.split(line.split("  #")[0])
    assert set(commands) == set(TABLES), f"the README lacks {set(TABLES) - set(commands)}"
    return commands


def assert_readable(repo, commands: dict[str, list[str]], changed: bool) -> None:
    """Each command's table fits WIDTH columns, with no column collapsed to an ellipsis; the
    diffs print nothing when nothing `changed`."""
    env = {**pipeline_env(repo), "COLUMNS": str(WIDTH)}
    for start, command in commands.items():
        result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        lines = result.stdout.splitlines()
        if changed or "diff" not in start:
            assert len(lines) >= 2, f"{start} printed no table:\n{result.stdout}"
        widest = max((len(line.rstrip()) for line in lines), default=0)
        assert widest <= WIDTH, f"{start}: a line of {widest} columns\n{result.stdout}"
        assert "\u2026" not in result.stdout, f"{start}: a collapsed column\n{result.stdout}"


def kill_during_train(repo: Path) -> None:
    """Start `dvc repro` and kill it (the whole process group) during train; train must be
    the first stage it runs."""
    process = subprocess.Popen(
        ["dvc", "repro"],
        cwd=repo,
        env=pipeline_env(repo),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    before_train: list[str] = []
    for line in process.stdout:
        if "Running stage 'train'" in line:
            break
        before_train.append(line)
    else:
        pytest.fail("train never ran:\n" + "".join(before_train)[-3000:])
    assert stages_run("".join(before_train)) == []  # not ingest, not preprocess
    # Inside TensorFlow's start-up or the first epoch: train takes 15 s or more here.
    time.sleep(5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode != 0


def stale_stages(repo: Path) -> list[str]:
    """The stages `dvc status` lists as changed, in its order."""
    return re.findall(r"^(\w+):", run(repo, "dvc", "status").stdout, re.M)


def run_the_queue(repo: Path) -> None:
    """The README's two queued experiments, run one after another. q-a asks again for
    drop-02's params, whose results the workspace it is queued from holds: every stage of it
    is up to date and nothing runs (one training and evaluation fewer, about 100 s of the
    suite); q-b's dropout is new, and its copy runs train, evaluate and export_onnx."""
    run(repo, "dvc", "exp", "run", "--queue", "--set-param", "train.dropout=0.2", "--name", "q-a")
    run(repo, "dvc", "exp", "run", "--queue", "--set-param", "train.dropout=0.5", "--name", "q-b")
    run(repo, "dvc", "queue", "start", "--jobs", "1")
    deadline = time.monotonic() + 600
    while re.search(r"\b(Queued|Running)\b", run(repo, "dvc", "queue", "status").stdout):
        assert time.monotonic() < deadline, "the queue did not finish"
        time.sleep(10)  # each `dvc queue status` takes a core for seconds from the runs
    status = run(repo, "dvc", "queue", "status").stdout
    assert status.count("Success") >= 2, status
    repeated = run(repo, "dvc", "queue", "logs", "q-a").stdout
    assert "Stage 'train' didn't change" in repeated, repeated[-3000:]
    assert stages_run(repeated) == [], repeated[-3000:]
    assert stages_run(run(repo, "dvc", "queue", "logs", "q-b").stdout) == STAGES[2:]


def assert_the_review(repo: Path, tmp_path: Path) -> None:
    """The pull-request report, as the review workflow runs it."""
    review = tmp_path / "review.md"
    run(
        repo,
        "python",
        "-m",
        "pneumonia.review",
        "report",
        "--base",
        "main",
        "--output",
        str(review),
        "--plots",
        str(tmp_path / "review_plots"),
    )
    text = review.read_text()
    assert "## Model review" in text and "train.dropout" in text
    headline, details = text.split("<details>")
    assert (
        "metrics/worst_shift.json" in headline and "metrics/evaluate/metrics.json" not in headline
    )
    assert "metrics/evaluate/metrics.json" in details and "Metric gate" in text
    assert (tmp_path / "review_plots" / "index.html").exists()


def test_repro_reruns_only_what_changed_survives_a_kill_and_walks_the_readme_experiments(
    own_repo, tmp_path
):
    """The README's experiment walkthrough, whose first experiment also shows that `dvc repro`
    reruns only what changed and that a repro killed during train completes when run again:
    one training and evaluation for the three (about 200 s of the suite against a test each)."""
    repo = own_repo  # a private copy: this test changes it
    # The README's commands, on the slice (DVC-tracked in data/source: a queued run's
    # temporary copy checks it out from the cache).
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"],
        cwd=repo,
        check=True,
    )
    # GIVEN an up-to-date pipeline, WHEN nothing changes, THEN nothing runs.
    run(repo, "dvc", "repro")
    assert stages_run(run(repo, "dvc", "repro").stdout) == []
    tables = readme_commands()
    assert_readable(repo, tables, changed=False)  # the default workspace
    shown = run(repo, "dvc", "metrics", "show", "--json").stdout
    (workspace,) = json.loads(shown).values()  # keyed by the revision ("" for the workspace)
    listed = {Path(name).as_posix() for name in workspace["data"]}
    # Every headline view (the intended-use views included: the sample's run fits all kinds).
    assert listed == {f"metrics/{view}.json" for view in ("train", *VIEWS)}
    # WHEN a train param changes (drop-02's, as --set-param writes it) and the repro is killed
    # during train, THEN train is left stale, not half-recorded: it and every stage after it
    # rerun, none before it ...
    set_params(repo, **{"train.dropout": 0.2})
    kill_during_train(repo)
    stale = stale_stages(repo)
    assert stale == ["train", "evaluate", "export_onnx"], stale
    # ... AND running it again (the README's first experiment) completes it.
    drop_02 = ["dvc", "exp", "run", "--set-param", "train.dropout=0.2", "--name", "drop-02"]
    assert stages_run(run(repo, *drop_02).stdout) == ["train", "evaluate", "export_onnx"]
    assert "up to date" in run(repo, "dvc", "status").stdout
    run_the_queue(repo)
    shown = run(repo, "dvc", "exp", "show", "--json").stdout
    for name in ("drop-02", "q-a", "q-b"):
        assert name in shown
    assert_readable(repo, tables, changed=True)  # with the experiments, queued ones included
    table = run(repo, *tables["dvc exp show"]).stdout
    assert "q-a" in table and "train.dropout" in table and "metrics/worst_shift.json:spec" in table
    diff = run(repo, "dvc", "exp", "diff", "q-a", "q-b", "--json").stdout
    assert "dropout" in diff
    run(repo, "dvc", "exp", "apply", "q-b")
    params_diff = run(repo, "dvc", "params", "diff", "main", "--md").stdout
    assert "train.dropout" in params_diff and "0.5" in params_diff
    metrics_diff = run(repo, "dvc", "metrics", "diff", "main", "--md").stdout
    assert "metrics/worst_shift.json" in metrics_diff
    assert "metrics/evaluate/metrics.json" not in metrics_diff  # the details are not listed
    run(repo, "dvc", "plots", "diff", "main", "-o", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").stat().st_size > 1000
    assert_the_review(repo, tmp_path)
    # WHEN a preprocess param changes, THEN preprocess reruns and, having changed
    # data/prepared, leaves every stage after it stale (and ingest up to date); running them
    # is what the train change above showed.
    set_params(repo, **{"preprocess.intensity": "equalize"})
    assert stages_run(run(repo, "dvc", "repro", "preprocess").stdout) == ["preprocess"]
    assert stale_stages(repo) == STAGES[2:]


def test_batch_rows_with_features_feed_the_drift_monitor(repo, tmp_path):
    # The formats line up end to end: evaluate's reference, batch's rows with --features.
    predictions = tmp_path / "predictions.jsonl"
    source = repo / "data" / "raw" / "train"
    run(repo, "python", "-m", "pneumonia.batch", str(source), "--output", str(predictions),
        "--workers", "1", "--features")  # fmt: skip
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    ok = [row for row in rows if row["status"] == "ok"]
    assert ok and all("features" in row for row in ok)
    result = run(
        repo,
        "python",
        "-m",
        "pneumonia.monitor",
        "--reference",
        "metrics/evaluate/reference.jsonl",
        "--current",
        str(predictions),
        "--permutations",
        "200",
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]  # 2 would be unusable input
    report = json.loads((tmp_path / "predictions.monitor.json").read_text())
    assert report["counts"]["window"] == len(ok)
    assert {name for name, test in report["tests"].items() if test["run"]} == {
        "ks",
        "mmd",
        "prevalence",
    }
    assert report["drift"] == (result.returncode == 1)
    assert (tmp_path / "predictions.monitor.png").stat().st_size > 5000
