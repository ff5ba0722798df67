"""The model card: models/MODEL_CARD.md from `card_template.md` (string.Template, ${name}),
filled with what ingest, train and evaluate measured."""

from __future__ import annotations

import string
from pathlib import Path

from pneumonia import paths
from pneumonia.decision.contract import ModelMetadata
from pneumonia.decision.use import REFUSAL_REASONS, as_such

MODEL_CARD_TEMPLATE = Path(__file__).with_name("card_template.md")  # string.Template, ${name}
INTERVALS = ("roc_auc", "accuracy", "sensitivity", "specificity", "precision", "f1")


def network_description(architecture: str, parameters: int) -> str:
    """The model card's words for the network: `train.architecture` as train recorded it in
    models/train_info.json, and the model's size."""
    size = f"{parameters / 1e6:.1f}M" if parameters >= 1e6 else f"{parameters / 1e3:.0f}k"
    if architecture == "efficientnet_lite0":
        return f"EfficientNet-Lite0 ({size} parameters) fine-tuned from ImageNet weights"
    if architecture == "efficientnet_lite0_stride16":
        return (
            f"EfficientNet-Lite0 cut at output stride 16 ({size} parameters), fine-tuned from "
            "ImageNet weights"
        )
    return f"Keras CNN ({size} parameters) trained from scratch"


def model_card(
    metadata: ModelMetadata, evaluation: dict, report: dict, train_info: dict, network: str
) -> str:
    """MODEL_CARD.md, written from the pipeline's own outputs."""
    test, low, high = (evaluation[k] for k in ("test", "test_ci95_low", "test_ci95_high"))

    def interval(name: str) -> str:
        return f"{test[name]:.3f} [{low[name]:.3f}, {high[name]:.3f}]"

    split_rows = "\n".join(
        f"| {split} | {counts.get('NORMAL', 0):,} | {counts.get('PNEUMONIA', 0):,} | "
        f"{report['patients_per_split'].get(split, 0):,} |"
        for split, counts in sorted(report["per_split"].items())
    )
    held_out = [split for split in paths.HELD_OUT if split in evaluation]
    held_out_rows = "\n".join(
        f"| {split} | {evaluation[split]['images']} | {evaluation[split]['prevalence']:.3f} | "
        + " | ".join(
            f"{evaluation[split][name]:.3f} [{evaluation[f'{split}_ci95_low'][name]:.3f}, "
            f"{evaluation[f'{split}_ci95_high'][name]:.3f}]"
            for name in ("roc_auc", "accuracy", "sensitivity", "specificity")
        )
        + " |"
        for split in held_out
    )
    shifts = {"clean": test, **evaluation.get("robustness", {})}
    robustness_rows = "\n".join(
        f"| {name} | {values['roc_auc']:.3f} | {values['accuracy']:.3f} | "
        f"{values['sensitivity']:.3f} | {values['specificity']:.3f} |"
        for name, values in shifts.items()
    )
    cpu = train_info.get("cpu", {})
    template = string.Template(MODEL_CARD_TEMPLATE.read_text())
    return template.substitute(
        model_version=metadata.model_version,
        source=report["source"],
        files_found=f"{report['files_found']:,}",
        images_accepted=f"{report['images_accepted']:,}",
        patients=f"{report['patients']:,}",
        quarantined=report["quarantined"],
        duplicates_removed=report["duplicates_removed"],
        data_hash=metadata.training_data_sha256[:16],
        split_rows=split_rows,
        network=network,
        device=train_info.get("device", "?"),
        cpu_model=cpu.get("model", "?"),
        cpu_isa=cpu.get("isa", "?"),
        best_val_auc=f"{train_info.get('best_val_auc', float('nan')):.4f}",
        best_epoch=train_info.get("best_epoch", "?"),
        opset=metadata.versions.get("opset"),
        served_network=served_form(evaluation.get("network", {}).get("quantize")),
        image_size=metadata.preprocessing.image_size,
        intensity=metadata.preprocessing.intensity,
        framing=metadata.preprocessing.framing,
        max_patient_age_years=f"{metadata.max_patient_age_years:g}"
        if metadata.max_patient_age_years is not None
        else "(no bound)",
        threshold=f"{metadata.threshold:.4f}",
        threshold_policy=evaluation.get("threshold_policy", "?"),
        **{name: interval(name) for name in INTERVALS},
        brier=f"{test['brier']:.4f}",
        ece=f"{test['ece']:.4f}",
        prevalence=f"{test['prevalence']:.3f}",
        images=test["images"],
        held_out_rows=held_out_rows,
        robustness_rows=robustness_rows,
        **decision_fields(evaluation),
        **framing_fields(evaluation),
        **use_fields(evaluation),
    )


def use_fields(evaluation: dict) -> dict[str, str]:
    """The intended-use check's figures on the external radiographs, as counts of evaluate's
    outcomes (58 of 60 is 96.7%, which a whole percent would show as the intended-use issue's
    97%)."""
    kinds = evaluation.get("intended_use", {}).get("kinds", {})
    parts = []
    for kind, row in kinds.items():
        outcomes = row["outcomes"]
        refused = row["images"] - outcomes.get("answered", 0)
        own = sum(count for outcome, count in outcomes.items() if as_such(kind, outcome))
        parts.append(
            f"{kind.replace('_', ' ')} {refused} of {row['images']} ({own} with its own reason)"
        )
    return {
        "use_images": str(sum(row["images"] for row in kinds.values())),
        "use_rates": ", ".join(parts) or "not measured",
        "use_laterals": str(kinds.get("lateral_chest", {}).get("images", 0)),
        **view_fields(evaluation),
        **reason_card_fields(evaluation),
        **refusal_fields(evaluation),
    }


def named_as_such(kind: str, counts: dict[str, int]) -> int:
    """Of a group of `kind`, the images named with that kind's own reason (`counts`: by the
    kind named; a pediatric call is refused as an adult is, `outside_training_population`)."""
    own = REFUSAL_REASONS[kind]
    return sum(n for named, n in counts.items() if REFUSAL_REASONS.get(named) == own)


def refusal_fields(evaluation: dict) -> dict[str, str]:
    """How many real held-out X-rays the endpoint refuses over the framing shifts, and how
    many of those it names `not_a_chest_xray` (evaluate's `refusals_named`)."""
    names = evaluation.get("worst_framing", {}).get("refusals_named")
    if names is None:
        return {"refusals": "(not counted)", "refusals_not_chest": "(not counted)"}
    return {
        "refusals": str(sum(names.values())),
        "refusals_not_chest": str(names.get("not_a_chest_xray", 0)),
    }


def reason_card_fields(evaluation: dict) -> dict[str, str]:
    """The reason head's cross-validated names of each group of external images, as counts
    of its own kind."""
    reason = evaluation.get("intended_use", {}).get("reason")
    if not reason:
        return {"reason_fitted": "not fitted", "reason_rates": "nothing: the model has no head"}
    named = reason["named"]
    parts = [
        f"{group.replace('_', ' ')} {named_as_such(group.split()[-1], counts)} of "
        f"{sum(counts.values())} as such"
        for group, counts in named.items()
    ]
    images = sum(sum(counts.values()) for counts in named.values())
    return {"reason_fitted": f"{images} external images", "reason_rates": ", ".join(parts)}


def view_fields(evaluation: dict) -> dict[str, str]:
    """The view check's cross-validated figures: how many laterals it was fitted on, and the
    share of each group of external images it calls lateral, as counts."""
    view = evaluation.get("intended_use", {}).get("view_check")
    if not view:
        return {
            "view_laterals": "0",
            "view_kept": "0",
            "view_source": "none",
            "view_rates": "",
        }
    groups = view["called_lateral"]
    laterals = sum(row["images"] for name, row in groups.items() if name.endswith("lateral_chest"))
    kept = groups.get("kept lateral_chest", {}).get("images", 0)
    rate = view["false_rejection_rate"]
    counts = ", ".join(
        f"{name.replace('_', ' ')} {round(row['share'] * row['images'])} of {row['images']}"
        for name, row in groups.items()
    )
    return {
        "view_laterals": str(laterals),
        "view_kept": str(kept),
        "view_source": ", ".join(view["sources"]) or "none",
        "view_rates": f"{counts} (at most {rate:.1%} of validation X-rays under each framing)",
    }


def served_form(quantize: str | None) -> str:
    """How the card names the served network's arithmetic (evaluate's `network` record)."""
    if quantize == "int8":
        return (
            "its convolutions in int8 (onnxruntime static quantization; every figure below "
            "is this int8 network's)"
        )
    if quantize == "none":
        return "in float32"
    return "its arithmetic not recorded by this evaluation"


def gate_form(gate: dict) -> str:
    """How the card names the gate's distance, from evaluate's `ood_gate` record: over every
    feature, in K principal components plus the residual (`reduced`), or in K alone (a zero
    residual); unknown in older records."""
    components, features = gate.get("components"), gate.get("features")
    if components is None or features is None:
        return "its form not recorded by this evaluation"
    if components >= features:
        return f"over all {features:,} features"
    rest = ", plus one residual for the rest" if gate.get("reduced") else ""
    return f"in its {components:,} leading principal components of {features:,} features{rest}"


def decision_fields(evaluation: dict) -> dict[str, str]:
    """The model card's calibration, band, gate and explanation figures."""
    decision, gate = evaluation["decision"], evaluation["ood_gate"]
    explanations = evaluation["explanations"]
    calibration = evaluation["calibration"]
    splits = [s for s in paths.HELD_OUT if s in decision]
    return {
        "calibration_scale": f"{calibration['scale']:.3f}",
        "calibration_shift": f"{calibration['shift']:.3f}",
        "ece_uncalibrated": f"{evaluation['test_uncalibrated']['ece']:.4f}",
        "band_low": f"{decision['low']:.4f}",
        "band_high": f"{decision['high']:.4f}",
        "band_error_rate": f"{decision['error_rate']:.3f}",
        "decision_rows": "\n".join(
            f"| {s} | {decision[s]['share_indeterminate']:.1%} | "
            f"{decision[s]['accuracy_decided']:.3f} | {decision[s]['sensitivity_decided']:.3f} | "
            f"{decision[s]['specificity_decided']:.3f} |"
            for s in splits
        ),
        "gate_form": gate_form(gate),
        "gate_threshold": f"{gate['threshold']:.2f}",
        "gate_frr": f"{gate['false_rejection_rate']:.1%}",
        "gate_rejection_rows": "\n".join(
            f"| {name} | {share:.1%} |" for name, share in gate["false_rejections"].items()
        ),
        "gate_detection_rows": "\n".join(
            f"| {kind} | {share:.1%} |" for kind, share in gate["ood_detection"].items()
        ),
        "deletion_share": f"{explanations['deletion']['share_hot_beats_control']:.0%}",
        "deletion_images": str(explanations["deletion"]["images"]),
        "deletion_gap": f"{explanations['deletion']['median_gap']:.2f}",
        "randomisation": f"{explanations['randomisation']['median_rank_correlation']:.2f}",
    }


def framing_fields(evaluation: dict) -> dict[str, str]:
    """The model card's framing table, its worst case, and the worst held-out split."""
    framing, worst = evaluation["framing"], evaluation["worst_framing"]
    split = evaluation["worst_split"]
    rows = "\n".join(
        f"| {name} | {row['roc_auc']:.3f} | {row['accuracy']:.3f} | {row['sensitivity']:.3f} | "
        f"{row['specificity']:.3f} | {row['share_indeterminate']:.1%} | "
        f"{row['accuracy_decided']:.3f} | {row['refused']:.1%} |"
        for name, row in framing.items()
    )
    summary = ", ".join(
        f"{key} {worst[key]:.3f} ({worst[f'{key}_shift']})"
        for key in ("roc_auc", "sensitivity", "specificity", "accuracy_decided", "refused")
    )
    return {
        "framing_images": str(worst["images"]),
        "framing_rows": rows,
        "worst_framing": summary,
        "worst_framing_specificity": f"{worst['specificity']:.3f} ({worst['specificity_shift']})",
        "worst_framing_sensitivity": f"{worst['sensitivity']:.3f} ({worst['sensitivity_shift']})",
        "worst_split": ", ".join(
            f"{name} {split[key]:.3f} ({split[f'{key}_split']})"
            for name, key in (
                ("AUC", "roc_auc"),
                ("accuracy", "accuracy"),
                ("sensitivity", "sensitivity"),
                ("specificity", "specificity"),
            )
        ),
    }
