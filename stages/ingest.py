"""Stage 1: bring the dataset into data/, validate every image, split by patient.

Sources (`ingest.source`): a folder in the Kaggle "chest-xray-pneumonia" layout,
a .zip / .tar.gz of it (local path or http(s) URL, checked against
`ingest.sha256`), or a MedMNIST PneumoniaMNIST .npz (checked against the MD5
that MedMNIST publishes).

Writes data/raw/<split>/<LABEL>/<file> (accepted images, source layout kept),
data/quarantine/... (rejected files), data/manifest.csv and data/ingest_report.json.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import shutil
import tarfile
import urllib.parse
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from pneumonia import paths
from pneumonia.config import IngestParams, load_params
from pneumonia.imaging import ImageError, decode_gray, read_header

log = logging.getLogger("ingest")

# MD5 of each PneumoniaMNIST release file, as published in medmnist.INFO
# ("MD5", "MD5_64", "MD5_128", "MD5_224"; Zenodo record 10519652).
MEDMNIST_MD5 = {
    "pneumoniamnist.npz": "28209eda62fecd6e6a2d98b1501bb15f",
    "pneumoniamnist_64.npz": "8f4eceb4ccffa70c672198ea285246c6",
    "pneumoniamnist_128.npz": "05b46931834c231683c68f40c47b2971",
    "pneumoniamnist_224.npz": "d6a3c71de1b945ea11211b03746c1fe1",
}
OFFICIAL_SPLITS = ("train", "val", "test")
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


class SourceError(RuntimeError):
    """The configured source cannot be found, fetched or verified."""


@dataclass(frozen=True)
class Candidate:
    """One file found in the source: where it is, what the source says it is."""

    relative_path: str  # <source_split>/<LABEL>/<name>, also its path under data/raw
    source_split: str
    label: str
    data: bytes


# ---------------------------------------------------------------- patient ids

_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)(?:_\d+)+$", re.IGNORECASE),  # person1234_virus_99
    re.compile(r"^(NORMAL2-IM-\d+)(?:-\d+)+$", re.IGNORECASE),  # NORMAL2-IM-1427-0001(-0002)
    re.compile(r"^(IM-\d+)(?:-\d+)+$", re.IGNORECASE),  # IM-0115-0001(-0002)
)


def patient_id(file_name: str) -> str:
    """The patient a file belongs to, from the Kaggle naming schemes.

    A name that matches none of them is its own patient (its stem), so it can
    never share a patient with another file by accident.
    """
    stem = Path(file_name).name.rsplit(".", 1)[0]
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


# ---------------------------------------------------------------- sources


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks (hashlib.file_digest)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def fetch(url: str, downloads: Path) -> Path:
    """Download a URL into `downloads` (once; a finished file is reused), with a progress bar."""
    name = Path(urllib.parse.urlparse(url).path).name or "source"
    target = downloads / name
    if target.exists():
        log.info("using cached download %s", target)
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                open(partial, "wb") as out,
                tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}") as bar,
            ):
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise SourceError(f"could not download {url}: {exc}") from exc
    partial.rename(target)  # only a complete download gets the final name
    return target


def verify_sha256(path: Path, expected: str | None) -> None:
    if expected is None:
        return
    actual = file_digest(path, "sha256")
    if actual.lower() != expected.lower():
        raise SourceError(
            f"{path}: sha256 is {actual}, expected {expected} (ingest.sha256). "
            "The file is corrupt or not the one configured."
        )


def verify_medmnist(path: Path) -> None:
    expected = MEDMNIST_MD5.get(path.name)
    if expected is None:
        raise SourceError(
            f"{path.name} is not a PneumoniaMNIST release file "
            f"(expected one of {', '.join(sorted(MEDMNIST_MD5))})"
        )
    actual = file_digest(path, "md5")
    if actual != expected:
        raise SourceError(f"{path}: md5 {actual} does not match MedMNIST's {expected}")


def extract(archive: Path, destination: Path) -> Path:
    """Extract a .zip / .tar.gz safely (no path escapes) into a fresh folder."""
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as bundle:
            root = destination.resolve()
            for member in bundle.namelist():
                if not (destination / member).resolve().is_relative_to(root):
                    raise SourceError(f"{archive}: member {member!r} escapes the archive")
            bundle.extractall(destination)
    else:
        with tarfile.open(archive, "r:*") as bundle:
            bundle.extractall(destination, filter="data")
    return destination


def find_layout_root(folder: Path) -> Path:
    """The folder holding train/ (it may sit a few levels down in an archive)."""
    for candidate in [folder, *sorted(p for p in folder.glob("**/") if p != folder)]:
        if (candidate / "train").is_dir() and candidate.relative_to(folder).parts[:1] != (
            "__MACOSX",
        ):
            return candidate
    raise SourceError(
        f"no train/ folder found under {folder}; expected the Kaggle layout "
        "train/{NORMAL,PNEUMONIA}/*.jpeg (optional val/ and test/)"
    )


def resolve_source(params: IngestParams, downloads: Path) -> Path:
    """Turn `ingest.source` into a local layout folder or a local .npz file."""
    source = params.source
    if urllib.parse.urlparse(source).scheme in ("http", "https"):
        local = fetch(source, downloads)
    else:
        local = Path(source).expanduser()
        if not local.exists():
            raise SourceError(
                f"ingest.source {source!r} not found (looked for {local.resolve()}). "
                "Set ingest.source in params.yaml, or run "
                "`dvc exp run --set-param ingest.source=PATH_OR_URL`, to a folder in the "
                "Kaggle chest-xray-pneumonia layout, a .zip/.tar.gz of it, or a "
                "PneumoniaMNIST .npz."
            )
    if local.is_dir():
        return find_layout_root(local)
    if local.name.endswith(".npz"):
        verify_medmnist(local)
        verify_sha256(local, params.sha256)
        return local
    if local.name.endswith((".zip", ".tar.gz", ".tgz")):
        verify_sha256(local, params.sha256)
        log.info("extracting %s", local.name)
        return find_layout_root(extract(local, downloads / "extracted"))
    raise SourceError(f"ingest.source {source!r}: expected a folder, .zip, .tar.gz or .npz")


def candidates_from_folder(root: Path, labels: Iterable[str]) -> list[Candidate]:
    """Every file under <root>/<split>/<LABEL>/, with its bytes."""
    found = []
    for split in OFFICIAL_SPLITS:
        for label in labels:
            folder = root / split / label
            if not folder.is_dir():
                continue
            for path in sorted(p for p in folder.iterdir() if p.is_file()):
                found.append(
                    Candidate(f"{split}/{label}/{path.name}", split, label, path.read_bytes())
                )
    if not any(c.source_split == "train" for c in found):
        raise SourceError(f"{root}/train has no {'/'.join(labels)} sub-folders with files")
    return found


def candidates_from_npz(path: Path, labels: tuple[str, str]) -> list[Candidate]:
    """PneumoniaMNIST arrays as PNG files; MedMNIST has no patient ids, so each image is its own."""
    found = []
    with np.load(path) as arrays:
        for split in OFFICIAL_SPLITS:
            images, targets = arrays[f"{split}_images"], arrays[f"{split}_labels"].reshape(-1)
            for index, (pixels, target) in enumerate(zip(images, targets, strict=True)):
                buffer = io.BytesIO()
                Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
                label = labels[int(target)]
                name = f"pneumoniamnist-{split}-{index:05d}.png"
                found.append(Candidate(f"{split}/{label}/{name}", split, label, buffer.getvalue()))
    return found


# ---------------------------------------------------------------- validation


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


# ---------------------------------------------------------------- splitting


_SERIES = re.compile(r"^(.*?)(\d+)$")


def id_blocks(patients: Iterable[str], fraction: float) -> tuple[set[str], set[str]]:
    """The earliest and latest `fraction` of patients of each id series.

    Ids are handed out in order (IM-0115 before IM-0116, person1 before
    person2), so a contiguous block of one series approximates another period
    of the hospital: a cohort shift the random split cannot show. A series is
    the id without its trailing number ("person", "IM-", "NORMAL2-IM-"); ids
    without a number belong to no block.
    """
    series: dict[str, list[tuple[int, str]]] = {}
    for patient in set(patients):
        match = _SERIES.match(patient)
        if match:
            series.setdefault(match.group(1), []).append((int(match.group(2)), patient))
    early: set[str] = set()
    late: set[str] = set()
    for members in series.values():
        ordered = [patient for _, patient in sorted(members)]
        size = round(fraction * len(ordered))
        if size and len(ordered) > 2 * size:
            early.update(ordered[:size])
            late.update(ordered[-size:])
    return early, late


def split_by_patient(
    manifest: pd.DataFrame,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    min_official_val_images: int = 0,
    shift_fraction: float = 0.0,
) -> pd.Series:
    """Assign each image a split so that no patient is in two splits.

    Official test/ is used as the test split when present, and official val/
    when it has at least `min_official_val_images` images; otherwise it joins
    the train pool. What is not given is carved from the train pool by
    patient, stratified by the patient's majority label, seeded. Train-pool
    images of a patient who also appears in an official val/test split are
    marked "excluded" (reported, not used) so that no patient leaks.
    Before the random carve, the earliest and latest `shift_fraction` of each
    id series are held out as the "early" and "late" splits (`id_blocks`).
    """
    source = manifest["source_split"]
    has_test = bool((source == "test").any())
    has_val = int((source == "val").sum()) >= max(1, min_official_val_images)
    split = pd.Series("train", index=manifest.index, dtype=object)
    if has_test:
        split[source == "test"] = "test"
    if has_val:
        split[source == "val"] = "val"

    # A patient found in a held-out official split may not train.
    held_out = set(manifest.loc[split != "train", "patient_id"])
    pool = split == "train"
    leaking = pool & manifest["patient_id"].isin(held_out)
    split[leaking] = "excluded"
    pool &= ~leaking

    if shift_fraction:
        early, late = id_blocks(manifest.loc[pool, "patient_id"], shift_fraction)
        for name, block in (("early", early), ("late", late)):
            split[pool & manifest["patient_id"].isin(block)] = name
        pool &= split == "train"

    carve = {"test": 0.0 if has_test else test_fraction, "val": 0.0 if has_val else val_fraction}
    if carve["test"] or carve["val"]:
        pool_rows = manifest[pool]
        patient_label = pool_rows.groupby("patient_id")["label"].agg(lambda s: s.mode().iloc[0])
        rng = np.random.default_rng(seed)
        for label in sorted(patient_label.unique()):
            patients = np.array(sorted(patient_label.index[patient_label == label]))
            patients = patients[rng.permutation(len(patients))]
            n_test = round(carve["test"] * len(patients))
            n_val = round(carve["val"] * len(patients))
            chosen = {"test": patients[:n_test], "val": patients[n_test : n_test + n_val]}
            for name, members in chosen.items():
                split[pool & manifest["patient_id"].isin(members)] = name
    return split


# ---------------------------------------------------------------- outputs


def write_images(rows: list[dict], by_file: dict[str, bytes], root: Path) -> None:
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
) -> dict:
    counts = manifest.groupby(["split", "label"]).size()
    per_split = {
        split: {label: int(n) for label, n in counts[split].items()}
        for split in counts.index.get_level_values(0).unique()
    }
    return {
        "source": source,
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


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    params = load_params()
    labels = params.base.labels
    location = resolve_source(params.ingest, paths.DOWNLOADS)
    log.info("source: %s", location)
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
        manifest, quarantined, duplicate_groups, params.ingest.source, len(candidates)
    )
    paths.INGEST_REPORT.write_text(json.dumps(report, indent=2) + "\n")

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
