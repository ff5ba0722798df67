"""Calibration, the indeterminate band and the gate's distance, on data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from pneumonia.decision.band import Band, band_metrics, conformal_band, conformal_quantile
from pneumonia.decision.calibration import Calibration, fit_calibration, sigmoid
from pneumonia.decision.gate import fit_feature_model, with_threshold


def test_platt_scaling_recovers_the_scale_and_shift_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 20_000)
    labels = (rng.random(20_000) < sigmoid(0.5 * logits - 1.0)).astype(int)
    fitted = fit_calibration(labels, logits)
    assert fitted.scale == pytest.approx(0.5, abs=0.03)
    assert fitted.shift == pytest.approx(-1.0, abs=0.06)
    # calibrated probabilities match the observed frequencies in every decile
    p = fitted.apply(logits)
    edges = np.quantile(p, np.linspace(0, 1, 11))
    which = np.clip(np.digitize(p, edges[1:-1]), 0, 9)
    for b in range(10):
        assert abs(p[which == b].mean() - labels[which == b].mean()) < 0.03


def test_calibration_keeps_the_ranking():
    calibration = Calibration(scale=0.7, shift=0.4)
    p = calibration.apply(np.linspace(-8, 8, 101))
    assert np.all(np.diff(p) > 0)


def test_a_logit_that_does_not_rank_is_refused():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1, 500)
    with pytest.raises(ValueError, match="does not rank"):
        fit_calibration((logits < 0).astype(int), logits)


def test_conformal_quantile_is_the_finite_sample_rank():
    scores = np.arange(1, 100, dtype=float)  # 99 scores
    assert conformal_quantile(scores, 0.9) == 90.0  # ceil(0.9 * 100) = 90th smallest
    assert conformal_quantile(scores, 0.999) == 99.0  # capped at the largest


def test_the_band_holds_its_error_rate_on_fresh_data_from_the_same_distribution():
    rng = np.random.default_rng(2)

    def draw(n):
        labels = (rng.random(n) < 0.7).astype(int)
        p = sigmoid(np.where(labels == 1, rng.normal(2, 1.5, n), rng.normal(-2, 1.5, n)))
        return labels, p

    band = conformal_band(*draw(2_000), error_rate=0.05, threshold=0.5)
    assert band.low <= 0.5 <= band.high
    labels, p = draw(50_000)
    report = band_metrics(labels, p, band)
    assert report["pneumonia_called_normal"] <= 0.05 + 0.01
    assert report["normal_called_pneumonia"] <= 0.05 + 0.01
    assert 0 < report["share_indeterminate"] < 0.5
    assert report["accuracy_decided"] > 0.93


def test_decisions_never_contradict_the_label():
    band = Band(low=0.3, high=0.8, error_rate=0.05)
    p = np.linspace(0, 1, 1001)
    decisions = band.decide(p)
    threshold = 0.5
    assert not np.any((decisions == "PNEUMONIA") & (p < threshold))
    assert not np.any((decisions == "NORMAL") & (p >= threshold))
    assert set(decisions) == {"NORMAL", "PNEUMONIA", "INDETERMINATE"}


def test_gate_distance_is_the_mahalanobis_distance_under_the_shrunk_covariance():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(3)
    features = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12))
    gate = fit_feature_model(features)
    queries = rng.normal(size=(20, 12)) * 3
    expected = np.sqrt(LedoitWolf().fit(features).mahalanobis(queries))
    np.testing.assert_allclose(gate.distance(queries), expected, rtol=1e-6)


def test_gate_threshold_refuses_at_most_the_chosen_share_of_fresh_inliers():
    rng = np.random.default_rng(4)
    mixing = rng.normal(size=(8, 8))
    gate = fit_feature_model(rng.normal(size=(3_000, 8)) @ mixing)
    calibration = gate.distance(rng.normal(size=(1_000, 8)) @ mixing)
    gate = with_threshold(gate, calibration, 0.02)
    fresh = gate.distance(rng.normal(size=(20_000, 8)) @ mixing)
    assert np.mean(fresh > gate.threshold) <= 0.02 + 0.01
    outliers = gate.distance(rng.normal(size=(200, 8)) @ mixing + 10)
    assert np.all(outliers > gate.threshold)


def test_the_band_is_clamped_to_contain_the_threshold_and_to_stay_a_probability():
    # GIVEN validation scores with normals in [0, 0.3] and pneumonias in [0.6, 0.9]: the
    # conformal bounds alone would be about 0.3 (high) and 0.6 (low)
    normal, pneumonia = np.linspace(0.0, 0.3, 20), np.linspace(0.6, 0.9, 20)
    labels = np.array([0] * 20 + [1] * 20)
    scores = np.concatenate([normal, pneumonia])
    # WHEN the label threshold lies outside them, THEN the band is widened to it
    band = conformal_band(labels, scores, error_rate=0.1, threshold=0.45)
    assert (band.low, band.high) == (0.45, 0.45)
    # AND a normal scored 1.0 (the quantile's next float is above 1) leaves high at 1.0
    band = conformal_band(labels, np.concatenate([np.ones(20), pneumonia]), 0.01, 0.5)
    assert band.high == 1.0 and band.low == 0.5


def test_the_gate_threshold_holds_for_each_framing_not_only_their_pool():
    gate = fit_feature_model(np.random.default_rng(5).normal(size=(500, 4)))
    pooled = np.arange(1.0, 101.0)  # 100 distances: the 99% conformal quantile is the 100th
    tight = np.full(10, 150.0)  # one framing whose images all sit farther out
    assert with_threshold(gate, pooled, 0.01).threshold == 100.0
    assert with_threshold(gate, pooled, 0.01, [pooled[:50], tight]).threshold == 150.0
    # a group already inside the pooled threshold changes nothing
    assert with_threshold(gate, pooled, 0.01, [pooled[:10]]).threshold == 100.0


def test_each_framing_may_be_held_to_its_own_ceiling():
    gate = fit_feature_model(np.random.default_rng(7).normal(size=(500, 4)))
    pooled = np.arange(1.0, 101.0)
    framing = np.arange(101.0, 201.0)  # 100 distances of one framing, all beyond the pool's
    # at 5% a framing of 100 may lose its 5 farthest: ceil(0.95 * 101) = 96th smallest
    held = with_threshold(gate, pooled, 0.01, [framing], group_rate=0.05)
    assert held.threshold == 196.0
    assert with_threshold(gate, pooled, 0.01, [framing]).threshold == 200.0  # at 1%: the 100th


def test_the_reduced_gate_is_the_mahalanobis_distance_of_probabilistic_pca():
    # GIVEN 12 correlated features and a gate in their 4 leading principal components
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(11)
    features = rng.normal(size=(600, 12)) @ rng.normal(size=(12, 12))
    gate = fit_feature_model(features, components=4)
    # THEN its distance is the Mahalanobis distance under the covariance that keeps the 4
    # leading directions' variances and gives each other direction their mean variance
    covariance = LedoitWolf().fit(features).covariance_
    variances, vectors = np.linalg.eigh(covariance)
    kept, rest = vectors[:, -4:], vectors[:, :-4]
    model = kept @ np.diag(variances[-4:]) @ kept.T + variances[:-4].mean() * rest @ rest.T
    queries = rng.normal(size=(30, 12)) * 4
    centred = queries - features.mean(axis=0)
    expected = np.sqrt(np.einsum("ni,ij,nj->n", centred, np.linalg.inv(model), centred))
    np.testing.assert_allclose(gate.distance(queries), expected, rtol=1e-8)
    assert gate.whitening.shape == (12, 4) and gate.residual > 0


def test_the_gate_with_every_component_is_the_full_distance_and_round_trips(tmp_path):
    from pneumonia.decision.gate import FeatureGate

    rng = np.random.default_rng(12)
    features = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    queries = rng.normal(size=(10, 6)) * 3
    full = fit_feature_model(features)
    np.testing.assert_allclose(
        fit_feature_model(features, components=6).distance(queries), full.distance(queries)
    )
    reduced = fit_feature_model(features, components=2)
    for gate in (full, reduced):  # through models/gate.npz's format, as evaluate writes it
        np.savez(tmp_path / "gate.npz", allow_pickle=False, **gate.arrays())
        with np.load(tmp_path / "gate.npz") as arrays:
            again = FeatureGate.from_arrays(arrays, 3.0, 0.01)
        np.testing.assert_array_equal(again.distance(queries), gate.distance(queries))
        assert (again.threshold, again.false_rejection_rate) == (3.0, 0.01)
    # the residual carries what lies outside the components: without it the distance of a
    # point off them shrinks
    off = reduced.mean + 5 * np.linalg.svd(reduced.whitening)[0][:, -1]
    assert reduced.distance(off[None])[0] > np.linalg.norm((off - reduced.mean) @ reduced.whitening)
    with pytest.raises(ValueError, match="at least one component"):
        fit_feature_model(features, components=0)
