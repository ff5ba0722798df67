"""Stage 5: convert the Keras model to ONNX with tf2onnx (in int8 when
`export_onnx.quantize` says so), add the decision layer, and prove the graph is what was
evaluated.

Writes models/model.onnx, models/model.json (the metadata serving reads) and
metrics/export_onnx.json. The network must be byte for byte the one evaluate scored. The
parity check runs on the whole test split; the stage fails when the served probabilities
differ from evaluate's by more than export_onnx.parity_tolerance or in any label, or from
Keras by more than that (unquantized) or export_onnx.quantization_tolerance (int8).
"""

from __future__ import annotations

import json
import logging
import os
import sys

from pneumonia import paths
from pneumonia.config import load_params
from pneumonia.data.prepared import preprocessing
from pneumonia.images.config import PreprocessConfig
from pneumonia.release.card import model_card, network_description
from pneumonia.release.export import export_for_serving, network_to_serve
from pneumonia.release.parity import Tolerances, check_parity
from pneumonia.release.quantize import network_sha256
from pneumonia.release.release import describe_model, load_decision, track_and_register
from pneumonia.serving import inference

log = logging.getLogger("export_onnx")


def main() -> None:
    """Run the stage: convert, check parity, write model.json and the model card, register."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import pneumonia.model.network  # noqa: F401  (registers the custom layer)

    params = load_params().export_onnx
    prepared = preprocessing()
    labels = tuple(prepared.pop("labels"))
    config = PreprocessConfig.model_validate(prepared)
    evaluation = json.loads((paths.EVALUATE_LIVE / "metrics.json").read_text())
    train_info = json.loads(paths.TRAIN_INFO.read_text())
    if "architecture" not in train_info:
        sys.exit(f"{paths.TRAIN_INFO} predates train recording its architecture: dvc repro train")

    if "network" not in evaluation:
        sys.exit("metrics/evaluate/metrics.json predates evaluate recording its network: dvc repro")

    decision = load_decision(evaluation)
    model = keras.models.load_model(paths.KERAS_MODEL, compile=False)
    network = network_to_serve(model, config.image_size, params)
    if network_sha256(network) != evaluation["network"]["sha256"]:
        sys.exit(
            f"the {params.quantize} network built here is not the one evaluate scored "
            f"(sha256 {network_sha256(network)[:12]} against "
            f"{evaluation['network']['sha256'][:12]}): dvc repro evaluate"
        )
    onnx_bytes = export_for_serving(network, decision.calibration, decision.gate, decision.use_head)
    paths.ONNX_MODEL.write_bytes(onnx_bytes)
    session = inference.session(onnx_bytes, threads=0)  # all cores, as before
    check = check_parity(model, session, decision, Tolerances.of(params), len(onnx_bytes))

    metadata = describe_model(
        onnx_bytes, config, labels, evaluation, decision, params.opset, params.max_patient_age_years
    )
    paths.MODEL_METADATA.write_text(metadata.to_json())
    summary = json.loads(paths.INGEST_SUMMARY.read_text())
    paths.MODEL_CARD.write_text(
        model_card(
            metadata,
            evaluation,
            summary,
            train_info,
            network_description(train_info["architecture"], model.count_params()),
        )
    )
    track_and_register(metadata, check, train_info)
    log.info(
        "%s written (%d bytes), version %s",
        paths.ONNX_MODEL,
        len(onnx_bytes),
        metadata.model_version,
    )
    if not check["passed"]:
        log.error("the served graph fails its parity check: %s", paths.EXPORT_METRICS)
        sys.exit(1)


if __name__ == "__main__":
    main()
