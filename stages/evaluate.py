"""Stage 4: evaluate the trained model on the held-out splits: test, early and late, as they
are and under framing shifts (`pneumonia.evaluation.shifts.FRAMING`).

It scores the network as export_onnx serves it: the tf2onnx graph, in int8 when
`export_onnx.quantize` says so (`pneumonia.release.quantize`), run by onnxruntime; so the
calibration, threshold, band, gate and every figure are the served network's own.

The decision threshold is chosen on the validation split (and its shifted copies) by
`evaluate.threshold_policy`, never on a held-out split. Writes the headline views
(metrics/<view>.json, what `dvc metrics` lists), metrics/evaluate (dvclive: metrics.json with
every detail, ROC / precision-recall / confusion-matrix / calibration / framing plots) and
metrics/evaluate/predictions.csv; logs the same to the training's MLflow run.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from pneumonia import paths
from pneumonia.config import load_params
from pneumonia.data.prepared import load_files, preprocess_config
from pneumonia.evaluation.explanations import faithfulness_report
from pneumonia.evaluation.figures import attention_figure, framing_figure, gate_figure
from pneumonia.evaluation.framing import framing_report
from pneumonia.evaluation.gate import fit_gate, gate_report, split_features
from pneumonia.evaluation.headline import headline, worst_shift, write_views
from pneumonia.evaluation.intended_use import external_features, fit_and_measure
from pneumonia.evaluation.metrics import policy_table, worst_of
from pneumonia.evaluation.outputs import (
    log_plots,
    track,
    write_monitor_reference,
    write_predictions,
)
from pneumonia.evaluation.scoring import (
    Scorer,
    calibrate,
    choose_on_validation,
    decision_report,
    other_bands,
    score_held_out,
    uncalibrated,
)
from pneumonia.evaluation.shifts import robustness, shifted_probabilities
from pneumonia.evaluation.view import view_check
from pneumonia.release.export import network_to_serve
from pneumonia.release.quantize import network_sha256
from pneumonia.release.reason import REASON_MODEL
from pneumonia.serving import inference
from pneumonia.serving.classifier import Namer

log = logging.getLogger("evaluate")


def main() -> None:
    """Run the stage: calibration, threshold and band from validation, the gate from train
    and validation, then held-out and shifted scores, plots, logs."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import pneumonia.model.network  # noqa: F401  (registers the custom layer)

    params = load_params()
    names = list(params.base.labels)
    model = keras.models.load_model(paths.KERAS_MODEL, compile=False)
    config = preprocess_config()
    export = params.export_onnx
    network = network_to_serve(model, config.image_size, export)
    log.info("scoring the served network (%s, %d bytes)", export.quantize, len(network))
    scorer = Scorer(model, network)

    results: dict = {
        "network": {"quantize": export.quantize, "sha256": network_sha256(network)},
        "calibration": calibrate(scorer),
    }
    threshold, thresholds, val, pooled_val = choose_on_validation(scorer, config, params.evaluate)
    held_out, scores = score_held_out(scorer, threshold, params.evaluate, params.base.seed)
    results |= {
        "threshold": threshold,
        "threshold_policy": params.evaluate.threshold_policy,
        "target_sensitivity": params.evaluate.target_sensitivity,
    }
    results |= held_out
    results["worst_split"] = worst_of(results, list(scores))
    results["policies"] = policy_table(thresholds, scores)
    results["val"] = val
    results["test_uncalibrated"] = uncalibrated(scorer, params.evaluate.calibration_bins)
    test_files = [paths.RAW / name for name in load_files("test")]
    shifted_test = shifted_probabilities(scorer, test_files, config, "robustness")
    results["robustness"] = robustness(shifted_test, scores["test"][0], threshold)
    band, results["decision"] = decision_report(
        pooled_val, scores, threshold, params.evaluate.indeterminate_error_rate
    )
    rate = params.evaluate.ood_false_rejection_rate
    train_features = split_features(scorer, "train", config, every=4)
    val_features = split_features(scorer, "val", config)
    components = params.evaluate.gate_components
    gate = fit_gate(scorer, config, rate, train_features, val_features, components=components)
    external, head_outcomes = external_features(scorer, config), dict[int, str]()
    head, results["intended_use"] = fit_and_measure(
        external,
        train_features,
        val_features,
        gate.distance,
        gate.threshold,
        rate,
        params.base.seed,
        outcomes=head_outcomes,
    )
    view, reason_graph, view_report = view_check(external, head_outcomes, params.base.seed, export)
    REASON_MODEL.write_bytes(reason_graph)
    results["intended_use"] |= {"kinds_head_alone": results["intended_use"]["kinds"]}
    results["intended_use"] |= view_report  # the kinds as the model refuses and names them
    results["ood_gate"], distances = gate_report(scorer, gate, config, list(scores), head, view)
    arrays = gate.arrays() | head.arrays(prefix="use_") | view.arrays(prefix="view_")
    np.savez(paths.GATE, allow_pickle=False, **arrays)
    results["framing"], results["worst_framing"], results["framing_band"] = framing_report(
        scorer,
        gate,
        band,
        threshold,
        config,
        list(scores),
        head,
        other_bands(pooled_val, threshold),
        view,
        Namer(inference.session(reason_graph), view),  # names the refusals as served
    )

    results["worst_shift"] = worst_shift(results)
    results["explanations"] = faithfulness_report(scorer, model, params.base.seed)
    figures = {
        "ood_gate.png": gate_figure(distances, gate.threshold),
        "attention.png": attention_figure(scorer, names, config),
        "framing.png": framing_figure(results["framing"]),
    }
    log_plots(results, scores, threshold, names, params.evaluate.calibration_bins, figures)
    write_views(headline(results))  # the few numbers `dvc metrics` lists
    write_predictions(test_files, scores, threshold, names, band)
    write_monitor_reference(scorer)
    track(results, list(scores), threshold)


if __name__ == "__main__":
    main()
