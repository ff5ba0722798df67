"""Features a benchmark computes once and may keep (a pickle it wrote itself), and its
printed record."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def features_once(collect: Callable[[], T], read: Path | None, write: Path | None) -> T:
    """`read`'s features (a pickle an earlier run wrote with `write`), else `collect()`'s;
    written to `write` when given."""
    if read:
        with read.open("rb") as handle:
            found = pickle.load(handle)  # a file this benchmark wrote
    else:
        found = collect()
    if write:
        with write.open("wb") as handle:
            pickle.dump(found, handle)
    return found


def read_features(path: Path) -> dict:
    """The features a benchmark kept with `features_once(..., write=path)`."""
    return features_once(dict, path, None)


def print_and_record(text: str, out: Path) -> None:
    """Print a benchmark's text and append it to its record `out`, a blank line after it."""
    print(text)
    with out.open("a") as handle:
        handle.write(text + "\n\n")
