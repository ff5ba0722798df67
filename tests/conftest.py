"""Shared fixtures: a committed sample of the real data, images made in the test."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.images import encode, gradient

REPO_ROOT = Path(__file__).resolve().parents[1]
# 150 real images of the training split, committed (tests/data/chest-xray-sample/README.md):
# the tests never read a folder outside the repository.
SAMPLE_DATA = REPO_ROOT / "tests" / "data" / "chest-xray-sample"


@pytest.fixture
def xray_jpeg() -> bytes:
    return encode(Image.fromarray(gradient()), "JPEG", quality=95)


@pytest.fixture(scope="session")
def sample_data() -> Path:
    return SAMPLE_DATA
