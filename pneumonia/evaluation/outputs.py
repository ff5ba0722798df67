"""What evaluate writes: metrics and plots through dvclive, the test predictions, the drift
monitor's reference, and the figures into the training's MLflow run."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from pneumonia import paths, tracking
from pneumonia.data.prepared import load_split
from pneumonia.evaluation.figures import held_out_figure, robustness_figure
from pneumonia.evaluation.metrics import ROBUSTNESS_METRICS, Scores
from pneumonia.evaluation.reference import write_reference
from pneumonia.evaluation.scoring import Scorer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pneumonia.decision.band import Band

log = logging.getLogger("evaluate")


def log_plots(
    results: dict,
    scores: Scores,
    threshold: float,
    names: list[str],
    calibration_bins: int,
    figures: dict[str, Figure],
) -> None:
    """metrics.json and the plots `dvc plots` reads, through dvclive; `figures` by file name."""
    from dvclive import Live

    test_labels, test_probabilities = scores["test"]
    predicted = (test_probabilities >= threshold).astype(int)
    with Live(dir=str(paths.EVALUATE_LIVE), save_dvc_exp=False, dvcyaml=None) as live:
        live.summary = results
        live.log_sklearn_plot("roc", test_labels, test_probabilities, name="roc.json")
        live.log_sklearn_plot(
            "precision_recall", test_labels, test_probabilities, name="precision_recall.json"
        )
        live.log_sklearn_plot(
            "confusion_matrix",
            [names[i] for i in test_labels],
            [names[i] for i in predicted],
            name="confusion_matrix.json",
        )
        live.log_sklearn_plot(
            "calibration",
            test_labels,
            test_probabilities,
            name="calibration.json",
            n_bins=calibration_bins,
        )
        clean = {key: results["test"][key] for key in ROBUSTNESS_METRICS}
        live.log_plot(
            "robustness",
            [
                {"shift": name, **values}
                for name, values in {"clean": clean, **results["robustness"]}.items()
            ],
            x="roc_auc",
            y="shift",
            template="bar_horizontal",
            title="Test AUC under shifts",
        )
        live.log_image("robustness.png", robustness_figure(clean, results["robustness"]))
        live.log_plot(
            "held_out",
            [
                {"split": split, **{key: results[split][key] for key in ROBUSTNESS_METRICS}}
                for split in scores
            ],
            x="roc_auc",
            y="split",
            template="bar_horizontal",
            title="AUC on each held-out split",
        )
        live.log_image("held_out_roc.png", held_out_figure(scores, threshold))
        live.log_plot(
            "framing",
            [  # the figures per shift; the refusals' names stay in metrics.json
                {"shift": name, **{k: v for k, v in values.items() if k != "refusals_named"}}
                for name, values in results["framing"].items()
            ],
            x="specificity",
            y="shift",
            template="bar_horizontal",
            title="Specificity under framing shifts (held-out splits pooled)",
        )
        for name, figure in figures.items():
            live.log_image(name, figure)


def write_predictions(
    test_files: list[Path], scores: Scores, threshold: float, names: list[str], band: Band
) -> None:
    """metrics/evaluate/predictions.csv: one row per test image."""
    labels, probabilities = scores["test"]
    pd.DataFrame(
        {
            "file": [path.relative_to(paths.RAW).as_posix() for path in test_files],
            "label": [names[i] for i in labels],
            "probability_pneumonia": probabilities,
            "predicted_label": [names[i] for i in (probabilities >= threshold).astype(int)],
            "decision": band.decide(probabilities),
        }
    ).to_csv(paths.PREDICTIONS, index=False)


def write_monitor_reference(scorer: Scorer) -> None:
    """metrics/evaluate/reference.jsonl: the validation split's labels, calibrated
    probabilities and features, `python -m pneumonia.monitor --reference` (no file names:
    they carry patient ids)."""
    images, labels = load_split("val")
    write_reference(paths.REFERENCE, labels, scorer(images), scorer.outputs(images)[1])


def track(results: dict, held_out: list[str], threshold: float) -> None:
    """The figures into the training run in MLflow, and one log line per split."""
    train_info = json.loads(paths.TRAIN_INFO.read_text())
    tracking.configure()
    with tracking.start_run("evaluate", run_id=train_info.get("mlflow_run_id")):
        tracking.log_metrics({"threshold": threshold})
        for split in held_out:
            tracking.log_metrics({f"{split}_{k}": v for k, v in results[split].items()})
        tracking.log_artifact(paths.EVALUATE_LIVE / "metrics.json", "evaluate")
    for split in held_out:
        log.info(
            "%s: AUC %.3f [%.3f, %.3f], sensitivity %.3f, specificity %.3f, accuracy %.3f",
            split,
            results[split]["roc_auc"],
            results[f"{split}_ci95_low"]["roc_auc"],
            results[f"{split}_ci95_high"]["roc_auc"],
            results[split]["sensitivity"],
            results[split]["specificity"],
            results[split]["accuracy"],
        )
