"""model.json's contract (pneumonia.decision.contract) without a graph: its checks, the
version formula computed here by hand, and what a version covers."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from pneumonia.decision.contract import MetadataError, ModelMetadata, model_version
from pneumonia.decision.view import VIEW_FEATURES

GRAPH = b"stand-in bytes: the version hashes whatever model.onnx holds"
VIEW = {
    "weights": tuple(0.01 * i for i in range(VIEW_FEATURES)),
    "bias": -1.5,
    "threshold": 2.25,
    "false_rejection_rate": 0.003,
}


def fields(**changes) -> dict:
    base = {
        "threshold": 0.6741,
        "labels": ("NORMAL", "PNEUMONIA"),
        "input_name": "image",
        "outputs": {
            "probability": "probability_calibrated",
            "ood_distance": "ood_distance",
            "cam": "cam",
            "features": "features",
        },
        "preprocessing": {
            "image_size": 128,
            "intensity": "clahe",
            "clahe_clip_limit": 2.0,
            "clahe_tile_grid": 8,
            "framing": "thorax",
        },
        "calibration": {"method": "platt", "scale": 1.243, "shift": 2.042},
        "decision_band": {"low": 0.299, "high": 0.956, "error_rate": 0.02},
        "ood_gate": {"threshold": 25.9, "false_rejection_rate": 0.01},
        "training_data_sha256": "0" * 64,
    }
    return {**base, **changes}


def test_the_version_is_sha256_of_the_bytes_a_newline_and_the_sorted_answering_json():
    metadata = ModelMetadata.for_graph(GRAPH, fields(max_patient_age_years=17))
    # docs/serving.md#model-version's list, written out: an oracle apart from ANSWERING.
    answering = {
        key: json.loads(metadata.to_json())[key]
        for key in (
            "labels",
            "input_name",
            "outputs",
            "preprocessing",
            "threshold",
            "calibration",
            "decision_band",
            "ood_gate",
            "max_patient_age_years",
        )
    }
    answering["outputs"] = {k: v for k, v in answering["outputs"].items() if v is not None}
    text = json.dumps(answering, sort_keys=True, separators=(",", ":"))
    expected = "sha256-" + hashlib.sha256(GRAPH + b"\n" + text.encode()).hexdigest()[:12]
    assert metadata.model_version == expected
    assert model_version(GRAPH, metadata.answering()) == expected
    metadata.check_describes(GRAPH)  # the bytes it was written for: no error


@pytest.mark.parametrize(
    "change",
    [
        {"threshold": 0.7},
        {"labels": ("NORMAL", "SICK")},
        {"input_name": "x"},
        {"decision_band": {"low": 0.3, "high": 0.956, "error_rate": 0.02}},
        {"ood_gate": {"threshold": 26.0, "false_rejection_rate": 0.01}},
        {"calibration": {"method": "platt", "scale": 1.0, "shift": 2.042}},
        {"max_patient_age_years": 18},
        {"view_check": VIEW},
        {"view_check": {**VIEW, "threshold": 2.5}},
        {"view_check": {**VIEW, "bias": -1.25}},
    ],
    ids=lambda change: next(iter(change)) + str(change.get("view_check", {}).get("bias", "")),
)
def test_every_answering_field_is_in_the_version(change):
    base: dict = {"max_patient_age_years": 17}
    view = change.get("view_check")
    if view is not None and view != VIEW:
        base["view_check"] = VIEW  # its threshold or bias alone differs
    before = ModelMetadata.for_graph(GRAPH, fields(**base))
    after = ModelMetadata.for_graph(GRAPH, fields(**{**base, **change}))
    assert after.model_version != before.model_version
    edited = ModelMetadata.from_json(json.dumps({**json.loads(before.to_json()), **change}))
    with pytest.raises(MetadataError, match="edited after its export"):
        edited.check_describes(GRAPH)


def test_what_does_not_change_an_answer_is_not_in_the_version():
    before = ModelMetadata.for_graph(GRAPH, fields())
    after = ModelMetadata.for_graph(
        GRAPH, fields(training_data_sha256="1" * 64, metrics={"test": {"auc": 0.9}})
    )
    assert after.model_version == before.model_version
    with pytest.raises(MetadataError):
        before.check_describes(GRAPH + b"another graph")


def test_unset_optional_fields_keep_an_older_model_jsons_version():
    metadata = ModelMetadata.for_graph(GRAPH, fields())
    assert "max_patient_age_years" not in metadata.answering()
    assert "use" not in metadata.answering()["outputs"]
    later = ("max_patient_age_years", "recalibration", "site", "operating_point", "view_check")
    older = {k: v for k, v in json.loads(metadata.to_json()).items() if k not in later}
    older["outputs"].pop("use")
    ModelMetadata.from_json(json.dumps(older)).check_describes(GRAPH)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"threshold": 0.99}, "does not contain the threshold"),
        ({"threshold": 0.1}, "does not contain the threshold"),
        ({"labels": ["SAME", "SAME"]}, "two distinct names"),
        ({"labels": ["", "PNEUMONIA"]}, "two distinct names"),
        ({"threshold": 1.5}, "threshold"),
        ({"calibration": {"method": "platt", "scale": 0.0, "shift": 0.0}}, "calibration.scale"),
        ({"ood_gate": {"threshold": 25.9, "false_rejection_rate": 0.5}}, "false_rejection_rate"),
        ({"max_patient_age_years": 0}, "max_patient_age_years"),
        ({"view_check": {**VIEW, "weights": VIEW["weights"][:-1]}}, "view_check.weights"),
        ({"view_check": {**VIEW, "weights": (math.nan,) * VIEW_FEATURES}}, "view_check"),
        ({"view_check": {**VIEW, "false_rejection_rate": 0.0}}, "view_check.false_rejection"),
        # a model exported with the body-part check, since taken out of the decision
        ({"view_check": {**VIEW, "body_threshold": 3.75}}, "view_check.body_threshold"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_a_malformed_model_json_is_one_error_naming_the_field(change, where):
    text = json.dumps({**fields(), "model_version": "sha256-" + "0" * 12, **change})
    with pytest.raises(MetadataError, match=where):
        ModelMetadata.from_json(text)


def test_the_label_and_decision_rules():
    metadata = ModelMetadata.for_graph(GRAPH, fields())
    assert [metadata.label_for(p) for p in (0.6740, 0.6741, 0.99)] == [
        "NORMAL",
        "PNEUMONIA",
        "PNEUMONIA",
    ]
    assert [metadata.decision_for(p) for p in (0.0, 0.2989, 0.299, 0.5, 0.9559, 0.956, 1.0)] == [
        "NORMAL",
        "NORMAL",
        "INDETERMINATE",
        "INDETERMINATE",
        "INDETERMINATE",
        "PNEUMONIA",
        "PNEUMONIA",
    ]


SITE_MAP = {"method": "platt", "scale": 0.8, "shift": -0.6}


def test_a_sites_recalibration_answers_and_so_is_a_new_version():
    shipped = ModelMetadata.for_graph(GRAPH, fields())
    site = ModelMetadata.for_graph(GRAPH, fields(recalibration=SITE_MAP, site="children-north"))
    assert site.model_version != shipped.model_version
    assert site.answering()["recalibration"] == SITE_MAP
    other = ModelMetadata.for_graph(
        GRAPH, fields(recalibration={**SITE_MAP, "shift": -0.5}, site="children-north")
    )
    assert other.model_version != site.model_version
    # who fitted it and the rule it followed are records, not answers
    renamed = ModelMetadata.for_graph(
        GRAPH,
        fields(
            recalibration=SITE_MAP,
            site="elsewhere",
            operating_point={"policy": "youden", "target_sensitivity": 0.9},
        ),
    )
    assert renamed.model_version == site.model_version


def test_the_served_probability_is_the_sites_platt_map_on_the_graphs_logit():
    site = ModelMetadata.for_graph(GRAPH, fields(recalibration=SITE_MAP))
    graph = np.array([0.1, 0.5, 0.9, 1.0])
    expected = [1 / (1 + math.exp(-(0.8 * math.log(p / (1 - p)) - 0.6))) for p in (0.1, 0.5, 0.9)]
    served = site.served(graph)
    assert served[:3] == pytest.approx(expected, rel=1e-12)
    assert 0.999 < served[3] < 1.0  # a saturated graph output stays finite
    shipped = ModelMetadata.for_graph(GRAPH, fields())
    assert shipped.served(graph) is graph


@pytest.mark.parametrize("site", ["North Site", "-north", "a/b", "x" * 64, ""])
def test_a_site_name_is_a_lower_case_word(site):
    with pytest.raises(Exception, match="site"):
        ModelMetadata.for_graph(GRAPH, fields(site=site))


def test_model_json_is_indented_json_ending_in_a_newline_and_loads_back(tmp_path):
    metadata = ModelMetadata.for_graph(GRAPH, fields(max_patient_age_years=17))
    text = metadata.to_json()
    assert text == json.dumps(json.loads(text), indent=2) + "\n"
    assert text.startswith('{\n  "model_version": "sha256-')
    assert '\n  "labels": [\n    "NORMAL",\n    "PNEUMONIA"\n  ],\n' in text
    (tmp_path / "model.json").write_text(text)
    assert ModelMetadata.load(tmp_path / "model.json") == metadata


def test_every_problem_of_a_model_json_is_named_in_one_message():
    text = json.dumps({**fields(threshold=2.0, input_name=""), "model_version": "sha256-x"})
    with pytest.raises(MetadataError) as refused:
        ModelMetadata.from_json(text)
    message = str(refused.value)
    assert message.startswith("model.json: model_version: String should match pattern")
    assert message.count("; ") == 2 and "; threshold: " in message and "; input_name: " in message
    whole = json.dumps({**fields(labels=["A", "A"]), "model_version": "sha256-" + "0" * 12})
    with pytest.raises(MetadataError) as refused:
        ModelMetadata.from_json(whole)
    assert str(refused.value) == (
        "model.json: model.json: Value error, labels ('A', 'A') are not two distinct names"
    )


def test_a_model_json_edited_after_export_is_refused_saying_so():
    metadata = ModelMetadata.for_graph(GRAPH, fields())
    edited = metadata.model_copy(update={"threshold": 0.7})
    actual = edited.content_version(GRAPH)
    with pytest.raises(MetadataError) as refused:
        edited.check_describes(GRAPH)
    assert str(refused.value) == (
        f"model.json says {metadata.model_version}, but model.onnx with model.json's answering "
        f"fields gives {actual}: the files come from different exports, or model.json was "
        "edited after its export"
    )


def test_a_version_is_never_computed_over_nan():
    with pytest.raises(ValueError):
        model_version(GRAPH, {"threshold": float("nan")})


def test_the_view_check_serving_builds_is_the_one_model_json_holds():
    spec = ModelMetadata.for_graph(GRAPH, fields(view_check=VIEW)).view_check
    assert spec is not None
    check = spec.check()
    np.testing.assert_allclose(check.weights, VIEW["weights"])
    assert (check.bias, check.threshold) == (-1.5, 2.25)
    rows = np.zeros((1, VIEW_FEATURES))  # a zero row scores the bias alone
    assert (check.scores(rows) == -1.5).all() and not check.lateral(rows)[0]
