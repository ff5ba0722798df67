"""The refusal's reason: what an image the model will not answer is, named by a head on a
fixed ImageNet network's features of the whole image.

The intended-use head (`pneumonia.decision.use`) decides whether an image is answered; it
reads the trained network's features, so it can be fitted only on images we hold (3 lateral
views). This head only names the reason of a refusal (adult, lateral view, another body
part), and reads features that do not depend on the trained network: EfficientNet-Lite0 with
its pinned ImageNet weights (`pneumonia.model.pretrained`), never trained here, on the whole
decoded image at REASON_SIZE px, average-pooled (1,280 values), then the view check's 392
layout features (`pneumonia.decision.view`). So radiographs whose licence allows no copy can
be kept as these statistics and fitted on (CheXpert's 32 lateral and 202 frontal films,
`data/external/view_statistics`), and every CPU computes nearly the same features.

`models/reason.onnx` (`pneumonia.release.reason`) is that network with the head folded into
one matrix product: inputs `image` (N, REASON_SIZE, REASON_SIZE, 1) in [0, 1] and `layout`
(N, 392), output `reason_logits` (N, K), one column per `USE_KINDS` entry; a refusal is named by its
`refused_kind`. Serving runs it
only for a refused image, so an answered request costs nothing more. model.json names its
SHA-256 (`reason`), so the model version covers it.
"""

from __future__ import annotations

import cv2
import numpy as np

from pneumonia.decision.use import ANSWERED, NEVER, USE_KINDS, UseHead, fit_use_head

REASON_SIZE = 128  # px, the whole image's side for the fixed network
REASON_FEATURES = 1280  # Lite0's pooled head channels
# The ImageNet statistics of a grey image (the mean and standard deviation of RGB's).
IMAGENET_MEAN, IMAGENET_STD = 0.449, 0.226
REASON_INPUTS = ("image", "layout")
REASON_OUTPUT = "reason_logits"
# Added to the fitted head's other-body-part logit. Other body parts are many anatomies, each
# with a few images, where adults and laterals are one each: the balanced linear head names
# an unusual limb or spine an adult or a lateral chest. Chosen on evaluate's cross-validation
# under three fold draws (0 to 4 in steps of 0.5) and checked on three others: at 1.0 the body
# parts named as such went from 96.3% to 98.0% over the six draws, no adult was named another
# body part, and CheXpert's laterals lost two images in one draw
# (docs/model-quality.md#a-prior-for-other-body-parts).
BODY_PART_PRIOR = 1.0


def reason_input(gray: np.ndarray) -> np.ndarray:
    """(REASON_SIZE, REASON_SIZE, 1) float32 in [0, 1]: the decoded (H, W) image in [0, 1],
    area-resized to a square, whatever its aspect."""
    square = cv2.resize(
        np.asarray(gray, dtype=np.float32),
        (REASON_SIZE, REASON_SIZE),
        interpolation=cv2.INTER_AREA,
    )
    return square[..., np.newaxis]


def fold_head(head: UseHead) -> tuple[np.ndarray, np.ndarray]:
    """(I, K) weights and (K,) bias with head.logits(x) == x @ weights + bias: the
    standardisation folded in (the head must not read the layout's asymmetry)."""
    if head.layout_asymmetry:
        raise ValueError("the reason head reads its inputs as they are")
    weights = head.weights / head.scale[:, np.newaxis]
    bias = head.bias - (head.mean / head.scale) @ head.weights
    return weights, bias


def fit_reason_head(
    features: dict[str, np.ndarray],
    strength: float,
    start: UseHead | None = None,
    body_part_prior: float = BODY_PART_PRIOR,
) -> UseHead:
    """The head from each kind's (N_k, REASON_FEATURES + 392) rows (`fit_use_head`: balanced
    classes, L2, the solver started from `start`), `body_part_prior` added to the other body
    part's logit; the answered kind must be among them, so a refused pediatric image is named
    by its runner-up."""
    if ANSWERED not in features:
        raise ValueError(f"the reason head needs {ANSWERED} rows")
    head = fit_use_head(features, strength, start=start)
    bias = head.bias.copy()
    body_part = USE_KINDS.index("other_body_part")
    if bias[body_part] != NEVER:
        bias[body_part] += body_part_prior
    return UseHead(head.mean, head.scale, head.weights, bias, head.layout_asymmetry)
