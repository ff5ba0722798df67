"""The out-of-distribution set: deterministic, every kind populated, every file valid."""

import base64
import io
from collections import Counter

import pydicom
import pytest

from pneumonia.evaluation.ood import KINDS, NOT_COVERED, OodImage, out_of_distribution_images
from pneumonia.images.decode import decode_gray, read_header
from pneumonia.images.formats import MAX_PIXELS, MAX_SIDE
from pneumonia.serving.requests import MAX_BODY_BYTES


@pytest.fixture(scope="module")
def images() -> list[OodImage]:
    return out_of_distribution_images()


def encoded(images: list[OodImage]) -> list[OodImage]:
    return [image for image in images if not image.name.endswith(".dcm")]


def dicom(images: list[OodImage]) -> list[OodImage]:
    return [image for image in images if image.name.endswith(".dcm")]


def test_two_builds_are_byte_identical(images):
    again = out_of_distribution_images()
    assert [(i.kind, i.name) for i in again] == [(i.kind, i.name) for i in images]
    for first, second in zip(images, again, strict=True):
        assert first.data == second.data, f"{first.name} differs between builds"


def test_every_kind_has_at_least_eight_images_and_no_other_kind_appears(images):
    counts = Counter(image.kind for image in images)
    assert set(counts) == set(KINDS)
    assert all(counts[kind] >= 8 for kind in KINDS), counts
    assert 80 <= len(images) <= 150


def test_a_kind_left_out_is_said_to_be_left_out():
    assert not set(NOT_COVERED) & set(KINDS)
    assert all(reason for reason in NOT_COVERED.values())


def test_names_are_unique(images):
    names = [image.name for image in images]
    duplicates = [name for name, count in Counter(names).items() if count > 1]
    assert not duplicates


def test_every_image_decodes_within_the_caps(images):
    for image in encoded(images):
        header = read_header(image.data)
        assert header.format in ("JPEG", "PNG"), image.name
        assert max(header.width, header.height) <= MAX_SIDE, image.name
        assert header.width * header.height <= MAX_PIXELS, image.name
        gray = decode_gray(image.data)
        assert gray.shape == (header.height, header.width), image.name


def test_every_file_fits_in_a_request_body_as_base64(images):
    for image in images:
        assert len(base64.b64encode(image.data)) <= MAX_BODY_BYTES, image.name


def test_dicom_files_are_other_modalities_with_pixels(images):
    files = dicom(images)
    assert len(files) >= 4
    for image in files:
        assert image.kind == "other_modality", image.name
        assert image.data[128:132] == b"DICM", image.name
        dataset = pydicom.dcmread(io.BytesIO(image.data))
        assert dataset.Modality not in ("CR", "DX"), image.name  # not projection radiography
        assert "PixelData" in dataset, image.name
