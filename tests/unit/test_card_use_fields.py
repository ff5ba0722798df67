"""The model card's intended-use fields come from evaluate's report, counts included."""

from pneumonia.release.card import use_fields


def test_the_card_counts_the_laterals_the_check_was_fitted_on():
    report = {
        "intended_use": {
            "kinds": {
                "adult_chest": {"images": 75, "refused": 0.893, "refused_as_such": 0.867},
                "lateral_chest": {"images": 3, "refused": 1.0, "refused_as_such": 1 / 3},
            }
        }
    }
    fields = use_fields(report)
    assert fields["use_laterals"] == "3"
    assert fields["use_images"] == "78"
    assert "lateral chest 100% of 3 (33% with its own reason)" in fields["use_rates"]
    assert use_fields({}) == {"use_images": "0", "use_rates": "not measured", "use_laterals": "0"}


def test_the_card_names_the_network_it_exports_and_how_it_was_trained():
    from pneumonia.release.card import network_description

    assert network_description("efficientnet_lite0", 3_413_729) == (
        "EfficientNet-Lite0 (3.4M parameters) fine-tuned from ImageNet weights"
    )
    assert network_description("resnet", 108_001) == (
        "Keras CNN (108k parameters) trained from scratch"
    )
    assert network_description("simple", 2_500_000).endswith("trained from scratch")
