"""The refusal's reason: what an image the model will not answer is, named by a head on a
fixed ImageNet network's features of the whole image.

The intended-use head (`pneumonia.decision.use`) decides whether an image is answered; it
reads the trained network's features, so it can be fitted only on images we hold (3 lateral
views). This head only names the reason of a refusal (adult, lateral view, another body
part; a pediatric chest X-ray the model refused all the same is outside the training
population, `reason_kind`), and reads features that do not depend on the trained network:
EfficientNet-Lite0 with its pinned ImageNet weights (`pneumonia.model.pretrained`), never
trained here, on the whole decoded image at REASON_SIZE px, average-pooled (1,280 values),
then the view check's 392 layout features (`pneumonia.decision.view`). So radiographs whose
licence allows no copy can be kept as these statistics and fitted on (CheXpert's 32 lateral
and 202 frontal films, `data/external/view_statistics`), and every CPU computes nearly the
same features.

`models/reason.onnx` (`pneumonia.release.reason`) is that network with the head folded into
one matrix product: inputs `image` (N, REASON_SIZE, REASON_SIZE, 1) in [0, 1] and `layout`
(N, 392), output `reason_logits` (N, K), one column per `USE_KINDS` entry; a refusal is named by its
`reason_kind`. Serving runs it
only for a refused image, so an answered request costs nothing more. model.json names its
SHA-256 (`reason`), so the model version covers it.
"""

from __future__ import annotations

import cv2
import numpy as np

from pneumonia.decision.use import ANSWERED, NEVER, USE_KINDS, UseHead, fit_use_head, kind_of
from pneumonia.decision.view import decide_kind
from pneumonia.images.decode import to_float

REASON_SIZE = 128  # px, the whole image's side for the fixed network
REASON_FEATURES = 1280  # Lite0's pooled head channels
# The ImageNet statistics of a grey image (the mean and standard deviation of RGB's).
IMAGENET_MEAN, IMAGENET_STD = 0.449, 0.226
REASON_INPUTS = ("image", "layout")
REASON_OUTPUT = "reason_logits"
# Added to the fitted head's other-body-part logit. Other body parts are many anatomies, each
# with a few images, where adults and laterals are one each. Chosen on evaluate's
# cross-validation under three fold draws and checked on three others, as the smallest prior
# at which the choosing draws gain body parts and lose no chest kind: none does once every
# image reaches the fixed network in [0, 1] (`reason_input`) and a pediatric call is named
# one (`reason_kind`). On the choosing draws 0.5 gains no body part and names one more adult
# another body part; 1.0 gains two body parts in one draw and names one more adult so in
# each of two draws (docs/model-quality.md#one-scale-for-the-reason-head).
BODY_PART_PRIOR = 0.0


def reason_input(gray: np.ndarray) -> np.ndarray:
    """(REASON_SIZE, REASON_SIZE, 1) float32 in [0, 1]: the decoded (H, W) image, of any depth
    (uint8, uint16 or float in [0, 1], `to_float`), area-resized to a square, whatever its
    aspect. Scaled by its depth, so that an 8-bit and a 16-bit copy of an image, and the
    float training X-rays, reach the fixed network alike."""
    square = cv2.resize(
        to_float(np.asarray(gray)),
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
    part's logit; the answered kind must be among them (`reason_kind`)."""
    if ANSWERED not in features:
        raise ValueError(f"the reason head needs {ANSWERED} rows")
    head = fit_use_head(features, strength, start=start)
    bias = head.bias.copy()
    body_part = USE_KINDS.index("other_body_part")
    if bias[body_part] != NEVER:
        bias[body_part] += body_part_prior
    return UseHead(head.mean, head.scale, head.weights, bias, head.layout_asymmetry)


def reason_kind(logits: np.ndarray) -> str:
    """The kind the reason head names a refused image: the kind it calls it, pediatric
    included. The model refused the image, so a frontal chest X-ray that the head calls
    pediatric is one unlike those the model answers (its framing, its exposure), refused as
    `outside_training_population` (`REFUSAL_REASONS`), never by the runner-up among the
    other kinds: on the held-out X-rays refused under the framings, that runner-up was
    another body part for 19 of 85 (docs/model-quality.md#a-refused-chest-x-ray-is-named-one)."""
    return kind_of(logits)


def reason_named(logits: np.ndarray | None, lateral: bool) -> str | None:
    """The kind the endpoint names a refusal with these reason logits and the view check's
    call (`reason_kind`, then `decide_kind`); None without the head. Serving's `Namer`,
    evaluate and the benchmarks all name refusals by this."""
    return None if logits is None else decide_kind(reason_kind(logits), lateral)
