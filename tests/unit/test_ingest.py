"""Ingest's pure functions: patient ids, quarantine, duplicates, leak-free splits, sources."""

import hashlib
import http.server
import tarfile
import threading
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumonia.config import IngestParams
from stages.ingest import (
    Candidate,
    SourceError,
    candidates_from_folder,
    candidates_from_npz,
    collapse_duplicates,
    id_blocks,
    patient_id,
    resolve_source,
    split_by_patient,
    subsample,
    validate,
)
from tests.images import encode, gradient

LABELS = ("NORMAL", "PNEUMONIA")


@pytest.mark.parametrize(
    ("file_name", "patient"),
    [
        ("person1234_bacteria_5678.jpeg", "person1234"),
        ("person1234_virus_99.jpeg", "person1234"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("NORMAL2-IM-0587-0001-0002.jpeg", "NORMAL2-IM-0587"),
        ("scan_2024_07.png", "scan_2024_07"),  # unknown scheme: its own patient
    ],
)
def test_patient_id_for_every_naming_scheme(file_name, patient):
    assert patient_id(file_name) == patient


def test_normal2_and_im_prefixes_are_different_patients():
    assert patient_id("NORMAL2-IM-0115-0001.jpeg") != patient_id("IM-0115-0001.jpeg")


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)), "JPEG")


def candidate(name: str, data: bytes, label: str = "NORMAL", split: str = "train") -> Candidate:
    return Candidate(f"{split}/{label}/{name}", split, label, data)


def test_each_bad_file_kind_is_quarantined_with_its_reason_and_the_png_accepted():
    good = jpeg(0)
    png = encode(Image.fromarray(gradient()), "PNG")
    candidates = [
        candidate("IM-0001-0001.jpeg", good),
        candidate("IM-0002-0001.jpeg", good[: len(good) // 2]),  # truncated JPEG
        candidate("IM-0003-0001.jpeg", b""),
        candidate("IM-0004-0001.jpeg", b"this is a text file\n"),
        candidate("IM-0005-0001.jpeg", png),  # a PNG named .jpeg is an image all the same
    ]
    accepted, quarantined = validate(candidates)
    assert [row["file"] for row in accepted] == [
        "train/NORMAL/IM-0001-0001.jpeg",
        "train/NORMAL/IM-0005-0001.jpeg",
    ]
    reasons = {row["file"].split("/")[-1]: row["reason"] for row in quarantined}
    assert reasons == {
        "IM-0002-0001.jpeg": "corrupt",
        "IM-0003-0001.jpeg": "empty",
        "IM-0004-0001.jpeg": "not_an_image",
    }
    assert all(row["detail"] for row in quarantined)


def test_byte_identical_files_are_collapsed_and_reported():
    same = jpeg(1)
    accepted, _ = validate(
        [
            candidate("IM-0001-0001.jpeg", same),
            candidate("IM-0001-0002.jpeg", same),
            candidate("IM-0002-0001.jpeg", jpeg(2)),
        ]
    )
    kept, quarantined, groups = collapse_duplicates(accepted)
    assert [row["file"] for row in kept] == [
        "train/NORMAL/IM-0001-0001.jpeg",
        "train/NORMAL/IM-0002-0001.jpeg",
    ]
    assert quarantined == []
    assert groups == [
        {
            "sha256": hashlib.sha256(same).hexdigest(),
            "files": ["train/NORMAL/IM-0001-0001.jpeg", "train/NORMAL/IM-0001-0002.jpeg"],
            "kept": "train/NORMAL/IM-0001-0001.jpeg",
        }
    ]


def test_duplicates_with_conflicting_labels_are_all_quarantined():
    same = jpeg(3)
    accepted, _ = validate(
        [
            candidate("IM-0001-0001.jpeg", same, "NORMAL"),
            candidate("person1_virus_1.jpeg", same, "PNEUMONIA"),
        ]
    )
    kept, quarantined, groups = collapse_duplicates(accepted)
    assert kept == []
    assert {row["reason"] for row in quarantined} == {"duplicate_conflicting_labels"}
    assert groups[0]["kept"] is None


def synthetic_manifest(n_patients: int = 300, seed: int = 0) -> pd.DataFrame:
    """Patients with 1-4 images each, ~3/4 of them PNEUMONIA."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = "PNEUMONIA" if rng.random() < 0.75 else "NORMAL"
        for i in range(rng.integers(1, 5)):
            rows.append(
                {
                    "file": f"train/{label}/p{p}_{i}.jpeg",
                    "label": label,
                    "patient_id": f"p{p}",
                    "source_split": "train",
                }
            )
    return pd.DataFrame(rows)


def test_no_patient_is_in_two_splits():
    manifest = synthetic_manifest()
    manifest["split"] = split_by_patient(manifest, 0.15, 0.15, seed=7)
    splits_per_patient = manifest.groupby("patient_id")["split"].nunique()
    assert splits_per_patient.max() == 1
    assert set(manifest["split"]) == {"train", "val", "test"}


def test_splits_are_stratified_and_sized_by_params():
    manifest = synthetic_manifest(n_patients=1000)
    manifest["split"] = split_by_patient(manifest, 0.2, 0.1, seed=1)
    patients = manifest.groupby("split")["patient_id"].nunique() / 1000
    assert patients["val"] == pytest.approx(0.2, abs=0.01)
    assert patients["test"] == pytest.approx(0.1, abs=0.01)
    prevalence = manifest.groupby("split")["label"].apply(lambda s: (s == "PNEUMONIA").mean())
    assert prevalence.max() - prevalence.min() < 0.06


def test_split_is_seeded():
    manifest = synthetic_manifest()
    first = split_by_patient(manifest, 0.15, 0.15, seed=3)
    assert first.equals(split_by_patient(manifest, 0.15, 0.15, seed=3))
    assert not first.equals(split_by_patient(manifest, 0.15, 0.15, seed=4))


def test_official_test_is_kept_and_a_small_official_val_joins_the_train_pool():
    manifest = synthetic_manifest(200)
    manifest.loc[manifest.index[:10], "source_split"] = "val"  # 10 images: too few to trust
    test_rows = synthetic_manifest(50, seed=9)
    test_rows["patient_id"] = "t" + test_rows["patient_id"]
    test_rows["source_split"] = "test"
    manifest = pd.concat([manifest, test_rows], ignore_index=True)
    split = split_by_patient(manifest, 0.15, 0.15, seed=0, min_official_val_images=100)
    assert (split[manifest["source_split"] == "test"] == "test").all()
    assert not (split[manifest["source_split"] != "test"] == "test").any()
    assert (split == "val").sum() > 10  # carved from the pool, not the 10 official images


def test_train_images_of_a_patient_in_the_official_test_are_excluded():
    manifest = pd.DataFrame(
        {
            "file": [
                "train/PNEUMONIA/person1_virus_1.jpeg",
                "test/PNEUMONIA/person1_virus_2.jpeg",
                "train/NORMAL/IM-0001-0001.jpeg",
                "train/NORMAL/IM-0002-0001.jpeg",
            ],
            "label": ["PNEUMONIA", "PNEUMONIA", "NORMAL", "NORMAL"],
            "patient_id": ["person1", "person1", "IM-0001", "IM-0002"],
            "source_split": ["train", "test", "train", "train"],
        }
    )
    split = split_by_patient(manifest, 0.5, 0.2, seed=0)
    assert list(split[:2]) == ["excluded", "test"]


def test_subsample_is_stratified_and_seeded():
    candidates = [candidate(f"IM-{i:04d}-0001.jpeg", b"x", "NORMAL") for i in range(100)] + [
        candidate(f"person{i}_virus_1.jpeg", b"x", "PNEUMONIA") for i in range(300)
    ]
    subset = subsample(candidates, 40, seed=0)
    assert len(subset) == 40
    assert sum(c.label == "NORMAL" for c in subset) == 10
    assert subset == subsample(candidates, 40, seed=0)


# ---------------------------------------------------------------- sources


def make_layout(root: Path, with_test: bool = False) -> Path:
    for split in ["train", "test"] if with_test else ["train"]:
        for label in LABELS:
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                (folder / f"IM-{i:04d}-0001.jpeg").write_bytes(jpeg(i + 10 * len(label)))
    return root


def params(source: str, sha256: str | None = None) -> IngestParams:
    return IngestParams(
        source=source,
        sha256=sha256,
        shift_fraction=0.0,
        val_fraction=0.2,
        test_fraction=0.2,
        min_official_val_images=0,
        max_images=None,
    )


def test_a_folder_source_lists_every_file(tmp_path):
    root = make_layout(tmp_path / "chest_xray", with_test=True)
    found = candidates_from_folder(resolve_source(params(str(root)), tmp_path / "dl"), LABELS)
    assert len(found) == 12
    assert {c.source_split for c in found} == {"train", "test"}


def test_a_missing_source_says_what_was_looked_for_and_how_to_set_it(tmp_path):
    with pytest.raises(SourceError) as error:
        resolve_source(params(str(tmp_path / "nowhere")), tmp_path / "dl")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message
    assert "ingest.source" in message and "dvc exp run --set-param" in message


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_an_archive_is_verified_and_extracted(tmp_path, kind):
    layout = make_layout(tmp_path / "chest_xray")
    archive = tmp_path / f"chest_xray.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as bundle:
            for file in layout.rglob("*.jpeg"):
                bundle.write(file, file.relative_to(tmp_path))
    else:
        with tarfile.open(archive, "w:gz") as bundle:
            bundle.add(layout, arcname="chest_xray")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    root = resolve_source(params(str(archive), digest), tmp_path / "dl")
    assert root.name == "chest_xray"
    assert len(candidates_from_folder(root, LABELS)) == 6


def test_an_archive_with_the_wrong_sha256_is_refused(tmp_path):
    archive = tmp_path / "chest_xray.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("chest_xray/train/NORMAL/IM-0001-0001.jpeg", jpeg(0))
    with pytest.raises(SourceError, match="sha256"):
        resolve_source(params(str(archive), "0" * 64), tmp_path / "dl")


def test_an_http_source_is_downloaded_once_and_verified(tmp_path):
    layout = make_layout(tmp_path / "site" / "chest_xray")
    archive = tmp_path / "site" / "chest_xray.tar.gz"
    with tarfile.open(archive, "w:gz") as bundle:
        bundle.add(layout, arcname="chest_xray")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "site"))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *args: None  # quiet
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/chest_xray.tar.gz"
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        root = resolve_source(params(url, digest), tmp_path / "dl")
        assert len(candidates_from_folder(root, LABELS)) == 6
        assert (tmp_path / "dl" / "chest_xray.tar.gz").read_bytes() == archive.read_bytes()
    finally:
        server.shutdown()


def synthetic_npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in [("train", 6), ("val", 2), ("test", 3)]:
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return path


def test_a_pneumoniamnist_npz_must_match_medmnists_md5(tmp_path):
    fake = synthetic_npz(tmp_path / "pneumoniamnist.npz")
    with pytest.raises(SourceError, match="md5"):
        resolve_source(params(str(fake)), tmp_path / "dl")
    renamed = synthetic_npz(tmp_path / "chest.npz")
    with pytest.raises(SourceError, match="not a PneumoniaMNIST release file"):
        resolve_source(params(str(renamed)), tmp_path / "dl")


def test_pneumoniamnist_arrays_become_decodable_images_in_their_official_splits(tmp_path):
    found = candidates_from_npz(synthetic_npz(tmp_path / "pneumoniamnist.npz"), LABELS)
    assert [sum(c.source_split == s for c in found) for s in ("train", "val", "test")] == [6, 2, 3]
    assert found[1].label == "PNEUMONIA" and found[0].label == "NORMAL"
    accepted, quarantined = validate(found)
    assert len(accepted) == 11 and quarantined == []
    assert {patient_id(c.relative_path) for c in found}.__len__() == 11


def test_id_blocks_hold_out_the_lowest_and_highest_ids_of_each_series():
    patients = [f"person{i}" for i in range(1, 101)] + [f"IM-{i:04d}" for i in range(1, 51)]
    early, late = id_blocks([*patients, "no-number-here"], 0.1)
    assert early == {f"person{i}" for i in range(1, 11)} | {f"IM-{i:04d}" for i in range(1, 6)}
    assert late == {f"person{i}" for i in range(91, 101)} | {f"IM-{i:04d}" for i in range(46, 51)}
    assert id_blocks(patients, 0.0) == (set(), set())


def test_shift_blocks_are_held_out_before_the_random_carve():
    manifest = synthetic_manifest(n_patients=1000)
    split = split_by_patient(manifest, 0.15, 0.15, seed=3, shift_fraction=0.05)
    manifest["split"] = split
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
    number = manifest["patient_id"].str[1:].astype(int)
    assert set(number[split == "early"]) == set(range(50))
    assert set(number[split == "late"]) == set(range(950, 1000))
    assert set(split) == {"train", "val", "test", "early", "late"}
    # The random carve does not depend on the blocks' seed-free choice.
    again = split_by_patient(manifest, 0.15, 0.15, seed=4, shift_fraction=0.05)
    assert (again[split == "early"] == "early").all()
