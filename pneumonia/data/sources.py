"""Where `ingest.source` points: a folder in the Kaggle "chest-xray-pneumonia" layout, a .zip /
.tar.gz of it (local path or http(s) URL, checked against `ingest.sha256`), or a MedMNIST
PneumoniaMNIST .npz (checked against the MD5 that MedMNIST publishes); and the files it holds.

A source without `ingest.sha256` is reported unverified (refused with
`ingest.require_sha256`); URLs are recorded and logged without their secrets.
"""

from __future__ import annotations

import io
import logging
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pneumonia.config import IngestParams
from pneumonia.data.archives import extract
from pneumonia.data.download import (
    LIMITS,
    Limits,
    SourceError,
    download,
    file_digest,
    is_url,
    redact_url,
)

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


@dataclass(frozen=True)
class Candidate:
    """One file found in the source: where it is, what the source says it is."""

    relative_path: str  # <source_split>/<LABEL>/<name>, also its path under data/raw
    source_split: str
    label: str
    data: bytes


@dataclass(frozen=True)
class Source:
    """Where `ingest.source` resolved to, and what checked its bytes."""

    location: Path  # a folder in the Kaggle layout, or a .npz file
    verified_by: str | None  # "ingest.sha256", "MedMNIST md5", or None (not verified)

    @property
    def verified(self) -> bool:
        """Whether a checksum checked the source's bytes."""
        return self.verified_by is not None


def verify_sha256(path: Path, expected: str | None) -> None:
    """Raise SourceError unless the file's sha256 is `expected` (nothing to check when None)."""
    if expected is None:
        return
    actual = file_digest(path, "sha256")
    if actual.lower() != expected.lower():
        raise SourceError(
            f"{path}: sha256 is {actual}, expected {expected} (ingest.sha256). "
            "The file is corrupt or not the one configured."
        )


def verify_medmnist(path: Path) -> None:
    """Raise SourceError unless the file is a PneumoniaMNIST release with MedMNIST's MD5."""
    expected = MEDMNIST_MD5.get(path.name)
    if expected is None:
        raise SourceError(
            f"{path.name} is not a PneumoniaMNIST release file "
            f"(expected one of {', '.join(sorted(MEDMNIST_MD5))})"
        )
    actual = file_digest(path, "md5")
    if actual != expected:
        raise SourceError(f"{path}: md5 {actual} does not match MedMNIST's {expected}")


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


def source_kind(source: str) -> str:
    """What `ingest.source` names, in words: a folder, an archive, a .npz file or a download."""
    name = Path(urllib.parse.urlsplit(source).path).name if is_url(source) else source
    if name.endswith(".npz"):
        return "a .npz file"
    if name.endswith((".zip", ".tar.gz", ".tgz")):
        return "an archive"
    if is_url(source):
        return "a download"
    return "a folder" if Path(source).expanduser().is_dir() else "a file"


def refuse_unpinned(params: IngestParams, kind: str) -> None:
    """Raise SourceError for a file source without ingest.sha256 when ingest.require_sha256."""
    if params.sha256 is None and params.require_sha256:
        raise SourceError(
            f"ingest.source {redact_url(params.source)!r} is {kind} without ingest.sha256, and "
            "ingest.require_sha256 is true: set ingest.sha256 to the file's sha256"
        )


def resolve_source(params: IngestParams, downloads: Path, limits: Limits = LIMITS) -> Source:
    """Turn `ingest.source` into a local layout folder or a local .npz file.

    Archives, .npz files and downloads are checked against `ingest.sha256`;
    without it they are refused when `ingest.require_sha256` is set, and
    reported unverified with a warning otherwise (a .npz is still checked
    against MedMNIST's MD5). A folder has no single hash (DVC tracks its
    files): it is reported unverified, without a warning.
    """
    source, shown = params.source, redact_url(params.source)
    if is_url(source):
        kind = source_kind(source)
        if kind == "a download":  # known before spending the download
            raise SourceError(f"ingest.source {shown!r}: expected a URL of a .zip, .tar.gz or .npz")
        refuse_unpinned(params, kind)
        local = download(source, downloads, params.sha256, limits)
    else:
        local = Path(source).expanduser()
        if not local.exists():
            raise SourceError(
                f"ingest.source {source!r} not found (looked for {local.resolve()}). "
                "For the versioned dataset run `make data` (python -m pneumonia.dataset). "
                "Otherwise set ingest.source in params.yaml, or run "
                "`dvc exp run --set-param ingest.source=PATH_OR_URL`, to a folder in the "
                "Kaggle chest-xray-pneumonia layout, a .zip/.tar.gz of it, or a "
                "PneumoniaMNIST .npz."
            )
        kind = source_kind(source)
        if local.is_file():
            refuse_unpinned(params, kind)
            verify_sha256(local, params.sha256)
    if local.is_dir():
        return Source(find_layout_root(local), None)
    if not local.name.endswith((".npz", ".zip", ".tar.gz", ".tgz")):
        raise SourceError(f"ingest.source {shown!r}: expected a folder, .zip, .tar.gz or .npz")
    if params.sha256 is None and not local.name.endswith(".npz"):
        log.warning(
            "UNVERIFIED %s: %s has no ingest.sha256, so nothing shows it is the data meant%s. "
            "Its sha256 is %s: set ingest.sha256 to pin it.",
            kind,
            shown,
            " (whoever controls the server or the network decides it)" if is_url(source) else "",
            file_digest(local, "sha256"),
        )
    verified_by = "ingest.sha256" if params.sha256 is not None else None
    if local.name.endswith(".npz"):
        verify_medmnist(local)
        return Source(local, verified_by or "MedMNIST md5")
    log.info("extracting %s", local.name)
    return Source(find_layout_root(extract(local, downloads / "extracted", limits)), verified_by)


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
