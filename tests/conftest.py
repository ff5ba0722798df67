"""Shared fixtures: the location of the real data, images made in the test."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.images import encode, gradient

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data" / "chest-xray-pneumonia").resolve()


@pytest.fixture
def xray_jpeg() -> bytes:
    return encode(Image.fromarray(gradient()), "JPEG", quality=95)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "train").is_dir():
        pytest.fail(f"the default dataset is missing: {SHARED_DATA}")
    return SHARED_DATA
