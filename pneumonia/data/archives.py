"""Archives of a source (.zip, .tar.gz) extracted member by member, with their sizes counted:
headers can lie, so the real bytes are capped while writing."""

from __future__ import annotations

import lzma
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import IO

from tqdm import tqdm

from pneumonia.data.download import CHUNK, LIMITS, Limits, SourceError


def check_archive_size(archive: Path, members: int, declared_bytes: int, limits: Limits) -> None:
    """Raise SourceError when an archive lists more members or bytes than the caps allow."""
    if members > limits.max_archive_members:
        raise SourceError(
            f"{archive}: more than {limits.max_archive_members:,} members, the cap "
            "(pneumonia.data.download.Limits.max_archive_members)"
        )
    if declared_bytes > limits.max_extracted_bytes:
        raise SourceError(
            f"{archive}: declares {declared_bytes:,} bytes uncompressed, over the cap of "
            f"{limits.max_extracted_bytes:,} bytes "
            "(pneumonia.data.download.Limits.max_extracted_bytes)"
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
                    "(pneumonia.data.download.Limits.max_extracted_bytes)"
                )
            out.write(block)
    return written


def make_room(archive: Path, name: str, target: Path, is_dir: bool) -> None:
    """Create a member's folder, or its file's parent; SourceError naming the member when
    another member is in the way (a file and a folder of the same name)."""
    try:
        (target if is_dir else target.parent).mkdir(parents=True, exist_ok=True)
        if not is_dir and target.is_dir():
            raise IsADirectoryError(name)
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        raise SourceError(
            f"{archive}: member {name!r} collides with another member: a file and a folder "
            "of the same name"
        ) from None


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
            make_room(archive, member.filename, target, member.is_dir())
            if member.is_dir():
                continue
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
            make_room(archive, member.name, target, safe.isdir())
            if safe.isdir():
                continue
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
