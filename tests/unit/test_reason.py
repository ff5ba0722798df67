"""The refusal's reason head (pneumonia.decision.reason): its input, its folding into
reason.onnx (run by a real onnxruntime session), its kept statistics and its cross-validated
names in evaluate."""

from __future__ import annotations

import numpy as np
import pytest

from pneumonia.decision.reason import (
    REASON_FEATURES,
    REASON_INPUTS,
    REASON_OUTPUT,
    REASON_SIZE,
    fit_reason_head,
    fold_head,
    reason_input,
    reason_kind,
    reason_named,
)
from pneumonia.decision.use import USE_KINDS, UseHead, refused_kind
from pneumonia.decision.view import VIEW_FEATURES, VIEW_GRID
from pneumonia.evaluation.view import (
    VIEW_SHIFTS,
    Kept,
    Reasons,
    fit_and_measure_view,
    load_kept,
    named,
    save_kept,
)


def random_head(inputs: int, seed: int = 0, asymmetry: bool = False) -> UseHead:
    rng = np.random.default_rng(seed)
    return UseHead(
        mean=rng.normal(size=inputs),
        scale=rng.uniform(0.5, 2.0, size=inputs),
        weights=rng.normal(size=(inputs, len(USE_KINDS))),
        bias=rng.normal(size=len(USE_KINDS)),
        layout_asymmetry=asymmetry,
    )


def test_the_folded_head_gives_the_heads_logits():
    head = random_head(20)
    x = np.random.default_rng(1).normal(size=(7, 20))
    weights, bias = fold_head(head)
    np.testing.assert_allclose(x @ weights + bias, head.logits(x), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="as they are"):
        fold_head(random_head(20, asymmetry=True))


def test_the_input_is_the_whole_image_squared_in_zero_to_one():
    gray = np.zeros((300, 500), dtype=np.float64)
    gray[:, 250:] = 1.0  # right half white
    image = reason_input(gray)
    assert image.shape == (REASON_SIZE, REASON_SIZE, 1) and image.dtype == np.float32
    assert image[:, : REASON_SIZE // 2 - 1].max() == 0.0
    assert image[:, REASON_SIZE // 2 + 1 :].min() == 1.0


def test_the_intended_use_heads_kind_for_a_gate_refusal_is_its_runner_up_if_it_says_pediatric():
    assert refused_kind(np.array([5.0, 1.0, 3.0, 2.0])) == "lateral_chest"
    assert refused_kind(np.array([0.0, 1.0, 3.0, 4.0])) == "other_body_part"


def test_evaluate_names_a_refusal_as_serving_does_with_the_view_call_on_top():
    logits = np.array([0.0, 3.0, 1.0, 2.0])  # an adult chest by the reason head
    assert reason_named(logits, False) == "adult_chest"
    assert reason_named(logits, True) == "lateral_chest"
    body_part = np.array([0.0, 1.0, 3.0, 4.0])  # another body part stands over a lateral call
    assert reason_named(body_part, True) == "other_body_part"
    assert reason_named(None, True) is None


def test_a_refused_image_the_reason_head_calls_pediatric_is_outside_the_training_population():
    """Not its runner-up: a chest X-ray the model refused all the same is a chest X-ray unlike
    the ones it answers, however close another body part's logit comes."""
    from pneumonia.decision.use import REFUSAL_REASONS

    logits = np.array([5.0, 1.0, 3.0, 4.9])
    assert reason_kind(logits) == "pediatric_chest"
    assert REFUSAL_REASONS[reason_named(logits, False)] == "outside_training_population"
    assert reason_named(logits, True) == "lateral_chest"  # the view check's call stands
    assert reason_kind(np.array([0.0, 1.0, 3.0, 4.0])) == "other_body_part"


def test_an_8_bit_and_a_16_bit_copy_reach_the_fixed_network_alike():
    """The decoder keeps each file's depth; the reason head's input is in [0, 1] for every
    depth, as the float training X-rays are."""
    ramp = np.linspace(0.0, 1.0, 300 * 200).reshape(300, 200)
    eight = np.round(ramp * 255).astype(np.uint8)
    sixteen = np.round(ramp * 65535).astype(np.uint16)
    inputs = [reason_input(image) for image in (ramp.astype(np.float32), eight, sixteen)]
    assert all(image.min() >= 0.0 and image.max() <= 1.0 for image in inputs)
    np.testing.assert_allclose(inputs[1], inputs[0], atol=1 / 255)
    np.testing.assert_allclose(inputs[2], inputs[0], atol=1e-4)


def test_reason_onnx_computes_the_head_on_the_networks_features(tmp_path):
    """A stand-in network (a fixed projection of the pixels to REASON_FEATURES values, a real
    ONNX graph) with the head folded in, run by onnxruntime, against numpy."""
    import onnx
    from onnx import helper, numpy_helper

    from pneumonia.release.export import canonical
    from pneumonia.release.reason import with_head
    from pneumonia.serving import inference

    rng = np.random.default_rng(2)
    pixels = REASON_SIZE * REASON_SIZE
    projection = rng.normal(scale=0.01, size=(pixels, REASON_FEATURES)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", [REASON_INPUTS[0]], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "projection"], ["features"]),
        ],
        "stand_in",
        [
            helper.make_tensor_value_info(
                REASON_INPUTS[0], onnx.TensorProto.FLOAT, ["batch", REASON_SIZE, REASON_SIZE, 1]
            )
        ],
        [helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["batch", 1280])],
        [numpy_helper.from_array(projection, "projection")],
    )
    network = canonical(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    head = random_head(REASON_FEATURES + VIEW_FEATURES, seed=3)
    session = inference.session(with_head(network.SerializeToString(), head))
    images = rng.uniform(size=(3, REASON_SIZE, REASON_SIZE, 1)).astype(np.float32)
    layout = rng.normal(size=(3, VIEW_FEATURES)).astype(np.float32)
    logits = session.run([REASON_OUTPUT], {REASON_INPUTS[0]: images, REASON_INPUTS[1]: layout})
    features = images.reshape(3, -1).astype(np.float64) @ projection
    expected = head.logits(np.concatenate([features, layout], axis=1))
    np.testing.assert_allclose(logits[0], expected, rtol=1e-4, atol=1e-3)


def test_the_committed_statistics_keep_the_reason_features():
    (chexpert,) = load_kept()
    assert chexpert.reasons is not None and len(chexpert.reasons) == len(chexpert.kinds)
    assert all(
        rows.shape == (len(VIEW_SHIFTS), REASON_FEATURES + VIEW_FEATURES)
        for rows in chexpert.reasons
    )
    # the view rows are the reason rows' last columns, row for row
    np.testing.assert_array_equal(chexpert.reasons[0][:, REASON_FEATURES:], chexpert.rows[0])


def test_reason_features_of_another_shape_are_refused(tmp_path):
    grids = np.zeros((2, len(VIEW_SHIFTS), VIEW_GRID, VIEW_GRID))
    source = {"repository": "a/b", "commit": "0" * 40, "licence": "none"}
    kinds = ["lateral_chest", "adult_chest"]
    save_kept(
        tmp_path / "ok.npz", grids, kinds, ["x", "y"], source, np.ones((2, len(VIEW_SHIFTS), 1280))
    )
    (kept,) = load_kept(tmp_path)
    assert kept.reasons is not None and kept.reasons[1][:, :REASON_FEATURES].min() == 1.0
    save_kept(tmp_path / "ok.npz", grids, kinds, ["x", "y"], source, np.ones((2, 3, 1280)))
    with pytest.raises(ValueError, match="reason features of shape"):
        load_kept(tmp_path)


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("answered", "answered"),
        (
            "refused before the model (not_a_chest_xray)",
            "refused before the model (not_a_chest_xray)",
        ),
        ("refused as other_body_part", "refused as lateral_chest"),
        ("refused by the gate as adult_chest", "refused as lateral_chest"),
        ("refused by the view check as lateral_chest", "refused as lateral_chest"),
    ],
)
def test_the_reason_head_names_only_what_the_model_refused(outcome, expected):
    assert named(outcome, "lateral_chest") == expected


def synthetic(kind: str, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Reason rows of `count` images of a kind, separable by kind in the reason features'
    first columns; their view rows (the last columns) all zero, so the view checks call
    none of them anything."""
    centre = np.zeros(REASON_FEATURES)
    centre[USE_KINDS.index(kind) * 4 : USE_KINDS.index(kind) * 4 + 4] = 6.0
    images = []
    for _ in range(count):
        view = np.zeros((len(VIEW_SHIFTS), VIEW_FEATURES))
        features = centre + rng.normal(size=(len(VIEW_SHIFTS), REASON_FEATURES))
        images.append(np.concatenate([features, view], axis=1))
    return images


def test_evaluate_names_each_refusal_by_a_reason_head_fitted_without_it():
    """Images the model refused with the wrong reason (the head's kinds below) are named by
    the cross-validated reason head; answered ones stay answered; kept laterals, which have
    no network features, get a name too (as if refused)."""
    rng = np.random.default_rng(4)
    training = synthetic("pediatric_chest", 40, rng)
    kinds = ["adult_chest"] * 10 + ["lateral_chest"] * 6 + ["other_body_part"] * 10
    external = [row for kind in kinds for row in synthetic(kind, 1, rng)]
    head_outcomes = {i: "refused as other_body_part" for i in range(len(kinds))}
    head_outcomes[0] = "answered"
    kept_rows = synthetic("lateral_chest", 8, rng)
    kept = [
        Kept(
            ["lateral_chest"] * 8,
            [rows[:, REASON_FEATURES:] for rows in kept_rows],
            "a/b@0",
            kept_rows,
        )
    ]
    _, head, report = fit_and_measure_view(
        [rows[:, REASON_FEATURES:] for rows in training],
        [rows[:, REASON_FEATURES:] for rows in training[:20]],
        kinds,
        [rows[:, REASON_FEATURES:] for rows in external],
        head_outcomes,
        kept,
        0.05,
        seed=0,
        reasons=Reasons(training, external),
    )
    assert head is not None
    figures = report["kinds"]
    assert figures["adult_chest"]["outcomes"] == {"answered": 1, "refused as adult_chest": 9}
    assert figures["other_body_part"]["refused_as_such"] == 1.0
    assert report["kinds_before_reason"]["adult_chest"]["refused_as_such"] == 0.0
    assert report["reason"]["named"]["kept lateral_chest"] == {"lateral_chest": 8}
    assert figures["lateral_chest"]["refused_as_such"] == 1.0
    assert report["view_check"]["called_lateral"]["kept lateral_chest"]["share"] == 0.0


def test_kept_statistics_without_reason_features_are_refused_with_the_head():
    rng = np.random.default_rng(5)
    rows = [r[:, REASON_FEATURES:] for r in synthetic("lateral_chest", 2, rng)]
    with pytest.raises(ValueError, match="recompute them"):
        fit_and_measure_view(
            rows,
            rows,
            [],
            [],
            {},
            [Kept(["lateral_chest"] * 2, rows, "a/b@0")],
            0.05,
            0,
            Reasons(rows, []),
        )


def test_the_head_needs_the_answered_kind():
    with pytest.raises(ValueError, match="pediatric_chest"):
        fit_reason_head({"adult_chest": np.ones((3, 2)), "lateral_chest": np.zeros((3, 2))}, 0.05)


def test_the_body_part_prior_raises_only_the_other_body_parts_logit():
    from pneumonia.decision.use import NEVER, fit_use_head

    rng = np.random.default_rng(4)
    rows = {
        "pediatric_chest": rng.normal(0, 1, (60, 5)),
        "adult_chest": rng.normal(2, 1, (20, 5)),
        "other_body_part": rng.normal(-2, 1, (20, 5)),
    }
    plain = fit_use_head(rows, 0.05)
    head = fit_reason_head(rows, 0.05, body_part_prior=1.5)
    body_part = USE_KINDS.index("other_body_part")
    np.testing.assert_array_equal(head.weights, plain.weights)
    np.testing.assert_allclose(head.bias - plain.bias, np.eye(len(USE_KINDS))[body_part] * 1.5)
    # A head fitted without other body parts never names one, prior or not.
    del rows["other_body_part"]
    assert fit_reason_head(rows, 0.05, body_part_prior=1.5).bias[body_part] == NEVER
