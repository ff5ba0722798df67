"""Patients and splits: who each file belongs to, and splits that never share a patient."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)(?:_\d+)+$", re.IGNORECASE),  # person1234_virus_99
    re.compile(r"^(NORMAL2-IM-\d+)(?:-\d+)+$", re.IGNORECASE),  # NORMAL2-IM-1427-0001(-0002)
    re.compile(r"^(IM-\d+)(?:-\d+)+$", re.IGNORECASE),  # IM-0115-0001(-0002)
)


def patient_id(file_name: str) -> str:
    """The patient a file belongs to, from the Kaggle naming schemes.

    A name that matches none of them is its own patient (its stem), so it can
    never share a patient with another file by accident.
    """
    stem = Path(file_name).name.rsplit(".", 1)[0]
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


_SERIES = re.compile(r"^(.*?)(\d+)$")


def id_blocks(patients: Iterable[str], fraction: float) -> tuple[set[str], set[str]]:
    """The earliest and latest `fraction` of patients of each id series.

    Ids are handed out in order (IM-0115 before IM-0116, person1 before
    person2), so a contiguous block of one series approximates another period
    of the hospital: a cohort shift the random split cannot show. A series is
    the id without its trailing number ("person", "IM-", "NORMAL2-IM-"); ids
    without a number belong to no block.
    """
    series: dict[str, list[tuple[int, str]]] = {}
    for patient in set(patients):
        match = _SERIES.match(patient)
        if match:
            series.setdefault(match.group(1), []).append((int(match.group(2)), patient))
    early: set[str] = set()
    late: set[str] = set()
    for members in series.values():
        ordered = [patient for _, patient in sorted(members)]
        size = round(fraction * len(ordered))
        if size and len(ordered) > 2 * size:
            early.update(ordered[:size])
            late.update(ordered[-size:])
    return early, late


def split_by_patient(
    manifest: pd.DataFrame,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    min_official_val_images: int = 0,
    shift_fraction: float = 0.0,
) -> pd.Series:
    """Assign each image a split so that no patient is in two splits.

    Official test/ is used as the test split when present, and official val/
    when it has at least `min_official_val_images` images; otherwise it joins
    the train pool. What is not given is carved from the train pool by
    patient, stratified by the patient's majority label, seeded. Train-pool
    images of a patient who also appears in an official val/test split are
    marked "excluded" (reported, not used) so that no patient leaks.
    Before the random carve, the earliest and latest `shift_fraction` of each
    id series are held out as the "early" and "late" splits (`id_blocks`).
    """
    source = manifest["source_split"]
    has_test = bool((source == "test").any())
    has_val = int((source == "val").sum()) >= max(1, min_official_val_images)
    split = pd.Series("train", index=manifest.index, dtype=object)
    if has_test:
        split[source == "test"] = "test"
    if has_val:
        split[source == "val"] = "val"

    # A patient found in a held-out official split may not train.
    held_out = set(manifest.loc[split != "train", "patient_id"])
    pool = split == "train"
    leaking = pool & manifest["patient_id"].isin(held_out)
    split[leaking] = "excluded"
    pool &= ~leaking

    if shift_fraction:
        early, late = id_blocks(manifest.loc[pool, "patient_id"], shift_fraction)
        for name, block in (("early", early), ("late", late)):
            split[pool & manifest["patient_id"].isin(block)] = name
        pool &= split == "train"

    carve = {"test": 0.0 if has_test else test_fraction, "val": 0.0 if has_val else val_fraction}
    if carve["test"] or carve["val"]:
        pool_rows = manifest[pool]
        patient_label = pool_rows.groupby("patient_id")["label"].agg(lambda s: s.mode().iloc[0])
        rng = np.random.default_rng(seed)
        for label in sorted(patient_label.unique()):
            patients = np.array(sorted(patient_label.index[patient_label == label]))
            patients = patients[rng.permutation(len(patients))]
            n_test = round(carve["test"] * len(patients))
            n_val = round(carve["val"] * len(patients))
            chosen = {"test": patients[:n_test], "val": patients[n_test : n_test + n_val]}
            for name, members in chosen.items():
                split[pool & manifest["patient_id"].isin(members)] = name
    return split
