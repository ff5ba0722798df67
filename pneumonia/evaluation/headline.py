"""The headline figures: a few numbers per view, one small JSON file per view.

`dvc metrics show` prints one row per metrics file and one column per key, so each view
is its own file under `metrics/` with the same short keys: the views are rows and the
figures line up in a table that fits a terminal, and `dvc metrics diff` of a retrain lists
these numbers only. Everything else evaluate measures (intervals, policies, every shift,
the band's error rates, the gate's details) stays in `metrics/evaluate/metrics.json`,
which the plots, the model card and the review report read.

Views:
- `test`, `early`, `late`: each held-out split at the threshold;
- `worst_split`: each metric's lowest over those three;
- `worst_shift`: each metric's lowest over every shifted copy (the robustness shifts of
  test and the framing shifts of the pooled held-out splits); the largest indeterminate
  share and refusal rate, and the lowest accuracy on decided cases, over the same shifts;
- `decision`: the threshold, and the three-way decision and the gate on the pooled
  held-out splits as they are;
- `adult`, `body_part`, `lateral`: the share of the external adult chest X-rays, of the
  radiographs of other body parts and of the lateral chest views that the endpoint refuses
  (cross-validated), and how many there are;
- `refusals`: the real held-out X-rays the endpoint refuses, counted over every framing
  shift and the images as they are (`n`), and the share of them it names a chest X-ray
  (`as_such`: `outside_training_population` or `lateral_view`, never `not_a_chest_xray`).
"""

from __future__ import annotations

import json
from pathlib import Path

from pneumonia import paths

SPLIT_KEYS = {"roc_auc": "auc", "accuracy": "acc", "sensitivity": "sens", "specificity": "spec"}
# For the decision band and the gate: (key in the details, headline key, worse is higher).
DECISION_KEYS = (
    ("share_indeterminate", "undecided", True),
    ("accuracy_decided", "dec_acc", False),  # accuracy on the decided cases
    ("refused", "refused", True),
)
DIGITS = 4  # enough to see a change of one image in a few hundred; short columns
VIEWS = (
    "test",
    "early",
    "late",
    "worst_split",
    "worst_shift",
    "decision",
    "adult",
    "body_part",
    "lateral",
    "refusals",
)
# The external radiographs' kinds by view (the intended-use check, cross-validated).
EXTERNAL_VIEWS = {
    "adult": "adult_chest",
    "body_part": "other_body_part",
    "lateral": "lateral_chest",
}


def _rounded(value: float) -> float:
    return round(float(value), DIGITS)


def _split(figures: dict) -> dict[str, float]:
    return {short: _rounded(figures[name]) for name, short in SPLIT_KEYS.items()}


def worst_shift(results: dict) -> dict[str, float | str]:
    """Each figure at its worst over the robustness and framing shifts, with the shift that
    gave it (`<key>_shift`: kept in the details; a headline file holds numbers only)."""
    shifted = {
        **{f"test, {name}": figures for name, figures in results["robustness"].items()},
        **{
            f"held-out, {name}": figures
            for name, figures in results["framing"].items()
            if name != "unchanged"
        },
    }
    refusals = {  # the gate on the robustness shifts of test, and on the framing shifts
        **{
            name: {"refused": rate}
            for name, rate in results["ood_gate"]["false_rejections"].items()
            if name.startswith("test, ")
        },
        **{name: figures for name, figures in shifted.items() if "refused" in figures},
    }
    worst: dict[str, float | str] = {}
    for name, short in SPLIT_KEYS.items():
        shift = min(shifted, key=lambda shift: shifted[shift][name])
        worst[short] = _rounded(shifted[shift][name])
        worst[f"{short}_shift"] = shift
    for name, short, higher_is_worse in DECISION_KEYS:
        pool = refusals if name == "refused" else shifted
        candidates = [shift for shift in pool if name in pool[shift]]
        pick = max if higher_is_worse else min
        shift = pick(candidates, key=lambda shift: pool[shift][name])
        worst[short] = _rounded(pool[shift][name])
        worst[f"{short}_shift"] = shift
    return worst


def headline(results: dict) -> dict[str, dict]:
    """The views of evaluate's results (its metrics.json), by file stem."""
    views: dict[str, dict] = {
        split: _split(results[split]) for split in paths.HELD_OUT if results.get(split)
    }
    views["worst_split"] = _split(results["worst_split"])
    views["worst_shift"] = {
        key: value for key, value in worst_shift(results).items() if not key.endswith("_shift")
    }
    as_is = results["framing"]["unchanged"]
    views["decision"] = {
        "threshold": _rounded(results["threshold"]),
        **{short: _rounded(as_is[name]) for name, short, _ in DECISION_KEYS},
    }
    kinds = results["intended_use"]["kinds"]
    for view, kind in EXTERNAL_VIEWS.items():
        if kind in kinds:
            views[view] = {
                "refused": _rounded(kinds[kind]["refused"]),
                # with the kind's own reason (a body part as not_a_chest_xray, ...)
                "as_such": _rounded(kinds[kind]["refused_as_such"]),
                "n": kinds[kind]["images"],  # how many images (short: one table's width)
            }
    names = results["worst_framing"].get("refusals_named")
    if names is not None:
        refused = sum(names.values())
        views["refusals"] = {
            "as_such": _rounded(1 - names["not_a_chest_xray"] / refused) if refused else 1.0,
            "n": refused,
        }
    return views


def write_views(views: dict[str, dict], folder: Path = paths.METRICS) -> None:
    """One `<view>.json` per view."""
    for view, figures in views.items():
        (folder / f"{view}.json").write_text(json.dumps(figures, indent=2) + "\n")
