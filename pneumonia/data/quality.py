"""What is kept of a source: every image decoded once (a corrupt one is quarantined with its
reason), byte-identical copies collapsed, and an optional stratified subsample."""

from __future__ import annotations

import hashlib

import numpy as np
from tqdm import tqdm

from pneumonia.data.sources import Candidate
from pneumonia.images.decode import decode_gray, read_header
from pneumonia.images.formats import ImageError


def subsample(candidates: list[Candidate], max_images: int | None, seed: int) -> list[Candidate]:
    """A seeded, label-stratified subset of at most max_images (all when None)."""
    if max_images is None or len(candidates) <= max_images:
        return candidates
    rng = np.random.default_rng(seed)
    labels = np.array([c.label for c in candidates])
    keep: list[int] = []
    for label in sorted(set(labels)):
        indices = np.flatnonzero(labels == label)
        quota = max(1, round(max_images * len(indices) / len(candidates)))
        keep.extend(rng.choice(indices, size=min(quota, len(indices)), replace=False))
    return [candidates[i] for i in sorted(keep)]


def validate(candidates: list[Candidate]) -> tuple[list[dict], list[dict]]:
    """Decode every candidate; returns (accepted rows, quarantined rows with a reason)."""
    accepted, quarantined = [], []
    for candidate in tqdm(candidates, desc="validate images", unit="img"):
        row = {
            "file": candidate.relative_path,
            "label": candidate.label,
            "source_split": candidate.source_split,
            "sha256": hashlib.sha256(candidate.data).hexdigest(),
            "size_bytes": len(candidate.data),
        }
        try:
            header = read_header(candidate.data)
            decode_gray(candidate.data)  # truncated or corrupt pixel data fails here
        except ImageError as error:
            quarantined.append({**row, "reason": error.reason, "detail": str(error)})
            continue
        accepted.append({**row, "width": header.width, "height": header.height})
    return accepted, quarantined


def collapse_duplicates(rows: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Keep one file of each group of byte-identical files.

    Returns (kept rows, quarantined rows, duplicate groups). A group whose files
    carry different labels is quarantined whole: its label cannot be trusted.
    """
    by_hash: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: r["file"]):
        by_hash.setdefault(row["sha256"], []).append(row)
    kept, quarantined, groups = [], [], []
    for digest, group in by_hash.items():
        if len(group) == 1:
            kept.append(group[0])
            continue
        files = [r["file"] for r in group]
        if len({r["label"] for r in group}) > 1:
            groups.append({"sha256": digest, "files": files, "kept": None})
            for row in group:
                quarantined.append(
                    {
                        **row,
                        "reason": "duplicate_conflicting_labels",
                        "detail": "byte-identical files carry different labels",
                    }
                )
            continue
        groups.append({"sha256": digest, "files": files, "kept": files[0]})
        kept.append(group[0])
    return kept, quarantined, groups
