"""Do the maps show what the model uses? The deletion and randomisation checks as a report."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pneumonia.data.prepared import load_split
from pneumonia.evaluation.scoring import Scorer
from pneumonia.model.faithfulness import deletion_test, randomisation_test, randomised_copy

if TYPE_CHECKING:
    import keras


log = logging.getLogger("evaluate")


def faithfulness_report(scorer: Scorer, model: keras.Model, seed: int) -> dict:
    """Do the maps show what the model uses? Blurring the hottest 10% against the same
    region moved elsewhere (positive test images), and the maps of randomised weights."""
    images, labels = load_split("test")
    positives = images[labels == 1][:100]
    cams = scorer.outputs(positives)[2]
    deletion = deletion_test(positives, cams, lambda x: scorer.outputs(x)[0], seed=seed)
    randomised = Scorer(randomised_copy(model, seed=seed))
    sample = images[:20]
    randomisation = randomisation_test(scorer.outputs(sample)[2], randomised.outputs(sample)[2])
    log.info(
        "faithfulness: hot region beats control on %.0f%% of %d positives (median gap %.2f); "
        "rank correlation with random weights %.2f",
        100 * deletion["share_hot_beats_control"],
        deletion["images"],
        deletion["median_gap"],
        randomisation["median_rank_correlation"],
    )
    return {"deletion": deletion, "randomisation": randomisation}
