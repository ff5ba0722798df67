"""Stage 1: bring the dataset into data/, validate every image, split by patient.

Sources (`ingest.source`, see `pneumonia.data.sources`): a folder in the Kaggle
"chest-xray-pneumonia" layout, a .zip / .tar.gz of it (local path or http(s) URL), or a
MedMNIST PneumoniaMNIST .npz. Writes data/raw/<split>/<LABEL>/<file> (accepted images,
source layout kept), data/quarantine/... (rejected files), data/manifest.csv,
data/ingest_report.json (with file names, so cached by DVC and kept out of git) and
metrics/ingest.json (counts only).
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import pandas as pd

from pneumonia import paths
from pneumonia.config import load_params
from pneumonia.data.quality import collapse_duplicates, subsample, validate
from pneumonia.data.report import MANIFEST_COLUMNS, build_report, summarize, write_images
from pneumonia.data.sources import candidates_from_folder, candidates_from_npz, resolve_source
from pneumonia.data.splits import patient_id, split_by_patient

log = logging.getLogger("ingest")


def main() -> None:
    """Run the stage: resolve, validate, deduplicate and split the source; write the outputs."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    params = load_params()
    labels = params.base.labels
    source = resolve_source(params.ingest, paths.DOWNLOADS)
    location = source.location
    log.info("source: %s (verified by %s)", location, source.verified_by or "nothing")
    if location.is_file():
        candidates = candidates_from_npz(location, labels)
    else:
        candidates = candidates_from_folder(location, labels)
    candidates = subsample(candidates, params.ingest.max_images, params.base.seed)
    log.info("%d files found", len(candidates))

    accepted, quarantined = validate(candidates)
    kept, conflicting, duplicate_groups = collapse_duplicates(accepted)
    quarantined += conflicting

    manifest = pd.DataFrame(kept)
    manifest["patient_id"] = [patient_id(f) for f in manifest["file"]]
    manifest["split"] = split_by_patient(
        manifest,
        params.ingest.val_fraction,
        params.ingest.test_fraction,
        params.base.seed,
        params.ingest.min_official_val_images,
        params.ingest.shift_fraction,
    )
    manifest = manifest[MANIFEST_COLUMNS].sort_values("file").reset_index(drop=True)

    by_file = {c.relative_path: c.data for c in candidates}
    write_images(kept, by_file, paths.RAW)
    write_images(quarantined, by_file, paths.QUARANTINE)
    paths.QUARANTINE.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(quarantined, columns=[*MANIFEST_COLUMNS[:2], "reason", "detail"]).to_csv(
        paths.QUARANTINE_LIST, index=False
    )
    manifest.to_csv(paths.MANIFEST, index=False)
    report = build_report(
        manifest,
        quarantined,
        duplicate_groups,
        params.ingest.source,
        len(candidates),
        source.verified_by,
    )
    paths.INGEST_REPORT.write_text(json.dumps(report, indent=2) + "\n")  # DVC-cached, not in git
    paths.INGEST_SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    paths.INGEST_SUMMARY.write_text(json.dumps(summarize(report), indent=2) + "\n")

    log.info("per split: %s", report["per_split"])
    log.info(
        "%d quarantined, %d duplicate groups (%d files removed)",
        len(quarantined),
        len(duplicate_groups),
        report["duplicates_removed"],
    )
    # File names carry patient ids: logs get counts per reason, the report gets the files.
    for reason, count in sorted(Counter(row["reason"] for row in quarantined).items()):
        log.warning("quarantined %d file(s): %s (see %s)", count, reason, paths.INGEST_REPORT)


if __name__ == "__main__":
    main()
