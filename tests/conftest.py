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
# The test file that takes longest (the slice's pipeline: about 40% of `make test`).
LONGEST = "tests/integration/test_pipeline.py"


@pytest.fixture
def xray_jpeg() -> bytes:
    return encode(Image.fromarray(gradient()), "JPEG", quality=95)


@pytest.fixture(scope="session")
def sample_data() -> Path:
    return SAMPLE_DATA


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tiers are the folders: every test under tests/integration carries the
    `integration` mark and none under tests/unit does, so `pytest tests/unit` (which imports
    no integration module: TensorFlow, schemathesis) is exactly `pytest -m "not integration"`."""
    misplaced = [
        item.nodeid
        for item in items
        if ("tests/integration/" in item.nodeid) != bool(item.get_closest_marker("integration"))
    ]
    if misplaced:
        raise pytest.UsageError(f"a test's tier mark does not match its folder: {misplaced}")
    # The longest file first: `make test` runs a file at a time on two processes (pytest-xdist,
    # --dist loadfile, in this order), so one process runs it while the other runs the rest.
    items.sort(key=lambda item: item.nodeid.split("::")[0] != LONGEST)
