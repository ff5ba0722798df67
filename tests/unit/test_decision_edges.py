"""The decision's rules at their edges, on cases small enough to compute by hand: the band's
thresholds and report, the gate's threshold and distance, the intended-use head's arrays and
margin."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pneumonia.decision.band import Band, band_metrics, conformal_band
from pneumonia.decision.gate import FeatureGate, fit_feature_model, with_threshold
from pneumonia.decision.use import ANSWERED, NEVER, USE_KINDS, UseHead, fit_use_head

# ---------------------------------------------------------------- the band


def test_the_band_report_of_a_small_case_by_hand():
    band = Band(low=0.3, high=0.7, error_rate=0.05)
    p = np.array([0.1, 0.2, 0.5, 0.5, 0.8, 0.9, 0.05, 0.95, 0.15])
    labels = np.array([0, 1, 0, 1, 1, 0, 0, 1, 0])
    # decisions: N N I I P P N P N -> 7 decided, 5 of them right
    assert band_metrics(labels, p, band) == {
        "share_indeterminate": pytest.approx(2 / 9),
        "accuracy_decided": pytest.approx(5 / 7),
        "sensitivity_decided": pytest.approx(2 / 3),  # pneumonias decided: N P P
        "specificity_decided": pytest.approx(3 / 4),  # normals decided: N P N N
        "pneumonia_called_normal": pytest.approx(1 / 4),  # of 4 pneumonias, one NORMAL
        "normal_called_pneumonia": pytest.approx(1 / 5),  # of 5 normals, one PNEUMONIA
    }


def test_a_band_that_decides_nothing_reports_nan_without_a_warning():
    band = Band(low=0.0, high=1.5, error_rate=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = band_metrics(np.array([0, 1]), np.array([0.2, 0.8]), band)
    assert report["share_indeterminate"] == 1.0
    for name in ("accuracy_decided", "sensitivity_decided", "specificity_decided"):
        assert np.isnan(report[name])
    assert report["pneumonia_called_normal"] == report["normal_called_pneumonia"] == 0.0


def test_the_conformal_band_by_hand():
    normal = np.arange(10) * 0.05  # 0.00 .. 0.45
    pneumonia = (np.arange(10) + 1) * 0.1  # 0.1 .. 1.0
    labels = np.array([0] * 10 + [1] * 10)
    band = conformal_band(labels, np.concatenate([normal, pneumonia]), 0.2, threshold=0.3)
    # rank ceil(0.8 * 11) = 9: high just above the 9th smallest normal (0.40), low the
    # 9th largest pneumonia (0.2)
    assert band == Band(0.2, float(np.nextafter(0.4, 1.0)), 0.2)
    assert band.high > 0.4


# ---------------------------------------------------------------- the gate


def test_the_gate_threshold_by_hand_and_its_rate_recorded():
    gate = FeatureGate(np.zeros(2), np.eye(2))
    held = with_threshold(gate, np.arange(1.0, 11.0), 0.2)  # rank ceil(0.8 * 11) = 9
    assert (held.threshold, held.false_rejection_rate) == (9.0, 0.2)
    np.testing.assert_array_equal(held.mean, gate.mean)
    np.testing.assert_array_equal(held.whitening, gate.whitening)
    assert held.distance(np.array([[3.0, 4.0]])) == pytest.approx([5.0])


def test_the_gate_is_fitted_in_double_precision():
    rng = np.random.default_rng(7)
    features = (rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))).astype(np.float32)
    single = fit_feature_model(features)
    double = fit_feature_model(features.astype(np.float64))
    np.testing.assert_array_equal(single.mean, double.mean)
    np.testing.assert_array_equal(single.whitening, double.whitening)
    assert single.whitening.dtype == np.float64


# ---------------------------------------------------------------- the intended-use head


def head() -> UseHead:
    return UseHead(
        mean=np.array([1.0, 2.0]),
        scale=np.array([2.0, 4.0]),
        weights=np.arange(8, dtype=np.float64).reshape(2, 4),
        bias=np.array([0.5, -1.0, NEVER, 0.0]),
    )


def test_the_head_saves_and_loads_its_arrays_by_name():
    arrays = head().arrays("use_")
    assert sorted(arrays) == [
        "use_bias",
        "use_layout_asymmetry",
        "use_mean",
        "use_scale",
        "use_weights",
    ]
    np.testing.assert_array_equal(arrays["use_scale"], [2.0, 4.0])
    np.testing.assert_array_equal(arrays["use_bias"], [0.5, -1.0, NEVER, 0.0])
    loaded = UseHead.from_arrays({**arrays, "gate_mean": np.zeros(2)}, "use_")
    for name in ("mean", "scale", "weights", "bias"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(head(), name))
    assert sorted(head().arrays()) == ["bias", "layout_asymmetry", "mean", "scale", "weights"]
    assert not loaded.layout_asymmetry
    tilted = UseHead(*(getattr(head(), n) for n in ("mean", "scale", "weights", "bias")), True)
    assert UseHead.from_arrays(tilted.arrays("use_"), "use_").layout_asymmetry
    legacy = {k: v for k, v in head().arrays().items() if k != "layout_asymmetry"}
    assert not UseHead.from_arrays(legacy).layout_asymmetry  # saved before the flag
    assert UseHead.from_arrays(head().arrays(), "").bias[2] == NEVER
    assert UseHead.from_arrays({"gate_mean": np.zeros(2)}, "use_") is None
    assert UseHead.from_arrays(head().arrays(), "use_") is None  # saved without the prefix


def test_the_heads_logits_by_hand():
    # standardised (3, 6) -> (1, 1); @ [[0 1 2 3], [4 5 6 7]] = [4 6 8 10]; + bias
    logits = head().logits(np.array([[3.0, 6.0]], dtype=np.float32))
    np.testing.assert_array_equal(logits, [[4.5, 5.0, 8.0 + NEVER, 10.0]])
    assert head().kinds(np.array([[3.0, 6.0]])) == ["other_body_part"]


def test_the_layouts_asymmetry_by_hand():
    from pneumonia.decision.use import head_inputs, layout_asymmetry
    from pneumonia.images.layout import LAYOUT_GRID

    grid = np.zeros((LAYOUT_GRID, LAYOUT_GRID))
    grid[0, 0], grid[2, 6], grid[5, 3], grid[5, 4] = 1.0, 0.5, 0.3, 0.1
    features = np.concatenate([[7.0, 9.0], grid.reshape(-1)])[None, :]
    expected = np.zeros((LAYOUT_GRID, LAYOUT_GRID // 2))
    # pairs (column c, column 7 - c): (0, 7) in row 0, (1, 6) in row 2, (3, 4) in row 5
    expected[0, 0], expected[2, 1], expected[5, 3] = 1.0, 0.5, 0.2
    np.testing.assert_allclose(layout_asymmetry(features), expected.reshape(1, -1))
    mirrored = np.concatenate([[7.0, 9.0], grid[:, ::-1].reshape(-1)])[None, :]
    np.testing.assert_allclose(layout_asymmetry(mirrored), layout_asymmetry(features))
    symmetric = np.concatenate([[7.0, 9.0], (grid + grid[:, ::-1]).reshape(-1)])[None, :]
    assert not layout_asymmetry(symmetric).any()
    np.testing.assert_array_equal(head_inputs(features, False), features)
    np.testing.assert_allclose(
        head_inputs(features, True), np.concatenate([features, expected.reshape(1, -1)], axis=1)
    )


def test_a_head_with_the_asymmetry_separates_what_only_the_mirror_tells_apart():
    # Two kinds with the same layout values, mirrored: the plain linear head cannot tell a
    # left-right symmetric image from a lopsided one whose cells average the same.
    from pneumonia.images.layout import LAYOUT_GRID

    rng = np.random.default_rng(5)
    cells = LAYOUT_GRID**2

    def images(count: int, lopsided: bool) -> np.ndarray:
        base = rng.uniform(0.3, 0.7, size=(count, LAYOUT_GRID, LAYOUT_GRID // 2))
        other = base if not lopsided else rng.uniform(0.0, 1.0, size=base.shape)
        flip = rng.random(count) < 0.5
        left = np.where(flip[:, None, None], other, base)
        right = np.where(flip[:, None, None], base, other)[:, :, ::-1]
        return np.concatenate([left, right], axis=2).reshape(count, cells)

    features = {ANSWERED: images(400, False), "lateral_chest": images(100, True)}
    test_symmetric, test_lopsided = images(200, False), images(200, True)
    for asymmetry, least in ((True, 0.95), (False, None)):
        fitted = fit_use_head(features, strength=1.0, layout_asymmetry=asymmetry)
        right = np.mean(
            [k == ANSWERED for k in fitted.kinds(test_symmetric)]
            + [k == "lateral_chest" for k in fitted.kinds(test_lopsided)]
        )
        if least is not None:
            assert right >= least
        else:
            assert right < 0.75


def kinds(rng, counts: dict[str, int], dims: int = 5) -> dict[str, np.ndarray]:
    out = {}
    for index, (kind, count) in enumerate(counts.items()):
        centre = np.zeros(dims)
        centre[index] = 3.0
        out[kind] = rng.normal(centre, 1.0, size=(count, dims))
    return out


def test_the_head_is_a_balanced_l2_logistic_regression_on_standardised_features():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(11)
    features = kinds(rng, {ANSWERED: 300, "adult_chest": 20, "other_body_part": 40})
    fitted = fit_use_head(features, strength=0.2)
    x = np.concatenate(list(features.values()))
    y = np.repeat([0, 1, 2], [300, 20, 40])
    np.testing.assert_allclose(fitted.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(fitted.scale, x.std(axis=0) + 1e-6, rtol=1e-12)
    # the optimum itself, solved far tighter by another solver: the head's solver is free
    reference = LogisticRegression(C=0.2, class_weight="balanced", max_iter=10_000, tol=1e-10)
    reference.fit((x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6), y)
    columns = [USE_KINDS.index(kind) for kind in features]
    np.testing.assert_allclose(fitted.weights[:, columns], reference.coef_.T, atol=5e-5)
    np.testing.assert_allclose(fitted.bias[columns], reference.intercept_, atol=5e-5)
    assert fitted.bias[USE_KINDS.index("lateral_chest")] == NEVER


def test_two_kinds_split_sklearns_binary_coefficients_in_half():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(12)
    features = kinds(rng, {ANSWERED: 200, "lateral_chest": 30})
    fitted = fit_use_head(features)
    x = np.concatenate(list(features.values()))
    reference = LogisticRegression(C=0.05, class_weight="balanced", max_iter=10_000, tol=1e-10)
    reference.fit((x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6), np.repeat([0, 1], [200, 30]))
    answered, lateral = USE_KINDS.index(ANSWERED), USE_KINDS.index("lateral_chest")
    np.testing.assert_allclose(fitted.weights[:, answered], -reference.coef_[0] / 2, atol=5e-5)
    np.testing.assert_allclose(fitted.weights[:, lateral], reference.coef_[0] / 2, atol=5e-5)
    assert fitted.bias[answered] == pytest.approx(-reference.intercept_[0] / 2, abs=5e-5)
    assert fitted.bias[lateral] == pytest.approx(reference.intercept_[0] / 2, abs=5e-5)


def test_the_head_names_what_it_lacks():
    rng = np.random.default_rng(13)
    with pytest.raises(ValueError, match=r"^the head needs pediatric_chest and another kind"):
        fit_use_head(kinds(rng, {ANSWERED: 20, "adult_chest": 0}))


def test_the_margin_by_hand():
    from pneumonia.decision.use import with_margin

    # one feature; answered logit 0, other_body_part logit = the feature: the excess of
    # ten images is 1..10, so at rate 0.2 the margin is the 9th smallest (rank ceil(8.8))
    flat = UseHead(
        mean=np.zeros(1),
        scale=np.ones(1),
        weights=np.array([[0.0, 0.0, 0.0, 1.0]]),
        bias=np.array([0.0, NEVER, NEVER, 0.0]),
    )
    features = np.arange(1.0, 11.0)[:, None]
    held = with_margin(flat, features, 0.2)
    np.testing.assert_array_equal(held.bias, [9.0, NEVER, NEVER, 0.0])
    np.testing.assert_array_equal(flat.bias, [0.0, NEVER, NEVER, 0.0])  # not changed in place
    assert with_margin(flat, features, 0.2, [features + 5]).bias[0] == 14.0
    assert with_margin(flat, -features, 0.2).bias[0] == 0.0  # never lowered
    np.testing.assert_array_equal(held.weights, flat.weights)
