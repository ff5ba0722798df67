"""The model card's intended-use fields come from evaluate's report, counts included."""

from pneumonia.release.card import use_fields


def test_the_card_counts_the_laterals_the_check_was_fitted_on_from_the_outcomes():
    report = {
        "intended_use": {
            "kinds": {
                "adult_chest": {
                    "images": 60,
                    "outcomes": {
                        "answered": 1,
                        "refused as adult_chest": 57,
                        "refused by the gate as adult_chest": 1,
                        "refused as other_body_part": 1,
                    },
                },
                "lateral_chest": {
                    "images": 3,
                    "outcomes": {
                        "refused as lateral_chest": 1,
                        "refused as adult_chest": 1,
                        "refused before the model (not_a_chest_xray)": 1,
                    },
                },
            }
        }
    }
    fields = use_fields(report)
    assert fields["use_laterals"] == "3"
    assert fields["use_images"] == "63"
    assert "lateral chest 3 of 3 (1 with its own reason)" in fields["use_rates"]
    # counts, not whole percents: 58 of 60 (96.7%) is not shown as 97%
    assert "adult chest 59 of 60 (58 with its own reason)" in fields["use_rates"]
    assert use_fields({})["use_rates"] == "not measured"
    assert use_fields({})["view_laterals"] == "0"


def test_the_card_counts_what_the_view_check_calls_lateral():
    report = {
        "intended_use": {
            "kinds": {},
            "view_check": {
                "false_rejection_rate": 0.003,
                "sources": ["a/b@0123"],
                "called_lateral": {
                    "committed lateral_chest": {"images": 3, "share": 2 / 3},
                    "kept lateral_chest": {"images": 32, "share": 31 / 32},
                    "kept adult_chest": {"images": 202, "share": 0.0},
                },
            },
        }
    }
    fields = use_fields(report)
    assert fields["view_laterals"] == "35"
    assert fields["view_kept"] == "32"
    assert fields["view_source"] == "a/b@0123"
    assert "committed lateral chest 2 of 3" in fields["view_rates"]
    assert "kept lateral chest 31 of 32" in fields["view_rates"]
    assert "kept adult chest 0 of 202" in fields["view_rates"]
    assert fields["view_rates"].endswith("(at most 0.3% of validation X-rays under each framing)")


def test_the_card_names_the_network_it_exports_and_how_it_was_trained():
    from pneumonia.release.card import network_description

    assert network_description("efficientnet_lite0", 3_413_729) == (
        "EfficientNet-Lite0 (3.4M parameters) fine-tuned from ImageNet weights"
    )
    assert network_description("efficientnet_lite0_stride16", 794_977) == (
        "EfficientNet-Lite0 cut at output stride 16 (795k parameters), fine-tuned from "
        "ImageNet weights"
    )
    assert network_description("resnet", 108_001) == (
        "Keras CNN (108k parameters) trained from scratch"
    )
    assert network_description("simple", 2_500_000).endswith("trained from scratch")


def test_the_card_names_the_gates_form_from_evaluates_record():
    from pneumonia.release.card import decision_fields, gate_form

    reduced = {"components": 256, "features": 2256, "reduced": True}
    assert gate_form(reduced) == (
        "in its 256 leading principal components of 2,256 features, plus one residual for the rest"
    )
    assert gate_form(reduced | {"reduced": False}) == (
        "in its 256 leading principal components of 2,256 features"
    )
    assert gate_form({"components": 2256, "features": 2256}) == "over all 2,256 features"
    assert gate_form({}) == "its form not recorded by this evaluation"
    # AND decision_fields reads it from the ood_gate record
    evaluation = {
        "decision": {"low": 0.4, "high": 0.6, "error_rate": 0.03},
        "ood_gate": {
            "threshold": 100.0,
            "false_rejection_rate": 0.01,
            "components": 400,
            "features": 400,
            "false_rejections": {},
            "ood_detection": {},
        },
        "explanations": {
            "deletion": {"share_hot_beats_control": 0.6, "images": 50, "median_gap": 0.1},
            "randomisation": {"median_rank_correlation": 0.1},
        },
        "calibration": {"scale": 1.0, "shift": 0.0},
        "test_uncalibrated": {"ece": 0.02},
    }
    assert decision_fields(evaluation)["gate_form"] == "over all 400 features"


def test_the_card_says_which_network_its_figures_are_of():
    from pneumonia.release.card import served_form

    assert served_form("int8").startswith("its convolutions in int8")
    assert "every figure below is this int8 network's)" in served_form("int8")
    assert served_form("none") == "in float32"
    assert served_form(None) == "its arithmetic not recorded by this evaluation"


def test_the_card_counts_what_the_reason_head_names_each_group():
    report = {
        "intended_use": {
            "kinds": {},
            "reason": {
                "strength": 0.05,
                "named": {
                    "kept lateral_chest": {"adult_chest": 1, "lateral_chest": 31},
                    "committed other_body_part": {"lateral_chest": 2, "other_body_part": 43},
                },
            },
        }
    }
    fields = use_fields(report)
    assert fields["reason_fitted"] == "77 external images"
    assert "kept lateral chest 31 of 32 as such" in fields["reason_rates"]
    assert "committed other body part 43 of 45 as such" in fields["reason_rates"]
    assert use_fields({})["reason_fitted"] == "not fitted"


def test_the_card_counts_a_pediatric_call_as_an_adults_reason_and_the_held_out_names():
    report = {
        "intended_use": {
            "kinds": {},
            "reason": {
                "named": {
                    "kept adult_chest": {"adult_chest": 200, "pediatric_chest": 1, "other": 1},
                    "committed other_body_part": {"other_body_part": 68, "pediatric_chest": 2},
                }
            },
        },
        "worst_framing": {
            "refusals_named": {
                "lateral_view": 11,
                "not_a_chest_xray": 2,
                "outside_training_population": 72,
            }
        },
    }
    fields = use_fields(report)
    assert "kept adult chest 201 of 202 as such" in fields["reason_rates"]
    assert "committed other body part 68 of 70 as such" in fields["reason_rates"]
    assert (fields["refusals"], fields["refusals_not_chest"]) == ("85", "2")
    assert use_fields({})["refusals"] == "(not counted)"
