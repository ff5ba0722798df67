"""Ingest's pure functions: patient ids, quarantine, duplicates, leak-free splits, sources.

Downloads are tested against a real server on 127.0.0.1 (tests/loopback.py)
that lies about lengths, redirects and stalls.
"""

import hashlib
import http.client
import io
import logging
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumonia.config import IngestParams
from pneumonia.data.archives import copy_capped, extract
from pneumonia.data.download import (
    Limits,
    SafeRedirectHandler,
    SourceError,
    download,
    download_path,
    redact_url,
)
from pneumonia.data.quality import collapse_duplicates, subsample, validate
from pneumonia.data.report import build_report
from pneumonia.data.sources import (
    Candidate,
    candidates_from_folder,
    candidates_from_npz,
    resolve_source,
)
from pneumonia.data.splits import id_blocks, patient_id, split_by_patient
from tests import hostile, loopback
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


def test_hostile_files_are_quarantined_and_ingest_goes_on():
    # Each of these once raised out of Pillow (ValueError, struct.error, ...) or took minutes.
    candidates = [candidate("IM-0001-0001.jpeg", jpeg(0))] + [
        candidate(f"IM-{index:04d}-0001.jpeg", builder())
        for index, (builder, _) in enumerate(hostile.PAYLOADS.values(), start=2)
    ]
    accepted, quarantined = validate(candidates)
    assert len(accepted) + len(quarantined) == len(candidates)
    assert "train/NORMAL/IM-0001-0001.jpeg" in [row["file"] for row in accepted]
    reasons = {row["reason"] for row in quarantined}
    assert reasons <= {"corrupt", "too_complex", "unsupported_format", "not_an_image"}
    assert {"too_complex", "unsupported_format", "corrupt"} <= reasons


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


def params(source: str, sha256: str | None = None, require_sha256: bool = False) -> IngestParams:
    return IngestParams(
        source=source,
        sha256=sha256,
        require_sha256=require_sha256,
        shift_fraction=0.0,
        val_fraction=0.2,
        test_fraction=0.2,
        min_official_val_images=0,
        max_images=None,
    )


def test_a_folder_source_lists_every_file(tmp_path):
    root = make_layout(tmp_path / "chest_xray", with_test=True)
    source = resolve_source(params(str(root)), tmp_path / "dl")
    found = candidates_from_folder(source.location, LABELS)
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
    source = resolve_source(params(str(archive), digest), tmp_path / "dl")
    root = source.location
    assert root.name == "chest_xray" and source.verified_by == "ingest.sha256"
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
    with loopback.serve() as server:
        server.routes["/chest_xray.tar.gz"] = loopback.body(archive.read_bytes())
        url = server.url("/chest_xray.tar.gz")
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        for _ in range(2):
            source = resolve_source(params(url, digest), tmp_path / "dl")
            assert len(candidates_from_folder(source.location, LABELS)) == 6
            assert source.verified_by == "ingest.sha256"
        assert download_path(url, tmp_path / "dl").read_bytes() == archive.read_bytes()
        assert server.hits["/chest_xray.tar.gz"] == 1


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


# ---------------------------------------------------------------- hardened downloads

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes
FAST = Limits(read_timeout_s=2.0, download_deadline_s=10.0)


@pytest.fixture
def server():
    with loopback.serve() as running:
        yield running


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_the_default_folder_source_is_unverified_without_a_warning(tmp_path, caplog):
    root = make_layout(tmp_path / "chest_xray")
    with caplog.at_level(logging.INFO):
        source = resolve_source(params(str(root), require_sha256=True), tmp_path / "dl")
    assert source.location == root and not source.verified
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_download_cut_short_of_its_content_length_is_refused_and_not_cached(server, tmp_path):
    server.routes["/chest.zip"] = loopback.body(PAYLOAD[:100], announce=100_000)
    url = server.url("/chest.zip")
    with pytest.raises(SourceError, match=r"announced 100,000 bytes .* sent 100\b"):
        download(url, tmp_path / "dl", limits=FAST)
    assert files_under(tmp_path / "dl") == []
    server.routes["/chest.zip"] = loopback.body(PAYLOAD)  # the next run downloads it whole
    assert download(url, tmp_path / "dl", limits=FAST).read_bytes() == PAYLOAD


def test_a_chunked_download_cut_short_is_refused_and_not_cached(server, tmp_path):
    server.routes["/chest.zip"] = loopback.chunked(PAYLOAD, finish=False)
    with pytest.raises(SourceError, match="IncompleteRead"):
        download(server.url("/chest.zip"), tmp_path / "dl", limits=FAST)
    assert files_under(tmp_path / "dl") == []


def test_a_complete_chunked_download_is_accepted(server, tmp_path):
    server.routes["/chest.zip"] = loopback.chunked(PAYLOAD)
    assert download(server.url("/chest.zip"), tmp_path / "dl", limits=FAST).read_bytes() == PAYLOAD


def test_the_download_cache_is_keyed_by_url_not_by_file_name(server, tmp_path):
    server.routes["/a/chest.zip"] = loopback.body(b"first")
    server.routes["/b/chest.zip"] = loopback.body(b"second")
    first = download(server.url("/a/chest.zip"), tmp_path / "dl", limits=FAST)
    second = download(server.url("/b/chest.zip"), tmp_path / "dl", limits=FAST)
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second")
    assert first.name == second.name == "chest.zip" and first != second


def test_a_cached_download_is_reused_only_while_it_matches_the_sha256(server, tmp_path):
    server.routes["/chest.zip"] = loopback.body(PAYLOAD)
    url, digest = server.url("/chest.zip"), hashlib.sha256(PAYLOAD).hexdigest()
    cached = download(url, tmp_path / "dl", digest, FAST)
    assert download(url, tmp_path / "dl", digest, FAST) == cached
    assert server.hits["/chest.zip"] == 1
    cached.write_bytes(b"tampered")
    assert download(url, tmp_path / "dl", digest, FAST).read_bytes() == PAYLOAD
    assert server.hits["/chest.zip"] == 2


def test_a_download_with_the_wrong_sha256_never_gets_the_final_name(server, tmp_path):
    server.routes["/chest.zip"] = loopback.body(PAYLOAD)
    with pytest.raises(SourceError, match="sha256 is"):
        download(server.url("/chest.zip"), tmp_path / "dl", "0" * 64, FAST)
    assert files_under(tmp_path / "dl") == []


def zipped_layout(folder: Path) -> bytes:
    layout = make_layout(folder / "chest_xray")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for file in layout.rglob("*.jpeg"):
            bundle.write(file, file.relative_to(folder))
    return buffer.getvalue()


def test_an_unverified_download_warns_and_is_reported_unverified(server, tmp_path, caplog):
    data = zipped_layout(tmp_path / "site")
    server.routes["/chest.zip"] = loopback.body(data)
    with caplog.at_level(logging.WARNING):
        source = resolve_source(params(server.url("/chest.zip")), tmp_path / "dl", FAST)
    assert not source.verified
    assert len(candidates_from_folder(source.location, LABELS)) == 6
    warning = caplog.text
    assert "UNVERIFIED" in warning and hashlib.sha256(data).hexdigest() in warning


def test_require_sha256_refuses_an_unpinned_download_before_fetching_it(server, tmp_path):
    server.routes["/chest.zip"] = loopback.body(b"never asked for")
    with pytest.raises(SourceError, match=r"ingest\.require_sha256"):
        resolve_source(params(server.url("/chest.zip"), require_sha256=True), tmp_path / "dl")
    assert server.hits["/chest.zip"] == 0


def test_an_unverified_local_archive_warns_or_is_refused(tmp_path, caplog):
    archive = tmp_path / "chest_xray.zip"
    archive.write_bytes(zipped_layout(tmp_path / "site"))
    with caplog.at_level(logging.WARNING):
        assert not resolve_source(params(str(archive)), tmp_path / "dl").verified
    assert "UNVERIFIED an archive" in caplog.text
    with pytest.raises(SourceError, match=r"ingest\.require_sha256"):
        resolve_source(params(str(archive), require_sha256=True), tmp_path / "dl")


def test_an_http_to_http_redirect_is_followed(server, tmp_path):
    server.routes["/old/chest.zip"] = loopback.redirect(server.url("/new/chest.zip"), 301)
    server.routes["/new/chest.zip"] = loopback.body(PAYLOAD)
    assert download(server.url("/old/chest.zip"), tmp_path / "dl", limits=FAST).read_bytes() == (
        PAYLOAD
    )


def test_a_redirect_from_https_down_to_http_is_refused(server, tmp_path):
    pytest.importorskip("cryptography")
    server_tls, client_tls = loopback.self_signed_tls(tmp_path)
    server.routes["/chest.zip"] = loopback.body(PAYLOAD)
    with loopback.serve(server_tls) as secure:
        secure.routes["/chest.zip"] = loopback.body(PAYLOAD)
        secure.routes["/moved.zip"] = loopback.redirect(secure.url("/chest.zip"))
        secure.routes["/down.zip"] = loopback.redirect(server.url("/chest.zip"))
        # https, and an https -> https redirect, work with the trusted certificate ...
        assert download(
            secure.url("/moved.zip"), tmp_path / "dl", None, FAST, client_tls
        ).read_bytes() == (PAYLOAD)
        # ... a downgrade to http is refused before anything is asked of the http server.
        with pytest.raises(SourceError, match=r"refused the redirect .* stays on https"):
            download(secure.url("/down.zip"), tmp_path / "dl", None, FAST, client_tls)
        # and the default context does not trust a self-signed certificate.
        with pytest.raises(SourceError, match="CERTIFICATE_VERIFY_FAILED"):
            download(secure.url("/chest.zip?x=1"), tmp_path / "dl", None, FAST)
    assert server.hits["/chest.zip"] == 0
    assert len(files_under(tmp_path / "dl")) == 1  # the one good download


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        ("https://a.example/x.zip", "https://b.example/x.zip", True),
        ("http://a.example/x.zip", "https://b.example/x.zip", True),
        ("http://a.example/x.zip", "http://b.example/x.zip", True),
        ("https://a.example/x.zip", "http://b.example/x.zip", False),
        ("http://a.example/x.zip", "ftp://b.example/x.zip", False),
    ],
)
def test_the_redirect_handler_refuses_downgrades_and_other_schemes(old, new, allowed):
    def decide() -> urllib.request.Request | None:
        return SafeRedirectHandler().redirect_request(
            urllib.request.Request(old), io.BytesIO(), 302, "Found", http.client.HTTPMessage(), new
        )

    if allowed:
        request = decide()
        assert request is not None and request.full_url == new
    else:
        with pytest.raises(SourceError, match="refused the redirect"):
            decide()


def test_a_content_length_over_the_cap_is_refused_before_reading(server, tmp_path):
    server.routes["/chest.zip"] = loopback.body(PAYLOAD)
    with pytest.raises(SourceError, match=r"Content-Length is 10,240 bytes, over .* 1,000 bytes"):
        download(server.url("/chest.zip"), tmp_path / "dl", limits=Limits(max_download_bytes=1000))
    assert files_under(tmp_path / "dl") == []


def test_a_body_over_the_cap_without_a_content_length_is_aborted(server, tmp_path):
    server.routes["/chest.zip"] = loopback.chunked(PAYLOAD)
    with pytest.raises(SourceError, match=r"more than 1,000 bytes, the download cap"):
        download(server.url("/chest.zip"), tmp_path / "dl", limits=Limits(max_download_bytes=1000))
    assert files_under(tmp_path / "dl") == []


def test_a_trickling_server_is_stopped_by_the_overall_deadline(server, tmp_path):
    server.routes["/chest.zip"] = loopback.trickle(1000, 0.05, server.stop)  # 50 s in all
    start = time.monotonic()
    with pytest.raises(SourceError, match=r"not downloaded within 0.5 s"):
        download(
            server.url("/chest.zip"),
            tmp_path / "dl",
            limits=Limits(read_timeout_s=2.0, download_deadline_s=0.5),
        )
    assert time.monotonic() - start < 3
    assert files_under(tmp_path / "dl") == []


def test_a_stalled_server_times_out(server, tmp_path):
    server.routes["/chest.zip"] = loopback.stall(1000, b"x" * 10, server.stop)
    start = time.monotonic()
    with pytest.raises(SourceError, match="timed out"):
        download(server.url("/chest.zip"), tmp_path / "dl", limits=Limits(read_timeout_s=0.3))
    assert time.monotonic() - start < 3
    assert files_under(tmp_path / "dl") == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://user:pa55@host.example:8443/d/chest.zip?token=s3cr3t#frag",
            "https://host.example:8443/d/chest.zip",
        ),
        ("http://host.example/chest.zip", "http://host.example/chest.zip"),
        ("../shared/data/chest-xray-pneumonia", "../shared/data/chest-xray-pneumonia"),
    ],
)
def test_redact_url_drops_user_info_query_and_fragment(url, shown):
    assert redact_url(url) == shown


def test_a_token_in_the_url_is_in_no_error_log_or_report(server, tmp_path, caplog):
    url = server.url("/private/chest.zip?X-Amz-Signature=s3cr3t")
    with caplog.at_level(logging.DEBUG), pytest.raises(SourceError) as error:
        download(url, tmp_path / "dl", limits=FAST)  # no route: 404
    assert "404" in str(error.value) and server.url("/private/chest.zip") in str(error.value)
    assert "s3cr3t" not in str(error.value) + caplog.text
    manifest = pd.DataFrame({"split": ["train"], "label": ["NORMAL"], "patient_id": ["IM-0001"]})
    report = build_report(manifest, [], [], url, 1, None)
    assert report["source"] == server.url("/private/chest.zip")
    assert report["verified"] is False and report["verified_by"] is None
    assert build_report(manifest, [], [], "x.zip", 1, "ingest.sha256")["verified"] is True


# ---------------------------------------------------------------- hardened archives


def zip_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return path


def tar_of(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as bundle:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            bundle.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def test_a_zip_bomb_is_refused_before_anything_is_extracted(tmp_path):
    archive = zip_of(tmp_path / "bomb.zip", {"train/NORMAL/a.jpeg": bytes(1_000_000)})
    assert archive.stat().st_size < 5_000
    with pytest.raises(SourceError, match=r"declares 1,000,000 bytes .* cap of 100,000"):
        extract(archive, tmp_path / "out", Limits(max_extracted_bytes=100_000))
    assert not (tmp_path / "out").exists()


def test_a_zip_with_too_many_members_is_refused(tmp_path):
    archive = zip_of(tmp_path / "many.zip", {f"train/NORMAL/{i}.jpeg": b"x" for i in range(50)})
    with pytest.raises(SourceError, match=r"more than 10 members, the cap"):
        extract(archive, tmp_path / "out", Limits(max_archive_members=10))
    assert not (tmp_path / "out").exists()


def test_a_zip_whose_header_understates_a_size_is_refused(tmp_path):
    archive = zip_of(tmp_path / "liar.zip", {"train/NORMAL/a.jpeg": bytes(200_000)})
    data = bytearray(archive.read_bytes())
    entry = data.rfind(b"PK\x01\x02")  # the central directory entry: size at offset 24
    data[entry + 24 : entry + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="cannot be extracted"):
        extract(archive, tmp_path / "out", Limits(max_extracted_bytes=100_000))
    assert not (tmp_path / "out").exists()


def test_the_real_bytes_are_counted_against_the_cap_while_extracting(tmp_path):
    with pytest.raises(SourceError, match=r"extracts to more than 1,000 bytes, the cap"):
        copy_capped(io.BytesIO(bytes(5000)), tmp_path / "out", 300, tmp_path / "a.zip", 1000)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_member_escaping_the_folder_is_refused(tmp_path, kind):
    if kind == "zip":
        archive = zip_of(tmp_path / "evil.zip", {"../evil.txt": b"x"})
    else:
        archive = tar_of(tmp_path / "evil.tar.gz", [(tarfile.TarInfo("../evil.txt"), b"x")])
    with pytest.raises(SourceError, match=r"evil\.txt"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out").exists()


def test_a_tar_over_the_member_or_size_cap_is_refused(tmp_path):
    members = [(tarfile.TarInfo(f"train/NORMAL/{i}.jpeg"), bytes(1000)) for i in range(20)]
    archive = tar_of(tmp_path / "big.tar.gz", members)
    with pytest.raises(SourceError, match=r"more than 10 members"):
        extract(archive, tmp_path / "out", Limits(max_archive_members=10))
    with pytest.raises(SourceError, match=r"declares 5,000 bytes uncompressed, over the cap"):
        extract(archive, tmp_path / "out", Limits(max_extracted_bytes=4999))
    assert not (tmp_path / "out").exists()
    assert len(files_under(extract(archive, tmp_path / "out"))) == 20


@pytest.mark.parametrize(
    ("kind", "link"),
    [(tarfile.SYMTYPE, "a.jpeg"), (tarfile.LNKTYPE, "a.jpeg"), (tarfile.CHRTYPE, "")],
)
def test_a_tar_with_a_link_or_a_device_is_refused(tmp_path, kind, link):
    special = tarfile.TarInfo("train/NORMAL/b.jpeg")
    special.type, special.linkname = kind, link
    archive = tar_of(
        tmp_path / "links.tar.gz", [(tarfile.TarInfo("train/NORMAL/a.jpeg"), b"x"), (special, b"")]
    )
    with pytest.raises(SourceError, match=r"b\.jpeg"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_dicom_files_in_the_dataset_layout_are_ingested_and_bad_ones_quarantined(tmp_path):
    """A .dcm beside the JPEGs goes through the same validation: a DX frontal is accepted,
    a CT and a lateral view are quarantined with their reasons, and no tag value is in the
    reasons."""
    from pneumonia.data.sources import candidates_from_folder
    from pneumonia.images.config import PreprocessConfig
    from pneumonia.images.decode import decode_gray
    from pneumonia.images.prepare import prepare_image
    from tests.unit.test_dicom import SENTINELS, make_dicom

    pixels = decode_gray(jpeg(0))
    folder = tmp_path / "chest_xray" / "train"
    for label in LABELS:
        (folder / label).mkdir(parents=True)
    (folder / "NORMAL" / "IM-0001-0001.dcm").write_bytes(
        make_dicom(pixels, WindowCenter=128, WindowWidth=256)
    )
    (folder / "NORMAL" / "IM-0002-0001.dcm").write_bytes(make_dicom(pixels, Modality="CT"))
    (folder / "PNEUMONIA" / "person1_virus_1.dcm").write_bytes(
        make_dicom(pixels, ViewPosition="LL")
    )
    accepted, quarantined = validate(candidates_from_folder(tmp_path / "chest_xray", LABELS))
    assert [row["file"] for row in accepted] == ["train/NORMAL/IM-0001-0001.dcm"]
    reasons = {row["file"].split("/")[-1]: row["reason"] for row in quarantined}
    assert reasons == {"IM-0002-0001.dcm": "wrong_modality", "person1_virus_1.dcm": "lateral_view"}
    assert not any(str(value) in str(quarantined) for value in SENTINELS.values())
    # The accepted file prepares exactly as the picture it holds.
    data = (folder / "NORMAL" / "IM-0001-0001.dcm").read_bytes()
    config = PreprocessConfig(
        image_size=64, intensity="clahe", clahe_clip_limit=2.0, clahe_tile_grid=8
    )
    np.testing.assert_array_equal(prepare_image(data, config), prepare_image(pixels, config))


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("order", [("a", "a/b"), ("a/b", "a")])
def test_a_file_and_a_folder_of_one_name_are_a_source_error_naming_the_member(
    tmp_path, kind, order
):
    # GIVEN an archive holding a file `a` and a file `a/b`, in either order
    archive = tmp_path / f"collide.{'zip' if kind == 'zip' else 'tar.gz'}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as bundle:
            for name in order:
                bundle.writestr(name, b"x")
    else:
        with tarfile.open(archive, "w:gz") as bundle:
            for name in order:
                info = tarfile.TarInfo(name)
                info.size = 1
                bundle.addfile(info, io.BytesIO(b"x"))
    # WHEN it is extracted, THEN the error says which member, and nothing is left
    with pytest.raises(SourceError, match=rf"member '{order[1]}' collides"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
