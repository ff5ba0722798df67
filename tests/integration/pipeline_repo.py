"""Building and driving a temporary copy of the repository for the real `dvc repro`."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.images import encode, gradient

STAGES = ["ingest", "preprocess", "train", "evaluate", "export_onnx"]


def make_slice(sample_data: Path, destination: Path) -> Path:
    """The committed sample of real images, and four faulty files in train/NORMAL."""
    shutil.copytree(sample_data, destination)
    normal = destination / "train" / "NORMAL"
    real = next(normal.iterdir()).read_bytes()
    (normal / "IM-9001-0001.jpeg").write_bytes(real[: len(real) // 2])  # corrupt (truncated)
    (normal / "IM-9002-0001.jpeg").write_bytes(b"")  # zero bytes
    (normal / "IM-9003-0001.jpeg").write_text("radiology report, not an image\n")
    (normal / "IM-9004-0001.jpeg").write_bytes(encode(Image.fromarray(gradient()), "PNG"))
    return destination


def thin_external(repo: Path, every: int = 2) -> int:
    """Keep every `every`-th committed external radiograph of each kind in the copy `repo`,
    the first of each kind always (its manifest rows and files): the slice's evaluate fits and
    cross-validates the intended-use, view and reason heads on every kind at a fraction of the
    cost; `make repro` fits them on the whole set. Returns how many are kept."""
    folder = repo / "data" / "external" / "radiographs"
    manifest = folder / "manifest.csv"
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, list(reader)
    assert fields is not None
    seen: dict[str, int] = {}
    kept = []
    for row in rows:
        seen[row["kind"]] = seen.get(row["kind"], -1) + 1
        if seen[row["kind"]] % every:
            (folder / row["file"]).unlink()
        else:
            kept.append(row)
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    return len(kept)


def thin_kept(repo: Path, every: int = 2) -> int:
    """Keep every `every`-th image of each kind in the copy `repo`'s kept view statistics
    (`data/external/view_statistics/*.npz`, the first of each kind always), as `thin_external`
    does the committed radiographs: the reason head's fits in the slice's evaluate take rows
    from fewer images. Returns how many are kept."""
    kept = 0
    for path in sorted((repo / "data" / "external" / "view_statistics").glob("*.npz")):
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
        kinds = arrays["kinds"].tolist()
        seen: dict[str, int] = {}
        chosen = []
        for index, kind in enumerate(kinds):
            seen[kind] = seen.get(kind, -1) + 1
            if seen[kind] % every == 0:
                chosen.append(index)
        count = len(kinds)
        per_image = {key for key, value in arrays.items() if value.ndim and len(value) == count}
        arrays |= {key: arrays[key][chosen] for key in per_image}
        np.savez_compressed(path, allow_pickle=False, **arrays)
        kept += len(chosen)
    return kept


def set_params(repo: Path, **changes) -> None:
    """Set dotted keys of params.yaml, e.g. set_params(repo, **{"train.epochs": 2})."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        section = params
        for parent in parents:
            section = section[parent]
        section[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def run(repo: Path, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=repo, env=pipeline_env(repo), capture_output=True, text=True, timeout=900
    )
    if check and result.returncode != 0:
        tail = result.stdout[-3000:] + result.stderr[-3000:]
        pytest.fail(f"{' '.join(command)} failed:\n{tail}")
    return result


def pipeline_env(repo: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)
