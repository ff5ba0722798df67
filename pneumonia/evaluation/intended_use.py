"""The intended-use head (`pneumonia.decision.use`) fitted, and measured as the endpoint
would refuse: on the external radiographs (adults, lateral views, other body parts; real
images from public repositories, `data/external/radiographs/manifest.csv`), by 5-fold
cross-validation over those images, and on the held-out X-rays.

Every external image is also used under the robustness and framing shifts (ALL_SHIFTS), as
the training X-rays are for the gate: the head must not learn "shifted" as a kind.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from pneumonia import paths
from pneumonia.decision.use import (
    ANSWERED,
    USE_KINDS,
    UseHead,
    as_such,
    fit_use_head,
    refused_kind,
    with_margin,
)
from pneumonia.evaluation.gate import FRAMING_REJECTION_RATE, framing_blocks
from pneumonia.evaluation.scoring import Scorer
from pneumonia.evaluation.shifts import ALL_SHIFTS
from pneumonia.images.config import PreprocessConfig
from pneumonia.images.decode import to_float
from pneumonia.images.formats import ImageError
from pneumonia.images.prepare import prepare_image
from pneumonia.images.screening import screen_and_prepare

log = logging.getLogger("evaluate")

# The manifest's kinds, as the head names them.
HEAD_KIND = {
    "frontal_adult": "adult_chest",
    "lateral": "lateral_chest",
    "other_body_part": "other_body_part",
}
FOLDS = 5
USE_STRENGTH = 0.05  # the head's inverse L2 penalty (benchmarks/gate_framing.py compares)
# Whether the head also reads the layout's left-right asymmetry (`pneumonia.decision.use`: a
# lateral view is not its own mirror image). Off: over three networks it named 4 of 9
# laterals as such against 5 (benchmarks/asymmetry_seeds.txt, docs/model-quality.md).
USE_LAYOUT_ASYMMETRY = False


@dataclass(frozen=True)
class External:
    """The external radiographs: each image's kind, whether the cheap checks (or the
    decoder) refused it, and its features unchanged and under each shift."""

    kinds: list[str]  # head kinds, one per image
    refused_early: list[str | None]  # the reason of a refusal before the model, else None
    features: list[np.ndarray]  # (1 + shifts, F) per image; empty when refused early
    # the decoded image, what the view check reads (`evaluation.view`); empty likewise
    grays: list[np.ndarray] = field(default_factory=list)


def external_radiographs_manifest() -> list[dict[str, str]]:
    """The external radiographs' manifest rows, in its order."""
    with open(paths.EXTERNAL_MANIFEST, newline="") as handle:
        return list(csv.DictReader(handle))


def external_radiographs() -> list[tuple[str, bytes]]:
    """(head kind, encoded bytes) of each external radiograph, in manifest order."""
    rows = external_radiographs_manifest()
    return [
        (HEAD_KIND[row["kind"]], (paths.EXTERNAL_RADIOGRAPHS / row["file"]).read_bytes())
        for row in rows
    ]


def external_features(scorer: Scorer, config: PreprocessConfig) -> External:
    """Every external radiograph through the endpoint's checks, then the model."""
    kinds: list[str] = []
    early: list[str | None] = []
    features: list[np.ndarray] = []
    grays: list[np.ndarray] = []
    for kind, data in tqdm(external_radiographs(), desc="external radiographs", unit="image"):
        kinds.append(kind)
        try:
            gray, pixels = screen_and_prepare(data, config)
        except ImageError as error:
            early.append(error.reason)
            features.append(np.zeros((0, 0)))
            grays.append(np.zeros((0, 0)))
            continue
        early.append(None)
        grays.append(gray)
        features.append(scorer.outputs(np.stack([pixels, *shifted_copies(gray, config)]))[1])
    return External(kinds, early, features, grays)


def shifted_copies(gray: np.ndarray, config: PreprocessConfig) -> list[np.ndarray]:
    """The model inputs of a decoded (H, W) image of any depth under each shift of ALL_SHIFTS,
    which read floats in [0, 1]: the endpoint decodes an 8-bit file to uint8, a 16-bit one to
    uint16 (until 2026-12-08 the exposure shifts got those integers and made near-binary
    copies of every external radiograph)."""
    image = to_float(gray)
    return [prepare_image(shift(image), config) for shift in ALL_SHIFTS.values()]


def kind_folds(kinds: list[str], folds: int, seed: int) -> np.ndarray:
    """A fold (0 .. folds-1) for each image: each kind's images, in a seeded shuffle, dealt
    round the folds in turn. Every image is then measured by a head fitted without it, and a
    kind with fewer images than folds (two lateral views) is still cross-validated, where a
    stratified split would have cut every kind to that many folds."""
    rng = np.random.default_rng(seed)
    fold_of = np.zeros(len(kinds), dtype=int)
    start = 0  # where the next kind starts dealing: small kinds land in different folds
    for kind in sorted(set(kinds)):
        members = rng.permutation([i for i, k in enumerate(kinds) if k == kind])
        fold_of[members] = (start + np.arange(len(members))) % folds
        start = (start + len(members)) % folds
    return fold_of


def by_kind(external: External, chosen: list[int], pediatric: np.ndarray) -> dict:
    """Each kind's features for a fit of the head: `pediatric` (training X-rays) and the
    `chosen` external radiographs, each with its shifted copies."""
    grouped: dict[str, list[np.ndarray]] = {ANSWERED: [pediatric]}
    for index in chosen:
        grouped.setdefault(external.kinds[index], []).append(external.features[index])
    return {kind: np.concatenate(rows) for kind, rows in grouped.items()}


def fit_and_measure(
    external: External,
    pediatric: np.ndarray,
    validation: np.ndarray,
    gate_distance: Callable[[np.ndarray], np.ndarray],
    gate_threshold: float,
    false_rejection_rate: float,
    seed: int,
    framing_rate: float | None = FRAMING_REJECTION_RATE,
    strength: float = USE_STRENGTH,
    layout_asymmetry: bool = USE_LAYOUT_ASYMMETRY,
    outcomes: dict[int, str] | None = None,
) -> tuple[UseHead, dict]:
    """The head fitted on everything, and the endpoint's outcome for each external image
    when the head was fitted without it (FOLDS-fold cross-validation, `kind_folds`).

    `pediatric`: (N, F) features of training X-rays (with their shifted copies);
    `validation`: the same of the validation split, on which each head's margin is set so
    that it names at most `false_rejection_rate` of them, and of each framing of them
    (`framing_blocks`) at `framing_rate`, another kind (`with_margin`); `strength`: the
    head's inverse L2 penalty and `layout_asymmetry` whether it reads the layout's
    asymmetry (`fit_use_head`);
    `gate_distance`: features -> (N,) distances of the learned "not a chest X-ray" gate;
    `outcomes`: where given, filled with each external image's outcome by its manifest index.
    """

    groups = framing_blocks(validation) if framing_rate is not None else []

    reached = [i for i, reason in enumerate(external.refused_early) if reason is None]
    # The head on everything first: each fold's solver starts from it (`fit_use_head`).
    everything = fit_use_head(by_kind(external, reached, pediatric), strength, layout_asymmetry)

    def fit(chosen: list[int]) -> UseHead:
        features = by_kind(external, chosen, pediatric)
        head = fit_use_head(features, strength, layout_asymmetry, start=everything)
        return with_margin(head, validation, false_rejection_rate, groups, framing_rate)

    outcome: dict[int, str] = {
        i: f"refused before the model ({reason})"
        for i, reason in enumerate(external.refused_early)
        if reason is not None
    }
    fold_of = kind_folds([external.kinds[i] for i in reached], FOLDS, seed)
    for fold in range(FOLDS):
        head = fit([index for index, f in zip(reached, fold_of, strict=True) if f != fold])
        for index in (index for index, f in zip(reached, fold_of, strict=True) if f == fold):
            unchanged = external.features[index][:1]
            kind = head.kinds(unchanged)[0]
            if kind != ANSWERED:
                outcome[index] = f"refused as {kind}"
            elif not gate_distance(unchanged)[0] <= gate_threshold:
                outcome[index] = f"refused by the gate as {refused_kind(head.logits(unchanged))}"
            else:
                outcome[index] = "answered"
    if outcomes is not None:
        outcomes.update(outcome)
    report = kinds_report(external.kinds, outcome)
    report["not_fitted"] = [k for k in USE_KINDS if k != ANSWERED and k not in external.kinds]
    head = with_margin(everything, validation, false_rejection_rate, groups, framing_rate)
    report["validation_refused"] = held_out_refusals(head, validation)
    for kind, figures in report["kinds"].items():
        log.info(
            "intended use: %s refused %.1f%% of %d, %.1f%% as such (cross-validated)",
            kind,
            100 * figures["refused"],
            figures["images"],
            100 * figures["refused_as_such"],
        )
    return head, report


def kinds_report(kinds: list[str], outcome: dict[int, str]) -> dict:
    """Per kind of external radiograph: its images, the share refused, the share refused
    with the kind's own reason, and each outcome's count (`outcome`: by manifest index)."""
    report: dict = {"folds": FOLDS, "kinds": {}}
    for kind in sorted(set(kinds)):
        mine = [outcome[i] for i, k in enumerate(kinds) if k == kind]
        report["kinds"][kind] = {
            "images": len(mine),
            "refused": float(np.mean([o != "answered" for o in mine])),
            "refused_as_such": float(np.mean([as_such(kind, o) for o in mine])),
            "outcomes": {name: mine.count(name) for name in sorted(set(mine))},
        }
    return report


def held_out_refusals(head: UseHead, features: np.ndarray) -> float:
    """The share of real held-out X-rays the head would refuse."""
    return float(np.mean([kind != ANSWERED for kind in head.kinds(features)]))
