"""Stage 1: bring the dataset into data/, validate every image, split by patient.

Sources (`ingest.source`): a folder in the Kaggle "chest-xray-pneumonia" layout,
a .zip / .tar.gz of it (local path or http(s) URL, checked against
`ingest.sha256`), or a MedMNIST PneumoniaMNIST .npz (checked against the MD5
that MedMNIST publishes). Downloads and archives are capped (`Limits`): only a
complete download is cached (per URL), https never redirects down to http, and
archives are extracted member by member with their sizes counted. A source
without `ingest.sha256` is reported unverified (refused with
`ingest.require_sha256`); URLs are recorded and logged without their secrets.

Writes data/raw/<split>/<LABEL>/<file> (accepted images, source layout kept),
data/quarantine/... (rejected files), data/manifest.csv, data/ingest_report.json (with
file names, so cached by DVC and kept out of git) and metrics/ingest.json (counts only).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import lzma
import os
import re
import shutil
import ssl
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from http.client import HTTPMessage
from pathlib import Path
from typing import IO

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

GiB = 1 << 30
CHUNK = 1 << 20  # bytes read and written at a time


@dataclass(frozen=True)
class Limits:
    """What fetching and extracting a source may cost before it is refused.

    The defaults leave ample room for the 1.2 GB Kaggle zip (about 2.3 GB and
    17,600 members extracted); tests pass smaller values.
    """

    max_download_bytes: int = 20 * GiB  # refused when Content-Length is larger; aborted past it
    download_deadline_s: float = 6 * 3600  # the whole download, checked after every read
    read_timeout_s: float = 60  # connect, and each read that gets no data at all
    max_archive_members: int = 200_000
    max_extracted_bytes: int = 20 * GiB  # declared in the headers, then counted while writing


LIMITS = Limits()


@dataclass(frozen=True)
class Source:
    """Where `ingest.source` resolved to, and what checked its bytes."""

    location: Path  # a folder in the Kaggle layout, or a .npz file
    verified_by: str | None  # "ingest.sha256", "MedMNIST md5", or None (not verified)

    @property
    def verified(self) -> bool:
        """Whether a checksum checked the source's bytes."""
        return self.verified_by is not None


def is_url(source: str) -> bool:
    """Whether `ingest.source` is an http(s) URL rather than a local path."""
    return urllib.parse.urlsplit(source).scheme in ("http", "https")


def redact_url(url: str) -> str:
    """The URL without user info, query and fragment, where tokens hide; a path is kept as is."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _scrub(text: str, url: str) -> str:
    """An error text with the URL's secret parts (user info, query, fragment) masked."""
    parts = urllib.parse.urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    for secret in sorted({userinfo, parts.query, parts.fragment} - {""}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks (hashlib.file_digest)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


class SafeRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only, and never from https down to plain http."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        """The redirected request, as urllib makes it; SourceError for a refused scheme."""
        old = urllib.parse.urlsplit(req.full_url).scheme
        new = urllib.parse.urlsplit(newurl).scheme
        if new not in ("http", "https") or (old == "https" and new != "https"):
            fp.close()
            raise SourceError(
                f"refused the redirect ({code}) from {redact_url(req.full_url)} to "
                f"{redact_url(newurl)}: a download that starts on https stays on https"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def download_path(url: str, downloads: Path) -> Path:
    """Where a URL is cached: downloads/<sha256(url)[:16]>/<file name>, one folder per URL."""
    name = Path(urllib.parse.urlsplit(url).path).name or "source"
    return downloads / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def copy_response(
    response: http.client.HTTPResponse,
    out: IO[bytes],
    shown: str,
    limits: Limits,
    deadline: float,
) -> tuple[int, str]:
    """Copy a response body to `out` under the caps; returns (bytes received, their sha256).

    `deadline` is a time.monotonic() value, checked after every read.
    """
    digest = hashlib.sha256()
    received = 0
    name = Path(urllib.parse.urlsplit(shown).path).name
    with tqdm(total=response.length, unit="B", unit_scale=True, desc=f"download {name}") as bar:
        while block := response.read1(CHUNK):  # what has arrived; never waits for a full CHUNK
            received += len(block)
            if received > limits.max_download_bytes:
                raise SourceError(
                    f"{shown}: more than {limits.max_download_bytes:,} bytes, the download cap "
                    "(stages.ingest.Limits.max_download_bytes)"
                )
            if time.monotonic() > deadline:
                raise SourceError(
                    f"{shown}: not downloaded within {limits.download_deadline_s:g} s "
                    f"({received:,} bytes received), the deadline "
                    "(stages.ingest.Limits.download_deadline_s)"
                )
            out.write(block)
            digest.update(block)
            bar.update(len(block))
    return received, digest.hexdigest()


def stream_download(
    url: str, out: IO[bytes], limits: Limits, ssl_context: ssl.SSLContext | None = None
) -> str:
    """Write the body of a GET of `url` to `out`; returns its sha256.

    Raises SourceError unless the body is complete (as many bytes as
    Content-Length announced; a chunked body up to its last chunk), within
    `limits.max_download_bytes` and received within `limits.download_deadline_s`
    (checked after each read, a read waiting at most `limits.read_timeout_s`).
    Redirects are followed by SafeRedirectHandler.
    """
    shown = redact_url(url)
    deadline = time.monotonic() + limits.download_deadline_s
    opener = urllib.request.build_opener(
        SafeRedirectHandler, urllib.request.HTTPSHandler(context=ssl_context)
    )
    try:
        with opener.open(url, timeout=limits.read_timeout_s) as response:
            announced = response.length  # Content-Length; None when chunked or absent
            if announced is not None and announced > limits.max_download_bytes:
                raise SourceError(
                    f"{shown}: Content-Length is {announced:,} bytes, over the download cap of "
                    f"{limits.max_download_bytes:,} bytes (stages.ingest.Limits.max_download_bytes)"
                )
            received, digest = copy_response(response, out, shown, limits, deadline)
    except (OSError, http.client.HTTPException, ValueError) as error:
        # Raised without its cause: the cause's text may hold the URL's token.
        detail = _scrub(f"{type(error).__name__}: {error}", url)
        raise SourceError(f"could not download {shown}: {detail}") from None
    if announced is not None and received != announced:
        raise SourceError(
            f"{shown}: the server announced {announced:,} bytes (Content-Length) but sent "
            f"{received:,}; the download is incomplete"
        )
    return digest


def fetch(
    url: str,
    downloads: Path,
    expected_sha256: str | None = None,
    limits: Limits = LIMITS,
    ssl_context: ssl.SSLContext | None = None,
) -> Path:
    """Download a URL into its folder of `downloads`, once, with a progress bar.

    Only a complete download (and, when `expected_sha256` is set, one with
    that sha256) gets the final name; anything else is removed. A cached file
    is reused when it matches `expected_sha256`, downloaded again when not.
    """
    shown = redact_url(url)
    if not is_url(url):
        raise SourceError(f"{shown}: only http and https URLs are downloaded")
    target = download_path(url, downloads)
    if target.exists():
        if expected_sha256 is None:
            log.info("using cached download %s of %s (unverified)", target, shown)
            return target
        if file_digest(target, "sha256") == expected_sha256.lower():
            log.info("using cached download %s of %s (sha256 verified)", target, shown)
            return target
        log.warning("cached %s does not match ingest.sha256: downloading %s again", target, shown)
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"{target.name}.", suffix=".part", dir=target.parent)
    partial = Path(name)
    log.info("downloading %s", shown)
    try:
        with os.fdopen(handle, "wb") as out:
            actual = stream_download(url, out, limits, ssl_context)
        if expected_sha256 is not None and actual != expected_sha256.lower():
            raise SourceError(
                f"{shown}: sha256 is {actual}, expected {expected_sha256} (ingest.sha256). "
                "The download is corrupt or not the file configured."
            )
        partial.replace(target)  # only a complete, verified download gets the final name
    finally:
        partial.unlink(missing_ok=True)
    log.info("downloaded %s to %s (sha256 %s)", shown, target, actual)
    return target


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


def check_archive_size(archive: Path, members: int, declared_bytes: int, limits: Limits) -> None:
    """Raise SourceError when an archive lists more members or bytes than the caps allow."""
    if members > limits.max_archive_members:
        raise SourceError(
            f"{archive}: more than {limits.max_archive_members:,} members, the cap "
            "(stages.ingest.Limits.max_archive_members)"
        )
    if declared_bytes > limits.max_extracted_bytes:
        raise SourceError(
            f"{archive}: declares {declared_bytes:,} bytes uncompressed, over the cap of "
            f"{limits.max_extracted_bytes:,} bytes (stages.ingest.Limits.max_extracted_bytes)"
        )


def member_target(archive: Path, root: Path, name: str, is_dir: bool) -> Path:
    """Where a member goes under `root` (resolved); a name landing outside it is refused."""
    target = (root / name).resolve()
    if not target.is_relative_to(root) or (target == root and not is_dir):
        raise SourceError(f"{archive}: member {name!r} escapes the archive")
    return target


def copy_capped(source: IO[bytes], target: Path, allowance: int, archive: Path, cap: int) -> int:
    """Stream `source` into `target`, counting the real bytes; returns them.

    Raises SourceError as soon as they pass `allowance` (what is left of `cap`):
    sizes in archive headers can lie.
    """
    written = 0
    with open(target, "wb") as out:
        while block := source.read(CHUNK):
            written += len(block)
            if written > allowance:
                raise SourceError(
                    f"{archive}: extracts to more than {cap:,} bytes, the cap "
                    "(stages.ingest.Limits.max_extracted_bytes)"
                )
            out.write(block)
    return written


def extract_zip(archive: Path, root: Path, limits: Limits) -> None:
    """Check a zip's member count, sizes and paths, then extract it member by member."""
    with zipfile.ZipFile(archive) as bundle:
        members = bundle.infolist()
        check_archive_size(archive, len(members), sum(m.file_size for m in members), limits)
        targets = [member_target(archive, root, m.filename, m.is_dir()) for m in members]
        written = 0
        for member, target in tqdm(
            list(zip(members, targets, strict=True)), desc=f"extract {archive.name}", unit="file"
        ):
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with bundle.open(member) as source:
                allowance = limits.max_extracted_bytes - written
                written += copy_capped(
                    source, target, allowance, archive, limits.max_extracted_bytes
                )


def extract_tar(archive: Path, root: Path, limits: Limits) -> None:
    """Check a tar's member count and sizes (one pass over its headers), then extract it.

    Only files and folders are extracted: tarfile's "data" filter refuses
    absolute or escaping paths, devices and links out of the folder, and any
    other link is refused too (a dataset has no use for one).
    """
    with tarfile.open(archive, "r:*") as bundle:
        members: list[tarfile.TarInfo] = []
        declared = 0
        for member in bundle:  # stops at the first member over a cap
            members.append(member)
            declared += member.size if member.isfile() else 0
            check_archive_size(archive, len(members), declared, limits)
        written = 0
        for member in tqdm(members, desc=f"extract {archive.name}", unit="file"):
            safe = tarfile.data_filter(member, str(root))
            if not (safe.isfile() or safe.isdir()):
                raise SourceError(
                    f"{archive}: member {member.name!r} is a link or a special file; "
                    "only files and folders are extracted"
                )
            target = member_target(archive, root, safe.name, safe.isdir())
            if safe.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = bundle.extractfile(safe)
            assert source is not None  # a regular file always has a stream
            with source:
                allowance = limits.max_extracted_bytes - written
                written += copy_capped(
                    source, target, allowance, archive, limits.max_extracted_bytes
                )


def extract(archive: Path, destination: Path, limits: Limits = LIMITS) -> Path:
    """Extract a .zip / .tar.gz safely into a fresh folder; nothing is left when it fails.

    Refused with SourceError: members escaping the folder, more members or
    bytes than `limits` allow (declared or real), links and devices, and
    archives that are corrupt.
    """
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    root = destination.resolve()
    try:
        if archive.name.endswith(".zip"):
            extract_zip(archive, root, limits)
        else:
            extract_tar(archive, root, limits)
    except (
        zipfile.BadZipFile,
        tarfile.TarError,
        zlib.error,
        lzma.LZMAError,
        EOFError,
        NotImplementedError,  # a zip compression method Python lacks
    ) as error:
        shutil.rmtree(destination)
        raise SourceError(f"{archive}: cannot be extracted: {error}") from error
    except BaseException:
        shutil.rmtree(destination)
        raise
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
        local = fetch(source, downloads, params.sha256, limits)
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
