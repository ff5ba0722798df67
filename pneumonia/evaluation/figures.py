"""The figures evaluate draws: robustness, held-out ROC curves, the gate's distances and
the class activation maps of a fixed set of test images."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import roc_curve

from pneumonia import paths
from pneumonia.data.prepared import load_files, load_split
from pneumonia.decision.rates import roc_auc
from pneumonia.evaluation.metrics import ROBUSTNESS_METRICS, binary_metrics
from pneumonia.evaluation.scoring import Scorer
from pneumonia.images.decode import decode_gray, to_uint8
from pneumonia.images.heatmap import heatmap, overlay
from pneumonia.images.prepare import model_region

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pneumonia.images.config import PreprocessConfig


def robustness_figure(clean: dict, shifted: dict) -> Figure:
    """Grouped bars: each metric, clean against every shift."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["clean", *shifted]
    rows = [clean, *shifted.values()]
    figure, axis = plt.subplots(figsize=(10, 5), layout="constrained")
    width = 0.8 / len(ROBUSTNESS_METRICS)
    for index, metric in enumerate(ROBUSTNESS_METRICS):
        axis.bar(
            np.arange(len(names)) + index * width,
            [row[metric] for row in rows],
            width,
            label=metric,
        )
    axis.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=25, ha="right")
    axis.set_ylim(0.5, 1.0)
    axis.set_ylabel("test split, threshold from validation")
    axis.set_title("Robustness to acquisition shifts")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncols=len(ROBUSTNESS_METRICS))
    axis.grid(axis="y", alpha=0.3)
    return figure


def framing_figure(report: dict) -> Figure:
    """Two panels over the framing shifts (the first row is the images unchanged): the
    metrics at the threshold, and the shares refused by the gate and left indeterminate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report)
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 7), layout="constrained", sharex=True, height_ratios=(3, 2)
    )
    panels = (
        (top, (*ROBUSTNESS_METRICS, "accuracy_decided"), "at the threshold and band"),
        (bottom, ("refused", "share_indeterminate"), "share of real X-rays"),
    )
    for axis, metrics, label in panels:
        width = 0.8 / len(metrics)
        for index, metric in enumerate(metrics):
            values = [report[name][metric] for name in names]
            axis.bar(np.arange(len(names)) + index * width, values, width, label=metric)
        axis.set_ylabel(label)
        axis.grid(axis="y", alpha=0.3)
        axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    top.set_ylim(0.0, 1.0)
    bottom.set_xticks(np.arange(len(names)) + 0.3, names, rotation=25, ha="right")
    top.set_title(
        "Framing shifts, held-out splits pooled (threshold, band and gate from validation)"
    )
    return figure


def held_out_figure(scores: dict[str, tuple[np.ndarray, np.ndarray]], threshold: float) -> Figure:
    """ROC curve of every held-out split, with the validation threshold marked on each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 6), layout="constrained")
    for split, (labels, probabilities) in scores.items():
        fpr, tpr, _ = roc_curve(labels, probabilities)
        at = binary_metrics(labels, probabilities, threshold)
        auc = roc_auc(labels, probabilities)
        (line,) = axis.plot(fpr, tpr, label=f"{split} (AUC {auc:.3f}, n={len(labels)})")
        axis.plot(1 - at["specificity"], at["sensitivity"], "o", color=line.get_color())
    axis.plot([0, 1], [0, 1], ":", color="grey")
    axis.set_xlabel("1 - specificity")
    axis.set_ylabel("sensitivity")
    axis.set_title(f"Held-out splits; dots: the validation threshold {threshold:.3f}")
    axis.legend(loc="lower right")
    axis.grid(alpha=0.3)
    return figure


def gate_figure(distances: dict[str, np.ndarray], threshold: float) -> Figure:
    """Histograms of the feature distance: held-out X-rays against the out-of-distribution
    images that reached the learned check, with the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    finite = np.concatenate([d for d in distances.values() if len(d)])
    bins = np.linspace(0, np.percentile(finite, 99.5) * 1.05, 60)
    for name, values in distances.items():
        axis.hist(
            np.clip(values, 0, bins[-1]),
            bins=list(bins),
            alpha=0.5,
            label=f"{name} ({len(values)})",
            density=True,
        )
    axis.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.1f}")
    axis.set_xlabel("Mahalanobis distance of the pooled features from the training split")
    axis.set_ylabel("density")
    axis.set_title("Not-a-chest-X-ray gate (learned check)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


ATTENTION_IMAGES = 4  # of each class, the first test images in manifest order


def attention_figure(scorer: Scorer, names: list[str], config: PreprocessConfig) -> Figure:
    """Class activation maps over a fixed set of test images, for `dvc plots diff`: how the
    model's attention moved between two revisions. Panels are numbered, never named (file
    names carry patient ids)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, labels = load_split("test")
    files = load_files("test")
    chosen = [i for c in (1, 0) for i in np.flatnonzero(labels == c)[:ATTENTION_IMAGES]]
    _, _, cams = scorer.outputs(images[chosen])
    probabilities = scorer(images[chosen])
    columns = max(1, math.ceil(len(chosen) / 2))
    figure, axes = plt.subplots(2, columns, figsize=(2.6 * columns, 6), dpi=80, squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for panel, (axis, index, cam, p) in enumerate(
        zip(axes.ravel(), chosen, cams, probabilities, strict=False)
    ):
        gray = to_uint8_gray((paths.RAW / files[index]).read_bytes())
        box = model_region(gray, config)
        region = (box.top, box.left, box.bottom, box.right)
        heat = heatmap(cam, gray.shape[1], gray.shape[0], region=region)
        axis.imshow(overlay(gray, heat))
        axis.set_title(f"#{panel + 1} {names[labels[index]]}\nP(pneumonia) {p:.2f}", fontsize=9)
        axis.axis("off")
    figure.suptitle("Where the evidence for pneumonia is (class activation map)")
    figure.tight_layout()
    return figure


def to_uint8_gray(data: bytes) -> np.ndarray:
    """An encoded image decoded to (H, W) uint8 gray."""
    return to_uint8(decode_gray(data))
