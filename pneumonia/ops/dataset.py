"""Put the versioned dataset in place: data/source/chest-xray-pneumonia, as its .dvc file says.

The dataset is a DVC-tracked folder: its content hash is committed in
`data/source/chest-xray-pneumonia.dvc`, its bytes live in the DVC remote. This
module makes the folder match that hash, trying in order:

1. the workspace already matches (nothing to do);
2. the local DVC cache (`dvc checkout`);
3. the configured DVC remote (`dvc pull`);
4. a local copy given with --fallback (default: ../shared/data/chest-xray-pneumonia),
   copied in and accepted only if it hashes to the committed value, then put in the
   DVC cache so that `dvc push` can publish it.

Anything else is an error that names the remote and the fallback folder.

    python -m pneumonia.dataset                 # what `make repro` runs first
    python -m pneumonia.dataset --fallback /data/chest_xray

`add` makes a new version of the dataset from a folder of labelled images (docs/retraining.md):

    python -m pneumonia.dataset add NEW_FOLDER [--skip-invalid] [--no-fallback]

NEW_FOLDER holds NORMAL/ and PNEUMONIA/ (the labels of params.yaml's base.labels), directly or
under train/. Every file is checked as ingest checks it (`pneumonia.data.quality.validate`,
byte-identical copies with `collapse_duplicates`), and against the dataset: a name that
carries no patient id, a name already there with other bytes, the same bytes or the same
patient under the other label are refused. Any refusal leaves the dataset untouched unless
--skip-invalid; byte-identical copies of files already there are skipped. The rest is copied
into train/<LABEL>/ and `dvc add` records the new content hash in the .dvc file.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm import tqdm

from pneumonia import paths
from pneumonia.config import load_params
from pneumonia.data.download import SourceError, file_digest
from pneumonia.data.quality import collapse_duplicates, validate
from pneumonia.data.sources import OFFICIAL_SPLITS, Candidate, find_layout_root
from pneumonia.data.splits import patient_id

log = logging.getLogger("dataset")

DEFAULT_FALLBACK = Path("..") / "shared" / "data" / "chest-xray-pneumonia"


class DatasetError(RuntimeError):
    """The dataset could not be put in place; the message says where it was looked for."""


def dvc(*args: str) -> subprocess.CompletedProcess:
    """`dvc ARGS` from the interpreter's own environment, output captured."""
    command = [sys.executable, "-m", "dvc", *args]
    return subprocess.run(command, capture_output=True, text=True)


def state(target: Path = paths.SOURCE) -> str:
    """'ok', 'not in cache' (right bytes, not cached yet), 'deleted' or 'modified'."""
    result = dvc("status", "--json", str(target.with_suffix(".dvc")))
    if result.returncode != 0:
        raise DatasetError(f"dvc status failed: {result.stderr.strip()[-500:]}")
    changes = json.loads(result.stdout or "{}")
    for entry in changes.get(str(target.with_suffix(".dvc")), []):
        if isinstance(entry, dict) and "changed outs" in entry:
            return str(entry["changed outs"].get(target.as_posix(), "modified"))
    return "ok"


def remote_url() -> str:
    """The default DVC remote and its URL, for messages."""
    result = dvc("remote", "default")
    name = result.stdout.strip()
    if not name:
        return "no default DVC remote"
    url = dvc("config", f"remote.{name}.url").stdout.strip()
    return f"DVC remote {name!r} ({url})"


def from_fallback(folder: Path, target: Path) -> None:
    """Copy `folder` in; keep it only if DVC hashes it to the committed value.

    `dvc status` cannot tell right from wrong bytes without a cache, so the copy is
    committed to the cache (DVC's own hashing) and the .dvc file compared before and
    after: a different hash is put back, and the copy removed.
    """
    dvc_file = target.with_suffix(".dvc")
    committed = dvc_file.read_text()
    log.info("copying %s into %s", folder, target)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(folder, target)
    result = dvc("commit", "--force", str(dvc_file))
    found = dvc_file.read_text()
    if result.returncode != 0 or found != committed:
        dvc_file.write_text(committed)
        shutil.rmtree(target)
        raise DatasetError(
            f"{folder} is not the dataset {dvc_file} names: its content hash differs "
            f"({hash_of(found)} against the committed {hash_of(committed)}). Point --fallback "
            f"at an unmodified copy, or commit the new data with `dvc add {target}` "
            "(a reviewable change of the hash)."
        )


def hash_of(dvc_text: str) -> str:
    """The md5 an .dvc file records for its output."""
    outs = yaml.safe_load(dvc_text).get("outs") or [{}]
    return str(outs[0].get("md5", "?"))


def ensure(target: Path = paths.SOURCE, fallback: Path | None = DEFAULT_FALLBACK) -> str:
    """Make `target` match its .dvc file; returns where the bytes came from."""
    if not target.with_suffix(".dvc").is_file():
        raise DatasetError(f"{target.with_suffix('.dvc')} is missing: nothing says what to fetch")
    if state(target) == "ok":
        return "workspace"
    if dvc("checkout", str(target.with_suffix(".dvc"))).returncode == 0 and state(target) == "ok":
        return "DVC cache"
    log.info("pulling %s from the %s", target, remote_url())
    pulled = dvc("pull", str(target.with_suffix(".dvc")))
    if pulled.returncode == 0 and state(target) == "ok":
        return "DVC remote"
    if fallback is not None and (fallback / "train").is_dir():
        from_fallback(fallback, target)
        return f"{fallback} (verified against the committed hash)"
    raise DatasetError(
        f"the dataset {target} is neither in the {remote_url()} "
        f"nor at {fallback if fallback is not None else '(no fallback folder given)'}. "
        "Configure the remote and its credentials (README, 'Remote storage'), or pass "
        "--fallback PATH to a copy in the Kaggle chest-xray-pneumonia layout."
    )


# Added images join the official training split: ingest carves validation and test from it
# by patient, so a new patient lands in whichever split the seeded carve gives it.
ADDED_SPLIT = "train"


@dataclass(frozen=True)
class Refused:
    """A file of the new folder that is not added, and why (a short code, like ingest's)."""

    file: str  # <LABEL>/<name>, as found in the new folder
    reason: str
    detail: str


@dataclass
class Addition:
    """What `add` did: the content hash before and after, and what it added or left out."""

    old_hash: str
    new_hash: str
    added: Counter[str] = field(default_factory=Counter)  # files per label
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (file, what it copies)
    refused: list[Refused] = field(default_factory=list)  # left out (only with --skip-invalid)


class AdditionRefused(DatasetError):
    """Some files of the new folder may not be added; nothing was."""

    def __init__(self, refused: list[Refused], valid: int) -> None:
        """`refused`: every file left out and why; `valid`: how many could have been added."""
        hint = (
            f"--skip-invalid adds the {valid} other new file(s) and leaves these out"
            if valid
            else "no file of the folder could be added"
        )
        super().__init__(
            f"{len(refused)} file(s) refused; nothing was added and the dataset is unchanged "
            f"({hint})"
        )
        self.refused = refused


def label_folders(folder: Path, labels: tuple[str, ...]) -> dict[str, Path]:
    """The label folders of NEW_FOLDER: <folder>/<LABEL>/ or <folder>/train/<LABEL>/.

    Any other folder is an error (a misspelt label would otherwise be dropped in
    silence), and so are val/ and test/: ingest carves those from train by patient.
    Loose files beside the label folders (a README) are ignored with a warning.
    """
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder")
    root = folder
    if (folder / ADDED_SPLIT).is_dir():
        others = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != ADDED_SPLIT)
        if others:
            raise DatasetError(
                f"{folder}: unexpected folder(s) {', '.join(others)} beside {ADDED_SPLIT}/. "
                f"New images join the dataset's {ADDED_SPLIT}/ split (ingest draws validation "
                f"and test from it by patient): put them in {ADDED_SPLIT}/<LABEL>/ or <LABEL>/"
            )
        root = folder / ADDED_SPLIT
    found: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and entry.name in labels:
            found[entry.name] = entry
        elif entry.is_dir():
            hint = f" (new images join {ADDED_SPLIT}/)" if entry.name in OFFICIAL_SPLITS else ""
            raise DatasetError(
                f"{entry}: unknown label folder {entry.name!r}{hint}; "
                f"expected {' and '.join(labels)} (params.yaml base.labels)"
            )
        else:
            log.warning("ignoring %s: not in a label folder", entry)
    for path in found.values():
        nested = sorted(p.name for p in path.iterdir() if p.is_dir())
        if nested:
            raise DatasetError(
                f"{path}: folder(s) {', '.join(nested)} inside a label folder; "
                "images must sit directly in it"
            )
    if not any(any(p.is_file() for p in path.iterdir()) for path in found.values()):
        raise DatasetError(
            f"{folder}: no files in {' or '.join(f'{label}/' for label in labels)} "
            f"(directly or under {ADDED_SPLIT}/)"
        )
    return found


def new_candidates(folders: dict[str, Path]) -> list[Candidate]:
    """Every file of the label folders, read once, as ingest's candidates in train/<LABEL>/."""
    files = [(label, p) for label, folder in folders.items() for p in sorted(folder.iterdir())]
    return [
        Candidate(f"{ADDED_SPLIT}/{label}/{path.name}", ADDED_SPLIT, label, path.read_bytes())
        for label, path in tqdm(files, desc="read new images", unit="img")
    ]


def dataset_index(target: Path, labels: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """Every file of the dataset: <split>/<LABEL>/<name> -> (label, sha256)."""
    files = [
        (label, path)
        for split in OFFICIAL_SPLITS
        for label in labels
        if (target / split / label).is_dir()
        for path in sorted((target / split / label).iterdir())
        if path.is_file()
    ]
    return {
        path.relative_to(target).as_posix(): (label, file_digest(path, "sha256"))
        for label, path in tqdm(files, desc="hash the dataset", unit="img")
    }


def layout_root(target: Path) -> Path:
    """The folder of the dataset that holds train/, as ingest finds it (`find_layout_root`):
    the dataset itself, or a folder inside it when it was copied in one level down."""
    try:
        return find_layout_root(target)
    except SourceError:
        return target  # no train/ yet: the first images make it


def has_patient_id(file_name: str) -> bool:
    """Whether the name follows one of the Kaggle naming schemes `patient_id` reads.

    Any other name is its own patient to ingest, so the split could not keep the patient's
    other images beside it.
    """
    return patient_id(file_name) != Path(file_name).name.rsplit(".", 1)[0]


def screen_additions(
    candidates: list[Candidate], existing: dict[str, tuple[str, str]]
) -> tuple[list[Candidate], list[tuple[str, str]], list[Refused]]:
    """(files to add, byte-identical duplicates skipped, refused files), in that order.

    Each file is decoded as ingest decodes it (`validate`); copies within the folder are
    collapsed as ingest collapses them (`collapse_duplicates`, conflicting labels refused);
    then each is checked against the dataset: its name must carry a patient id, a name
    already there must hold the same bytes, the same bytes or the same patient may not sit
    under the other label. Same bytes under the same label: a duplicate, skipped.
    """
    shown = {c.relative_path: c.relative_path.split("/", 1)[1] for c in candidates}
    accepted, quarantined = validate(candidates)
    kept, conflicting, groups = collapse_duplicates(accepted)
    refused = [
        Refused(shown[row["file"]], row["reason"], row["detail"])
        for row in [*quarantined, *conflicting]
    ]
    duplicates = [
        (shown[copy], f"the same bytes as {shown[group['kept']]} in the new folder")
        for group in groups
        if group["kept"] is not None
        for copy in group["files"]
        if copy != group["kept"]
    ]
    by_name: dict[str, list[tuple[str, str, str]]] = {}
    by_hash: dict[str, list[tuple[str, str]]] = {}
    patients: dict[str, set[str]] = {}
    for relative, (label, digest) in existing.items():
        name = relative.rsplit("/", 1)[1]
        by_name.setdefault(name, []).append((relative, label, digest))
        by_hash.setdefault(digest, []).append((relative, label))
        patients.setdefault(patient_id(name), set()).add(label)
    for row in kept:  # the folder's own patients too: one patient, one label
        patients.setdefault(patient_id(row["file"]), set()).add(row["label"])

    to_add: list[str] = []
    for row in kept:
        file, label, digest = shown[row["file"]], row["label"], row["sha256"]
        name = file.rsplit("/", 1)[1]
        same_name = by_name.get(name, [])
        other_bytes = [relative for relative, _, d in same_name if d != digest]
        copies = by_hash.get(digest, [])
        crossing = [relative for relative, other in copies if other != label]
        patient = patient_id(name)
        if not has_patient_id(name):
            refused.append(
                Refused(
                    file,
                    "no_patient_id",
                    "the name follows none of the dataset's naming schemes (personN_bacteria_M,"
                    " personN_virus_M, IM-NNNN-MMMM, NORMAL2-IM-NNNN-MMMM), so ingest cannot "
                    "tell its patient and would split it apart from the patient's other images",
                )
            )
        elif other_bytes:
            refused.append(
                Refused(
                    file,
                    "name_exists_with_different_bytes",
                    f"the dataset already has {', '.join(other_bytes)} with other bytes",
                )
            )
        elif crossing:
            refused.append(
                Refused(
                    file,
                    "duplicate_conflicting_labels",
                    f"the same bytes are in the dataset as {', '.join(crossing)}",
                )
            )
        elif copies:
            duplicates.append((file, f"the same bytes as {copies[0][0]} in the dataset"))
        elif len(patients[patient]) > 1:
            refused.append(
                Refused(
                    file,
                    "patient_in_other_class",
                    f"patient {patient} has images under both "
                    f"{' and '.join(sorted(patients[patient]))} (dataset and new folder)",
                )
            )
        else:
            to_add.append(row["file"])
    chosen = set(to_add)
    ordered = [c for c in candidates if c.relative_path in chosen]
    return ordered, sorted(duplicates), sorted(refused, key=lambda r: r.file)


def copy_in(files: list[Candidate], target: Path) -> list[Path]:
    """Write each file to target/train/<LABEL>/<name>, never over an existing one.

    On any failure the files written so far are removed and the error raised.
    """
    written: list[Path] = []
    try:
        for candidate in tqdm(files, desc="copy into the dataset", unit="img"):
            destination = target / candidate.relative_path
            destination.parent.mkdir(parents=True, exist_ok=True)
            with open(destination, "xb") as handle:  # "x": an existing file is an error
                written.append(destination)
                handle.write(candidate.data)
    except OSError:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


def add(
    folder: Path,
    target: Path = paths.SOURCE,
    fallback: Path | None = DEFAULT_FALLBACK,
    skip_invalid: bool = False,
) -> Addition:
    """Add the images of `folder` to the dataset at `target` as a new DVC version.

    All or nothing: AdditionRefused (the dataset untouched) when any file is refused,
    unless `skip_invalid`. Returns the old and new content hash and the counts.
    """
    try:
        labels = tuple(load_params().base.labels)
    except (OSError, ValueError) as error:  # ParamsError is a ValueError
        raise DatasetError(f"the labels come from params.yaml (base.labels): {error}") from None
    if folder.resolve().is_relative_to(target.resolve()):
        raise DatasetError(f"{folder} is inside the dataset {target}")
    folders = label_folders(folder, labels)
    origin = ensure(target, fallback)
    log.info("%s is in place, from the %s", target, origin)
    dvc_file = target.with_suffix(".dvc")
    committed = dvc_file.read_text()
    candidates = new_candidates(folders)
    log.info("%d file(s) found in %s", len(candidates), folder)
    root = layout_root(target)
    files, duplicates, refused = screen_additions(candidates, dataset_index(root, labels))
    if refused and not skip_invalid:
        raise AdditionRefused(refused, len(files))
    if refused and not files:
        raise AdditionRefused(refused, 0)
    addition = Addition(hash_of(committed), hash_of(committed), Counter(), duplicates, refused)
    if not files:
        return addition
    written = copy_in(files, root)
    log.info("dvc add %s (%d new file(s))", target, len(written))
    result = dvc("add", str(target))
    if result.returncode != 0:
        for path in written:
            path.unlink(missing_ok=True)
        dvc_file.write_text(committed)
        raise DatasetError(f"dvc add {target} failed: {result.stderr.strip()[-500:]}")
    addition.new_hash = hash_of(dvc_file.read_text())
    addition.added = Counter(c.label for c in files)
    return addition


def addition_report(addition: Addition, target: Path = paths.SOURCE) -> str:
    """What `add` prints: the counts, the hashes, what was left out, and what to run next."""
    lines = [f"  refused {r.file}: {r.reason} ({r.detail})" for r in addition.refused]
    lines += [f"  skipped {file}: {why}" for file, why in addition.duplicates]
    if addition.duplicates:
        lines.append(f"{len(addition.duplicates)} byte-identical duplicate(s) skipped")
    if addition.refused:
        lines.append(f"{len(addition.refused)} invalid file(s) left out (--skip-invalid)")
    if not addition.added:
        lines.append(f"nothing new to add: {target} is unchanged ({addition.old_hash})")
        return "\n".join(lines) + "\n"
    counts = ", ".join(f"{label} {n}" for label, n in sorted(addition.added.items()))
    dvc_file = target.with_suffix(".dvc")
    lines += [
        f"added {sum(addition.added.values())} file(s) to {target}: {counts}",
        f"content hash ({dvc_file}): {addition.old_hash} -> {addition.new_hash}",
        "next:",
        f"  git add {dvc_file} && git commit -m 'Dataset: {counts} added'",
        "  dvc push    # the new version to the DVC remote",
        "  dvc repro   # retrain from ingest on it",
    ]
    return "\n".join(lines) + "\n"


def source_options(parser: argparse.ArgumentParser, after_command: bool = False) -> None:
    """--fallback and --no-fallback: where the dataset may come from when it is not in place.

    `after_command`: the same options on a subcommand, with no defaults of their own, so
    that they may come before or after it.
    """
    fallback: object = argparse.SUPPRESS if after_command else DEFAULT_FALLBACK
    no_fallback: object = argparse.SUPPRESS if after_command else False
    parser.add_argument(
        "--fallback",
        type=Path,
        default=fallback,
        help="a local copy to verify and use when the remote does not have the data",
    )
    parser.add_argument(
        "--no-fallback",
        action="store_true",
        default=no_fallback,
        help="the DVC cache or remote only (CI runners)",
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: put the dataset in place (exit 1 when it cannot be), or `add` to it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="{add}")
    adding = commands.add_parser(
        "add",
        help="add labelled images to the dataset as a new version (docs/retraining.md)",
        description="Add the images of NEW_FOLDER (NORMAL/ and PNEUMONIA/, directly or under "
        "train/) to the dataset's train/ split and `dvc add` it: all or nothing.",
    )
    adding.add_argument("folder", type=Path, metavar="NEW_FOLDER")
    adding.add_argument(
        "--skip-invalid",
        action="store_true",
        help="add the valid files and list the refused ones, instead of adding nothing",
    )
    source_options(adding, after_command=True)
    args = parser.parse_args(argv)
    fallback = None if args.no_fallback else args.fallback
    if args.command == "add":
        return main_add(args.folder, fallback, args.skip_invalid)
    try:
        origin = ensure(paths.SOURCE, fallback)
    except DatasetError as error:
        log.error("%s", error)
        return 1
    log.info("%s is in place, from the %s", paths.SOURCE, origin)
    return 0


def main_add(folder: Path, fallback: Path | None, skip_invalid: bool) -> int:
    """`add`: 0 when the folder was added (or held nothing new), 1 when nothing was added."""
    try:
        addition = add(folder, paths.SOURCE, fallback, skip_invalid)
    except AdditionRefused as error:
        for refused in error.refused:
            print(f"  refused {refused.file}: {refused.reason} ({refused.detail})")
        log.error("%s", error)
        return 1
    except DatasetError as error:
        log.error("%s", error)
        return 1
    sys.stdout.write(addition_report(addition))
    return 0


if __name__ == "__main__":
    sys.exit(main())
