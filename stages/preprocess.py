"""Stage 2: each accepted image through `pneumonia.images.prepare.prepare_image`, one array
per split.

Writes data/prepared/<split>.npz with `images` (N, S, S, 1) uint8, `labels` (N,)
uint8 (index into base.labels) and `files` (N,) str (train also `before_intensity`: the
images before the intensity step), plus data/prepared/params.json:
the preprocessing config the arrays were made with, which train and export read.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pneumonia import paths
from pneumonia.config import load_params
from pneumonia.images.config import PreprocessConfig
from pneumonia.images.prepare import apply_intensity, prepare_image

log = logging.getLogger("preprocess")


def prepare_split(
    rows: pd.DataFrame, raw_root: Path, labels: tuple[str, ...], config: PreprocessConfig
) -> dict[str, np.ndarray]:
    """Images, labels and file names of one split as arrays."""
    size = config.image_size
    images = np.empty((len(rows), size, size, 1), dtype=np.uint8)  # (N, S, S, 1)
    before = np.empty_like(images)
    for index, file in enumerate(tqdm(rows["file"], desc="prepare", unit="img", leave=False)):
        before[index] = prepare_image((raw_root / file).read_bytes(), config, intensity=False)
        images[index, ..., 0] = apply_intensity(before[index, ..., 0], config)
    return {
        "images": images,
        "before_intensity": before,
        "labels": np.array([labels.index(label) for label in rows["label"]], dtype=np.uint8),
        "files": rows["file"].to_numpy(dtype=str),
    }


def main() -> None:
    """Run the stage: prepare every split of the manifest and write the arrays."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    params = load_params()
    config = params.preprocess
    manifest = pd.read_csv(paths.MANIFEST)
    if paths.PREPARED.exists():
        shutil.rmtree(paths.PREPARED)
    paths.PREPARED.mkdir(parents=True)
    for split in (*paths.SPLITS, *paths.SHIFT_SPLITS):
        rows = manifest[manifest["split"] == split]
        if rows.empty and split in paths.SPLITS:
            raise SystemExit(f"split {split!r} has no images; check {paths.INGEST_REPORT}")
        arrays = prepare_split(rows, paths.RAW, params.base.labels, config)
        # the images before the intensity step too, for the split training augments
        keys = ["images", "labels", "files"] + (["before_intensity"] if split == "train" else [])
        np.savez(paths.prepared_split(split), **{key: arrays[key] for key in keys})  # type: ignore[arg-type]
        log.info("%s: %d images -> %s", split, len(rows), paths.prepared_split(split))
    paths.PREPARED_PARAMS.write_text(
        json.dumps({"labels": list(params.base.labels), **config.model_dump()}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
