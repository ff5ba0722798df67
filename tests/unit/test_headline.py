"""The headline views `dvc metrics` lists: the right figure in each, and dvc.yaml declaring
exactly them."""

from __future__ import annotations

import json

import yaml

from pneumonia.evaluation.headline import VIEWS, headline, worst_shift, write_views
from pneumonia.model.training import train_headline
from tests.conftest import REPO_ROOT


def split(auc, acc, sens, spec):
    return {"roc_auc": auc, "accuracy": acc, "sensitivity": sens, "specificity": spec}


def decided(undecided, decided_acc, refused):
    return {"share_indeterminate": undecided, "accuracy_decided": decided_acc, "refused": refused}


def results() -> dict:
    return {
        "threshold": 0.86534,
        "test": {**split(0.99, 0.96, 0.97, 0.95), "precision": 0.5, "images": 698},
        "early": split(0.98, 0.95, 0.94, 0.96),
        "late": split(0.97, 0.93, 0.99, 0.88),
        "worst_split": {**split(0.97, 0.93, 0.94, 0.88), "roc_auc_split": "late"},
        "robustness": {
            "darker": split(0.91, 0.90, 0.85, 0.97),  # the lowest AUC and sensitivity
            "brighter": split(0.98, 0.97, 0.97, 0.97),
        },
        "framing": {
            # As they are: never a shift, though its refusal rate is the highest here.
            "unchanged": {**split(0.5, 0.5, 0.5, 0.5), **decided(0.05, 0.97, 0.30)},
            "border 20%": {**split(0.95, 0.80, 0.96, 0.31), **decided(0.45, 0.86, 0.01)},
            "crop 15%": {**split(0.96, 0.85, 0.97, 0.82), **decided(0.16, 0.91, 0.06)},
        },
        "ood_gate": {
            "false_rejections": {"test": 0.2, "test, darker": 0.08, "test, brighter": 0.003}
        },
        "worst_framing": {
            "refusals_named": {
                "lateral_view": 3,
                "not_a_chest_xray": 5,
                "outside_training_population": 32,
            }
        },
        "intended_use": {
            "kinds": {
                "adult_chest": {
                    "images": 32,
                    "refused": 0.90625,
                    "refused_as_such": 0.875,
                    "outcomes": {},
                },
                "other_body_part": {
                    "images": 50,
                    "refused": 0.98,
                    "refused_as_such": 0.96,
                    "outcomes": {},
                },
                "lateral_chest": {
                    "images": 2,
                    "refused": 0.5,
                    "refused_as_such": 0.5,
                    "outcomes": {},
                },
            }
        },
    }


def test_each_split_view_is_its_four_figures_rounded():
    views = headline(results())
    assert list(views) == list(VIEWS)
    assert views["test"] == {"auc": 0.99, "acc": 0.96, "sens": 0.97, "spec": 0.95}
    assert views["late"] == {"auc": 0.97, "acc": 0.93, "sens": 0.99, "spec": 0.88}
    assert views["worst_split"] == {"auc": 0.97, "acc": 0.93, "sens": 0.94, "spec": 0.88}
    assert views["adult"] == {"refused": 0.9062, "as_such": 0.875, "n": 32}
    assert views["body_part"] == {"refused": 0.98, "as_such": 0.96, "n": 50}
    assert views["lateral"] == {"refused": 0.5, "as_such": 0.5, "n": 2}
    # 40 held-out refusals over the framings, 5 of them named not_a_chest_xray
    assert views["refusals"] == {"as_such": 0.875, "n": 40}
    assert views["decision"] == {
        "threshold": 0.8653,
        "undecided": 0.05,
        "dec_acc": 0.97,
        "refused": 0.3,
    }


def test_the_worst_shift_takes_each_figure_from_its_own_worst_shift_never_the_unchanged():
    views = headline(results())
    assert views["worst_shift"] == {
        "auc": 0.91,  # darker (robustness)
        "acc": 0.80,  # border 20% (framing)
        "sens": 0.85,  # darker
        "spec": 0.31,  # border 20%
        "undecided": 0.45,  # border 20%
        "dec_acc": 0.86,  # border 20%
        "refused": 0.08,  # the gate on darker test images, over crop 15%'s 0.06
    }
    named = worst_shift(results())
    assert named["spec_shift"] == "held-out, border 20%"
    assert named["auc_shift"] == "test, darker"
    assert named["refused_shift"] == "test, darker"


def test_the_train_view_is_validation_at_the_best_epoch():
    summary = {
        "best_epoch": 14,
        "epochs_run": 20,
        "best_val_auc": 0.992911,
        "best_val_accuracy": 0.949404,
        "best_val_sensitivity": 0.940828,
        "train_seconds": 406.0,
    }
    assert train_headline(summary) == {"auc": 0.9929, "acc": 0.9494, "sens": 0.9408}


def test_views_are_written_one_file_each(tmp_path):
    write_views(headline(results()), tmp_path)
    assert sorted(path.stem for path in tmp_path.iterdir()) == sorted(VIEWS)
    assert json.loads((tmp_path / "test.json").read_text())["auc"] == 0.99


def test_dvc_yaml_lists_the_headline_views_and_nothing_else_as_metrics():
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    declared = {
        name: [
            next(iter(entry)) if isinstance(entry, dict) else entry
            for entry in stage.get("metrics", [])
        ]
        for name, stage in stages.items()
    }
    assert declared == {
        "ingest": [],
        "preprocess": [],
        "train": ["metrics/train.json"],
        "evaluate": [f"metrics/{view}.json" for view in VIEWS],
        "export_onnx": [],
    }


def test_with_no_held_out_refusal_the_share_named_a_chest_x_ray_is_one():
    figures = results()
    figures["worst_framing"]["refusals_named"] = dict.fromkeys(
        ("lateral_view", "not_a_chest_xray", "outside_training_population"), 0
    )
    assert headline(figures)["refusals"] == {"as_such": 1.0, "n": 0}
