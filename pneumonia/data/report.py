"""What ingest writes: the accepted and quarantined files, the report (with file names) and
its summary (counts only)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pandas as pd

from pneumonia.data.download import redact_url

MANIFEST_COLUMNS = [
    "file",
    "label",
    "patient_id",
    "split",
    "source_split",
    "sha256",
    "size_bytes",
    "width",
    "height",
]


def write_images(rows: list[dict], by_file: dict[str, bytes], root: Path) -> None:
    """Write each row's bytes to root/<file>, replacing whatever `root` held."""
    if root.exists():
        shutil.rmtree(root)
    for row in rows:
        target = root / row["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(by_file[row["file"]])


def build_report(
    manifest: pd.DataFrame,
    quarantined: list[dict],
    duplicate_groups: list[dict],
    source: str,
    n_found: int,
    verified_by: str | None = None,
) -> dict:
    """The ingest report; the source is recorded without a URL's user info, query and fragment."""
    counts = manifest.groupby(["split", "label"]).size()
    per_split = {
        split: {label: int(n) for label, n in counts[split].items()}
        for split in counts.index.get_level_values(0).unique()
    }
    return {
        "source": redact_url(source),
        "verified": verified_by is not None,
        "verified_by": verified_by,
        "files_found": n_found,
        "images_accepted": int((manifest["split"] != "excluded").sum()),
        "patients": int(manifest.loc[manifest["split"] != "excluded", "patient_id"].nunique()),
        "per_split": per_split,
        "patients_per_split": {
            split: int(n) for split, n in manifest.groupby("split")["patient_id"].nunique().items()
        },
        "quarantined": [
            {key: row[key] for key in ("file", "label", "reason", "detail")} for row in quarantined
        ],
        "duplicate_groups": duplicate_groups,
        "duplicates_removed": sum(
            len(g["files"]) - 1 for g in duplicate_groups if g["kept"] is not None
        ),
    }


def summarize(report: dict) -> dict:
    """The report without file names (they carry patient ids): counts a reviewer can diff."""
    return {
        **{key: value for key, value in report.items() if key not in ("quarantined",)},
        "quarantined": len(report["quarantined"]),
        "quarantined_by_reason": dict(Counter(row["reason"] for row in report["quarantined"])),
        "duplicate_groups": len(report["duplicate_groups"]),
    }
