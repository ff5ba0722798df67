"""`python -m pneumonia.dataset add NEW_FOLDER`: a new version of the DVC-tracked dataset.

Cheap cases run in a tiny DVC repository (eight committed real images, no pipeline); the
end-to-end case (twenty images added to a clone of the reproduced slice, the pipeline rerun
once and reviewed against `main`, as the retrain workflow does) is in
tests/integration/test_remote.py, where the clone comes from the S3 remote.

The added images are real radiographs of the committed sample, mirrored left-right and
re-encoded under patient ids the dataset does not have: new bytes, new patients, still
chest X-rays. The tests read nothing outside the repository (tests/data's README).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from pneumonia.data.splits import patient_id
from tests.conftest import REPO_ROOT
from tests.images import encode, gradient
from tests.integration.test_dataset import SOURCE, git, sh, small_dataset

pytestmark = pytest.mark.integration

DVC_FILE = SOURCE.with_suffix(".dvc")


def mirrored(source: Path) -> bytes:
    """A real radiograph, mirrored left-right and re-encoded: new bytes, still a chest X-ray."""
    with Image.open(source) as image:
        return encode(ImageOps.mirror(image.convert("L")), "JPEG", quality=90)


def content_hash(repo: Path) -> str:
    match = re.search(r"md5: (\w+\.dir)", (repo / DVC_FILE).read_text())
    assert match, (repo / DVC_FILE).read_text()
    return match.group(1)


def listing(repo: Path) -> dict[str, bytes]:
    """Every file of the dataset folder with its bytes."""
    folder = repo / SOURCE
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def snapshot(repo: Path) -> tuple[str, dict[str, bytes]]:
    return (repo / DVC_FILE).read_text(), listing(repo)


def add(repo: Path, folder: Path, *options: str) -> subprocess.CompletedProcess:
    return sh(
        repo, sys.executable, "-m", "pneumonia.dataset", "add", str(folder), "--no-fallback",
        *options,
    )  # fmt: skip


def names_in(repo: Path) -> set[str]:
    return {Path(name).name for name in listing(repo)}


def fresh_names(taken: set[str], label: str, count: int, start: int, stride: int) -> list[str]:
    """`count` file names in the Kaggle schemes whose patients are not in `taken` (names),
    their ids `stride` apart from `start`: spread over the range the sample uses, so the new
    patients form no block of their own."""
    patients = {patient_id(name) for name in taken}
    names: list[str] = []
    number = start
    while len(names) < count:
        name = (
            f"IM-{number:04d}-0001.jpeg" if label == "NORMAL" else f"person{number}_bacteria_1.jpeg"
        )
        if patient_id(name) not in patients:
            names.append(name)
        number += stride
    return names


def new_folder(
    where: Path, taken: set[str], sample: Path, per_class: int, layout: str = ""
) -> dict[str, str]:
    """`per_class` new real images per class in where/[layout/]<LABEL>/; {name: label}."""
    made = {}
    for label, start, stride in (("NORMAL", 120, 37), ("PNEUMONIA", 31, 97)):
        folder = where / layout / label
        folder.mkdir(parents=True)
        sources = sorted((sample / "train" / label).iterdir())[-per_class:]  # not the first 4
        names = fresh_names(taken, label, per_class, start, stride)
        for source, name in zip(sources, names, strict=True):
            (folder / name).write_bytes(mirrored(source))
            made[name] = label
    return made


@pytest.fixture(scope="module")
def committed(tmp_path_factory, sample_data) -> Path:
    """A repository whose dataset (four real images per class) is DVC-tracked and committed,
    with the project's params.yaml (base.labels)."""
    repo = tmp_path_factory.mktemp("dataset") / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    assert sh(repo, sys.executable, "-m", "dvc", "init", "-q").returncode == 0
    shutil.copyfile(REPO_ROOT / "params.yaml", repo / "params.yaml")
    small_dataset(sample_data, repo / SOURCE)
    assert sh(repo, "dvc", "add", str(SOURCE)).returncode == 0
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "dataset")
    return repo


@pytest.fixture
def tracked(committed, tmp_path) -> Path:
    """A private copy of `committed`, for one test to change."""
    return Path(shutil.copytree(committed, tmp_path / "repo", symlinks=True))


@pytest.mark.parametrize("layout", ["", "train"], ids=["labels-at-the-top", "under-train"])
def test_new_images_become_a_new_version_of_the_dataset(tracked, tmp_path, sample_data, layout):
    before = content_hash(tracked)
    made = new_folder(tmp_path / "new", names_in(tracked), sample_data, 2, layout)
    result = add(tracked, tmp_path / "new")
    assert result.returncode == 0, result.stderr[-2000:]
    after = content_hash(tracked)
    assert after != before
    assert f"{before} -> {after}" in result.stdout
    assert "NORMAL 2, PNEUMONIA 2" in result.stdout
    assert f"git add {DVC_FILE}" in result.stdout and "dvc push" in result.stdout
    for name, label in made.items():
        copied = tracked / SOURCE / "train" / label / name
        assert copied.read_bytes() == (tmp_path / "new" / layout / label / name).read_bytes()
    # The .dvc file records exactly the folder as it now is: DVC sees nothing to commit.
    status = sh(tracked, "dvc", "status", str(DVC_FILE))
    assert status.stdout.strip().endswith("up to date."), status.stdout
    assert "nfiles: 12" in (tracked / DVC_FILE).read_text()


def test_a_corrupt_file_refuses_the_whole_folder_and_changes_nothing(
    tracked, tmp_path, sample_data
):
    before = snapshot(tracked)
    made = new_folder(tmp_path / "new", names_in(tracked), sample_data, 2)
    corrupt = next(name for name, label in made.items() if label == "PNEUMONIA")
    path = tmp_path / "new" / "PNEUMONIA" / corrupt
    path.write_bytes(path.read_bytes()[:2000])  # truncated
    result = add(tracked, tmp_path / "new")
    assert result.returncode == 1
    assert f"PNEUMONIA/{corrupt}: corrupt" in result.stdout
    assert "nothing was added" in result.stderr and "--skip-invalid" in result.stderr
    assert snapshot(tracked) == before
    assert not sh(tracked, "git", "status", "--porcelain").stdout.strip()


def test_skip_invalid_adds_the_valid_files_and_lists_the_others(tracked, tmp_path, sample_data):
    before = content_hash(tracked)
    made = new_folder(tmp_path / "new", names_in(tracked), sample_data, 2)
    (tmp_path / "new" / "NORMAL" / "IM-9101-0001.jpeg").write_bytes(b"")
    (tmp_path / "new" / "NORMAL" / "IM-9102-0001.jpeg").write_text("a radiology report\n")
    result = add(tracked, tmp_path / "new", "--skip-invalid")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused NORMAL/IM-9101-0001.jpeg: empty" in result.stdout
    assert "refused NORMAL/IM-9102-0001.jpeg" in result.stdout
    assert "2 invalid file(s) left out" in result.stdout
    assert "NORMAL 2, PNEUMONIA 2" in result.stdout
    assert content_hash(tracked) != before
    names = names_in(tracked)
    assert set(made) <= names and not {"IM-9101-0001.jpeg", "IM-9102-0001.jpeg"} & names


def test_an_unknown_label_folder_is_a_clear_error(tracked, tmp_path, sample_data):
    before = snapshot(tracked)
    new_folder(tmp_path / "new", names_in(tracked), sample_data, 1)
    (tmp_path / "new" / "NORMAL").rename(tmp_path / "new" / "Normal")  # misspelt
    result = add(tracked, tmp_path / "new")
    assert result.returncode == 1
    assert "unknown label folder 'Normal'" in result.stderr
    assert "expected NORMAL and PNEUMONIA" in result.stderr
    assert snapshot(tracked) == before


def test_byte_identical_copies_are_skipped_and_counted(tracked, tmp_path, sample_data):
    before = content_hash(tracked)
    made = new_folder(tmp_path / "new", names_in(tracked), sample_data, 1)
    present = sorted((tracked / SOURCE / "train" / "NORMAL").iterdir())
    shutil.copyfile(present[0], tmp_path / "new" / "NORMAL" / present[0].name)  # same name
    shutil.copyfile(present[1], tmp_path / "new" / "NORMAL" / "IM-0999-0001.jpeg")  # renamed
    result = add(tracked, tmp_path / "new")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 byte-identical duplicate(s) skipped" in result.stdout
    assert f"the same bytes as train/NORMAL/{present[1].name}" in result.stdout
    assert "NORMAL 1, PNEUMONIA 1" in result.stdout
    assert content_hash(tracked) != before
    assert "IM-0999-0001.jpeg" not in names_in(tracked) and set(made) <= names_in(tracked)


def test_only_duplicates_leave_the_dataset_as_it_was(tracked, tmp_path):
    before = snapshot(tracked)
    shutil.copytree(tracked / SOURCE / "train", tmp_path / "again")
    result = add(tracked, tmp_path / "again")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "8 byte-identical duplicate(s) skipped" in result.stdout
    assert "nothing new to add" in result.stdout
    assert snapshot(tracked) == before


REFUSALS = [
    "name_exists_with_different_bytes",
    "duplicate_conflicting_labels",
    "patient_in_other_class",
    "no_patient_id",
    "not_an_image",
]


def refused_file(reason: str, normal: Path, pneumonia: Path) -> tuple[str, str, bytes, str]:
    """(name, label folder, bytes, what the refusal must say) of a file refused for `reason`,
    given a NORMAL and a PNEUMONIA file of the dataset."""
    if reason == "name_exists_with_different_bytes":
        return normal.name, "NORMAL", mirrored(normal), f"train/NORMAL/{normal.name} with other"
    if reason == "duplicate_conflicting_labels":  # ingest would quarantine both
        return (
            "IM-0998-0001.jpeg",
            "PNEUMONIA",
            normal.read_bytes(),
            f"as train/NORMAL/{normal.name}",
        )
    if reason == "patient_in_other_class":
        patient = patient_id(pneumonia.name)
        return f"{patient}_bacteria_9999.jpeg", "NORMAL", mirrored(normal), f"patient {patient} "
    if reason == "no_patient_id":
        return "scan 7.jpeg", "NORMAL", mirrored(normal), "cannot tell its patient"
    assert reason == "not_an_image"
    return "IM-0997-0001.jpeg", "NORMAL", b"radiology report\n" * 50, "("


@pytest.mark.parametrize("reason", REFUSALS)
def test_a_file_that_does_not_fit_the_dataset_is_refused_with_its_reason(
    tracked, tmp_path, sample_data, reason
):
    normal = sorted((tracked / SOURCE / "train" / "NORMAL").iterdir())[0]
    pneumonia = sorted((tracked / SOURCE / "train" / "PNEUMONIA").iterdir())[0]
    name, label, data, detail = refused_file(reason, normal, pneumonia)
    new_folder(tmp_path / "new", names_in(tracked), sample_data, 1)  # valid ones beside it
    (tmp_path / "new" / label / name).write_bytes(data)
    before = snapshot(tracked)
    result = add(tracked, tmp_path / "new")
    assert result.returncode == 1, result.stdout
    line = f"refused {label}/{name}: "
    (refused,) = [text for text in result.stdout.splitlines() if line in text]
    assert refused.strip().startswith(line + reason), refused
    assert detail in refused
    assert "refused" not in result.stdout.replace(refused, "")  # only that one
    assert snapshot(tracked) == before


def test_an_image_that_is_not_a_radiograph_but_decodes_is_added_as_ingest_would(
    tracked, tmp_path, sample_data
):
    # The screening of what is a chest X-ray is the model's gate, not ingest's: the command
    # refuses what ingest would quarantine, no more.
    new_folder(tmp_path / "new", names_in(tracked), sample_data, 1)
    png = encode(Image.fromarray(gradient()), "PNG")
    (tmp_path / "new" / "NORMAL" / "IM-0996-0001.png").write_bytes(png)
    result = add(tracked, tmp_path / "new")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "NORMAL 2, PNEUMONIA 1" in result.stdout
