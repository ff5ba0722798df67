"""The MLflow model registry: the exported ONNX model and its metadata, by version.

export_onnx registers each export as a version of REGISTERED_MODEL, tagged with
its content version ("sha256-..."), which is what the endpoint answers as
`modelVersion`. Deployment fetches a registered version:

    python -m pneumonia.registry fetch --version 3 --output build/model
    python -m pneumonia.registry fetch --alias champion --output build/model
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from pneumonia import tracking
from pneumonia.decision.contract import ModelMetadata

REGISTERED_MODEL = "pneumonia-classifier"


def register(onnx_path: Path, metadata_path: Path, metadata: ModelMetadata) -> str:
    """Log the ONNX file and its metadata, byte for byte, to the active run and register them.

    Returns the registry version. The registered source is the run's `serving/`
    folder, so `models:/pneumonia-classifier/<version>` downloads exactly the
    files export_onnx wrote.
    """
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copyfile(onnx_path, Path(scratch) / "model.onnx")
        shutil.copyfile(metadata_path, Path(scratch) / "model.json")
        mlflow.log_artifacts(scratch, artifact_path="serving")
    client = MlflowClient()
    try:
        client.create_registered_model(REGISTERED_MODEL)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    test = metadata.metrics.get("test", {})
    tags = {
        "model_version": metadata.model_version,
        "threshold": str(metadata.threshold),
        **{
            f"test_{k}": str(test[k])
            for k in ("roc_auc", "sensitivity", "specificity")
            if k in test
        },
    }
    run = mlflow.active_run()
    assert run is not None, "register() runs inside an MLflow run"
    entry = client.create_model_version(
        REGISTERED_MODEL,
        source=mlflow.get_artifact_uri("serving"),
        run_id=run.info.run_id,
        tags=tags,
        description=f"ONNX export {metadata.model_version}",
    )
    return str(entry.version)


def fetch(output: Path, version: str | None = None, alias: str | None = None) -> ModelMetadata:
    """Write model.onnx and model.json of a registered version into `output`."""
    client = MlflowClient()
    if alias is not None:
        entry = client.get_model_version_by_alias(REGISTERED_MODEL, alias)
    elif version is not None:
        entry = client.get_model_version(REGISTERED_MODEL, version)
    else:
        versions = client.search_model_versions(f"name='{REGISTERED_MODEL}'")
        entry = max(versions, key=lambda v: int(v.version))
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        onnx_dir = Path(
            mlflow.artifacts.download_artifacts(
                f"models:/{REGISTERED_MODEL}/{entry.version}", dst_path=f"{scratch}/onnx"
            )
        )
        metadata_file = Path(
            mlflow.artifacts.download_artifacts(
                run_id=entry.run_id, artifact_path="serving/model.json", dst_path=scratch
            )
        )
        shutil.copyfile(onnx_dir / "model.onnx", output / "model.onnx")
        shutil.copyfile(metadata_file, output / "model.json")
    metadata = ModelMetadata.load(output / "model.json")
    expected = entry.tags.get("model_version")
    if expected != metadata.model_version:
        raise RuntimeError(
            f"version {entry.version}: metadata says {metadata.model_version}, "
            f"the registry {expected}"
        )
    return metadata


def main(argv: list[str] | None = None) -> int:
    """Command line: `fetch` a registered version into a folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_parser = sub.add_parser("fetch", help="download a registered version")
    which = fetch_parser.add_mutually_exclusive_group()
    which.add_argument("--version")
    which.add_argument("--alias")
    fetch_parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    tracking.configure()
    metadata = fetch(args.output, args.version, args.alias)
    print(f"{REGISTERED_MODEL}: {metadata.model_version} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
