"""The MLflow model registry: the exported ONNX model and its metadata, by version.

export_onnx registers each export as a version of REGISTERED_MODEL, tagged with
its content version ("sha256-..."), which is what the endpoint answers as
`modelVersion`. A site's recalibration (`python -m pneumonia.recalibrate`) is registered
as another version of the same model, tagged `site` and `recalibrated_from`. Deployment
fetches a registered version:

    python -m pneumonia.registry fetch --version 3 --output build/model
    python -m pneumonia.registry fetch --alias champion --output build/model
    python -m pneumonia.registry fetch --site children-north --output build/model
    python -m pneumonia.registry register build/site   # a recalibrated model.json + onnx

Without --version, --alias or --site, fetch takes the newest version that is not a site's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from pneumonia import tracking
from pneumonia.decision.contract import ModelMetadata

REGISTERED_MODEL = "pneumonia-classifier"


def register(
    onnx_path: Path,
    metadata_path: Path,
    metadata: ModelMetadata,
    extra: dict[str, Path] | None = None,
) -> str:
    """Log the ONNX file and its metadata, byte for byte, to the active run and register them.

    Returns the registry version. The registered source is the run's `serving/`
    folder, so `models:/pneumonia-classifier/<version>` downloads exactly the
    files export_onnx wrote.
    """
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copyfile(onnx_path, Path(scratch) / "model.onnx")
        shutil.copyfile(metadata_path, Path(scratch) / "model.json")
        if metadata.reason is not None:  # the reason head beside the graph
            reason_file = metadata.reason.file
            shutil.copyfile(onnx_path.with_name(reason_file), Path(scratch) / reason_file)
        mlflow.log_artifacts(scratch, artifact_path="serving")
    for name, path in (extra or {}).items():
        mlflow.log_artifact(str(path), artifact_path=name)
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
    if metadata.site is not None:
        tags["site"] = metadata.site
        tags["recalibrated_from"] = str(metadata.versions.get("recalibrated_from", ""))
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


def register_site(folder: Path) -> str:
    """Register a site's recalibrated model (folder/model.onnx, model.json, the reason.onnx it
    names, and the recalibration report) as a version of REGISTERED_MODEL tagged with its site."""
    metadata = ModelMetadata.load(folder / "model.json")
    metadata.check_describes((folder / "model.onnx").read_bytes())
    if metadata.site is None:
        raise ValueError(
            f"{folder / 'model.json'} names no site: register a recalibration written by "
            "`python -m pneumonia.recalibrate ... --site NAME`"
        )
    reports = {"recalibration": folder / "recalibration.json"}
    with tracking.start_run(f"recalibrate-{metadata.site}"):
        mlflow.set_tags({"site": metadata.site, "model_version": metadata.model_version})
        return register(
            folder / "model.onnx",
            folder / "model.json",
            metadata,
            {k: v for k, v in reports.items() if v.is_file()},
        )


def _entry(version: str | None, alias: str | None, site: str | None) -> Any:
    """The registry entry asked for: by version, by alias, the newest of a site, or the
    newest that is no site's."""
    client = MlflowClient()
    if alias is not None:
        return client.get_model_version_by_alias(REGISTERED_MODEL, alias)
    if version is not None:
        return client.get_model_version(REGISTERED_MODEL, version)
    versions = client.search_model_versions(f"name='{REGISTERED_MODEL}'")
    matching = [v for v in versions if v.tags.get("site") == site]
    if not matching:
        raise LookupError(
            f"no version of {REGISTERED_MODEL} is registered for site {site!r}"
            if site
            else f"no version of {REGISTERED_MODEL} is registered"
        )
    return max(matching, key=lambda v: int(v.version))


def fetch(
    output: Path, version: str | None = None, alias: str | None = None, site: str | None = None
) -> ModelMetadata:
    """Write model.onnx and model.json of a registered version into `output` (and the
    reason.onnx its model.json names)."""
    entry = _entry(version, alias, site)
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
        if metadata.reason is not None:
            reason_file = metadata.reason.file
            shutil.copyfile(onnx_dir / reason_file, output / reason_file)
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
    which.add_argument("--site", help="the newest version recalibrated for this site")
    fetch_parser.add_argument("--output", type=Path, required=True)
    register_parser = sub.add_parser("register", help="register a site's recalibration")
    register_parser.add_argument("folder", type=Path, help="recalibrate's --output folder")
    args = parser.parse_args(argv)
    tracking.configure()
    try:
        if args.command == "register":
            number = register_site(args.folder)
            print(f"{REGISTERED_MODEL}: version {number} registered from {args.folder}")
            return 0
        metadata = fetch(args.output, args.version, args.alias, args.site)
    except (LookupError, ValueError) as error:
        print(f"registry: {error}", file=sys.stderr)
        return 2
    print(f"{REGISTERED_MODEL}: {metadata.model_version} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
