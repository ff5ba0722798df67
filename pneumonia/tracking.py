"""MLflow run tracking: a local SQLite store by default, MLFLOW_TRACKING_URI overrides it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

if TYPE_CHECKING:
    import keras

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # relative to the repository root
ARTIFACT_ROOT = Path("mlartifacts")
EXPERIMENT = "pneumonia"


def configure() -> str:
    """Point MLflow at the store and the experiment; returns the tracking URI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        artifact_location = None
        if uri.startswith("sqlite:"):  # keep artifacts beside the local store, not in ./mlruns
            artifact_location = ARTIFACT_ROOT.resolve().as_uri()
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifact_location)
    mlflow.set_experiment(EXPERIMENT)
    return uri


@contextmanager
def start_run(stage: str, run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """A run for this stage; `run_id` continues the training run when it is in this store."""
    if run_id is not None:
        try:
            mlflow.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            run_id = None  # the store has moved (another machine, a fresh clone)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else stage) as run:
        yield run


def _scalars(values: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in values.items() if value is not None}


def log_params(params: dict[str, Any]) -> None:
    """Log parameters to the active run, each as its string form."""
    mlflow.log_params({key: str(value) for key, value in params.items()})


def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
    """Log numeric metrics to the active run; None values are skipped."""
    mlflow.log_metrics(_scalars(metrics), step=step)


def set_tags(tags: dict[str, str]) -> None:
    """Tag the active run."""
    mlflow.set_tags(tags)


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    """Copy a file into the active run's artifacts, under `artifact_path` if given."""
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def keras_epoch_logger() -> keras.callbacks.Callback:
    """A Keras callback that logs each epoch's metrics to the active run."""
    import keras

    return keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: log_metrics(logs or {}, step=epoch + 1)
    )


def log_keras_model(model: keras.Model) -> None:
    """The trained Keras model as an MLflow model of the run."""
    import mlflow.tensorflow

    mlflow.tensorflow.log_model(model, name="keras_model", pip_requirements=["tensorflow", "keras"])
