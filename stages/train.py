"""Stage 3: train the Keras CNN on the prepared arrays.

Reads data/prepared/{train,val}.npz through tf.data (augmented, shuffled,
prefetched); early-stops on validation AUC with the best weights restored.
Writes models/model.keras and models/train_info.json; metrics/train.json (the few numbers
`dvc metrics` lists), the curves to metrics/train (dvclive), the run to MLflow.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os

from pneumonia import paths, tracking
from pneumonia.config import load_params
from pneumonia.data.prepared import load_split, preprocess_config
from pneumonia.images.prepare import apply_intensity
from pneumonia.model.training import (
    average_statistics,
    compile_model,
    distribution_strategy,
    fit,
    flat_params,
    is_chief,
    make_datasets,
    prepare_multi_worker,
    set_up,
    train_headline,
    weights_digest,
)

log = logging.getLogger("train")


def main() -> None:
    """Run the stage: train with early stopping, save the model, log the run.

    On a multi-worker cluster every worker runs this; the chief alone writes the model and
    the records, and each worker logs the digest of the weights it finished with.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from dvclive import Live

    from pneumonia.model.network import build_model

    params = load_params()
    train_params, seed = params.train, params.base.seed
    strategy = distribution_strategy(train_params.distribution)  # before any other op
    device, cpu = set_up(seed)

    # with intensity_last, the intensity step comes after the random box, as serving
    # computes it on a tighter frame: train from the images before it
    intensity_last = train_params.augment.enabled and train_params.augment.intensity_last
    train = load_split("train", "before_intensity" if intensity_last else "images")
    val = load_split("val")
    image_size = train[0].shape[1]
    log.info("train %d images, val %d images, %d px", len(train[1]), len(val[1]), image_size)
    intensity = None
    if intensity_last:
        config = preprocess_config()
        intensity = functools.partial(apply_intensity, config=config)
        log.info("intensity (%s) applied after the random box", config.intensity)
    datasets = make_datasets(train, val, train_params, seed, intensity)
    with strategy.scope():
        model = build_model(image_size, train_params)
        compile_model(model, train_params, math.ceil(len(train[1]) / train_params.batch_size))
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if multi_worker:
        prepare_multi_worker(model, strategy, datasets[0])
    log.info(
        "model %s: %d parameters, %d replica(s) in sync",
        model.name,
        model.count_params(),
        strategy.num_replicas_in_sync,
    )
    if not is_chief(strategy):
        fit(model, datasets, train_params, train[1], live=None)
        average_statistics(model, strategy)
        log.info("worker done: weights sha256 %s", weights_digest(model))
        return

    paths.MODELS.mkdir(exist_ok=True)
    tracking.configure()
    with (
        tracking.start_run("train") as run,
        Live(dir=str(paths.TRAIN_LIVE), save_dvc_exp=False, dvcyaml=None) as live,
    ):
        tracking.log_params({**flat_params(train_params), "seed": seed, "image_size": image_size})
        tracking.set_tags(
            {"device": device, "stage": "train", **{f"cpu.{k}": v for k, v in cpu.items()}}
        )
        summary = fit(model, datasets, train_params, train[1], live)
        if multi_worker:
            average_statistics(model, strategy)  # with the other workers, in step
        live.summary.update(summary)
        live.make_summary()
        tracking.log_metrics(summary)
        model.save(paths.KERAS_MODEL)
        tracking.log_keras_model(model)
        info = {
            "device": device,
            "cpu": cpu,
            "replicas": strategy.num_replicas_in_sync,
            "mlflow_run_id": run.info.run_id,
            "architecture": train_params.architecture,  # the model card names the network
            **summary,
        }
        paths.TRAIN_INFO.write_text(json.dumps(info, indent=2) + "\n")
        paths.TRAIN_HEADLINE.write_text(json.dumps(train_headline(summary), indent=2) + "\n")
    log.info(
        "best val AUC %.4f at epoch %d, %.0f s; weights sha256 %s",
        summary["best_val_auc"],
        summary["best_epoch"],
        summary["train_seconds"],
        weights_digest(model),
    )


if __name__ == "__main__":
    main()
