"""The ONNX parity check that fails export_onnx, and the canonical form behind the model version."""

import numpy as np

from pneumonia.release.export import canonical
from pneumonia.release.parity import parity


def test_parity_reports_the_largest_difference_and_flipped_labels():
    keras_p = np.array([0.10, 0.49, 0.51, 0.90])
    onnx_p = np.array([0.10, 0.51, 0.51, 0.90 + 2e-5])
    check = parity(keras_p, onnx_p, threshold=0.5)
    assert check["images"] == 4
    assert abs(check["max_abs_diff"] - 0.02) < 1e-12
    assert check["labels_differing"] == 1


def test_identical_predictions_pass():
    probabilities = np.linspace(0, 1, 11)
    check = parity(probabilities, probabilities.copy(), threshold=0.3)
    assert check == {"images": 11, "max_abs_diff": 0.0, "labels_differing": 0}
    with_ties = parity(probabilities, probabilities.copy(), threshold=0.3, tie=1e-4)
    assert with_ties == check | {"labels_tied": 0}


def test_a_tie_at_the_threshold_broken_by_rounding_is_not_a_differing_label():
    # An int8 network's probability on the threshold itself, 1e-7 apart in two runs.
    evaluated = np.array([0.7744, 0.7744 + 5e-8, 0.20, 0.7744 + 3e-4])
    served = np.array([0.7744 - 5e-8, 0.7744 + 5e-8, 0.20, 0.7744 - 3e-4])
    check = parity(evaluated, served, threshold=0.7744, tie=1e-4)
    assert check["labels_tied"] == 1  # the first: both within 1e-4 of the threshold
    assert check["labels_differing"] == 1  # the last: 3e-4 either side is a real difference
    untied = parity(evaluated, served, threshold=0.7744)
    assert untied["labels_differing"] == 2 and "labels_tied" not in untied  # no tie allowed


def small_graph(order: list[int], names: dict[str, str], weight: float = 0.5) -> bytes:
    """Y = (relu(X) + W) * neg(X), with its nodes in `order` and intermediates renamed."""
    from onnx import TensorProto, helper, numpy_helper

    def n(name: str) -> str:
        return names.get(name, name)

    nodes = [
        helper.make_node("Relu", ["X"], [n("r")], name=n("relu")),
        helper.make_node("Neg", ["X"], [n("g")], name=n("neg")),
        helper.make_node("Add", [n("r"), n("W")], [n("s")], name=n("add")),
        helper.make_node("Mul", [n("s"), n("g")], ["Y"], name=n("mul")),
    ]
    graph = helper.make_graph(
        [nodes[i] for i in order],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["unk__12", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["unk__13", 3])],
        [numpy_helper.from_array(np.full(3, weight, dtype=np.float32), n("W"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return canonical(model).SerializeToString(deterministic=True)


def test_equal_graphs_become_equal_bytes_whatever_their_order_and_names():
    import onnxruntime

    reference = small_graph([0, 1, 2, 3], {})
    shuffled = small_graph(
        [1, 0, 2, 3], {"r": "a/merged:0", "g": "unk_7", "s": "x", "W": "const_fold_opt__9"}
    )
    assert shuffled == reference
    assert small_graph([0, 1, 2, 3], {}, weight=0.25) != reference  # a weight change shows

    session = onnxruntime.InferenceSession(reference, providers=["CPUExecutionProvider"])
    x = np.array([[-1.0, 0.0, 2.0]], dtype=np.float32)
    (y,) = session.run(None, {"X": x})
    np.testing.assert_allclose(y, (np.maximum(x, 0) + 0.5) * -x)
    assert [o.name for o in session.get_outputs()] == ["Y"]


def test_the_parity_verdict_holds_each_bound_the_quantization_allows():
    from pneumonia.release.parity import Tolerances, passed

    good = {
        "max_abs_diff": 1e-6,
        "labels_differing": 0,
        "max_rel_diff_distance": 1e-5,
        "use_kinds_differing": 0,
        "gradcam_min_pearson": 0.97,
        "keras": {
            "max_abs_diff": 0.1,
            "max_abs_diff_uncalibrated": 0.05,
            "labels_differing": 2,
            "max_rel_diff_features": 0.08,
        },
    }
    int8, exact = Tolerances(1e-4, 0.25, "int8"), Tolerances(1e-4, 1e-4, "none")
    assert passed(good, int8)
    # Unquantized, Keras must be matched exactly: labels, features and the map included
    assert not passed(good, exact)
    keras_exact = {
        "max_abs_diff": 1e-6,
        "max_abs_diff_uncalibrated": 1e-6,
        "labels_differing": 0,
        "max_rel_diff_features": 1e-6,
    }
    exact_good = good | {"keras": keras_exact, "gradcam_min_pearson": 0.995}
    assert passed(exact_good, exact)
    assert not passed(good | {"keras": keras_exact}, exact)  # the map: 0.99 unquantized
    # ... each of Keras' exact rules on its own: a label, the features, the probabilities
    for change in (
        {"labels_differing": 1},
        {"max_rel_diff_features": 2e-4},
        {"max_abs_diff": 2e-4},
        {"max_abs_diff_uncalibrated": 2e-4},
    ):
        assert not passed(exact_good | {"keras": keras_exact | change}, exact), change
    # Each bound fails the verdict on its own
    for change in (
        {"max_abs_diff": 2e-4},
        {"labels_differing": 1},
        {"max_rel_diff_distance": 2e-3},
        {"use_kinds_differing": 1},
        {"gradcam_min_pearson": 0.9},
        {"keras": good["keras"] | {"max_abs_diff": 0.3}},
        {"keras": good["keras"] | {"max_abs_diff_uncalibrated": 0.3}},
        {"keras": good["keras"] | {"max_rel_diff_features": 0.3}},
    ):
        assert not passed(good | change, int8), change


def test_the_tolerances_follow_the_params():
    from pneumonia.config import ExportParams
    from pneumonia.release.parity import Tolerances

    fields = {"opset": 17, "parity_tolerance": 1e-4, "max_patient_age_years": 17}
    int8 = ExportParams(**fields, quantize="int8", quantization_tolerance=0.2)
    assert Tolerances.of(int8) == Tolerances(1e-4, 0.2, "int8")
    none = ExportParams(**fields, quantize="none", quantization_tolerance=0.2)
    assert Tolerances.of(none) == Tolerances(1e-4, 1e-4, "none")


def test_evaluates_scores_are_read_only_for_the_test_split_in_its_order(tmp_path, monkeypatch):
    import pandas as pd
    import pytest

    from pneumonia.release import parity as module

    files = ["train/NORMAL/a.jpeg", "train/PNEUMONIA/b.jpeg"]
    csv = tmp_path / "predictions.csv"
    pd.DataFrame({"file": files, "probability_pneumonia": [0.1, 0.9]}).to_csv(csv, index=False)
    monkeypatch.setattr(module.paths, "PREDICTIONS", csv)
    monkeypatch.setattr(module, "load_files", lambda split: np.array(files))
    assert module.evaluated_test_scores().tolist() == [0.1, 0.9]
    # Another order (or another split) is refused, not paired row by row
    monkeypatch.setattr(module, "load_files", lambda split: np.array(files[::-1]))
    with pytest.raises(ValueError, match="in order"):
        module.evaluated_test_scores()


def test_the_served_network_is_int8_or_as_converted_and_nothing_else():
    import pytest

    from pneumonia.release.export import served_network

    with pytest.raises(ValueError, match="int8 or none"):
        served_network(None, 64, 17, "int4")  # refused before any conversion
