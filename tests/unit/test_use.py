"""The intended-use head (pneumonia.decision.use) on features whose kinds are known."""

from __future__ import annotations

import numpy as np
import pytest

from pneumonia.decision.use import (
    ANSWERED,
    NEVER,
    USE_KINDS,
    fit_use_head,
    head_problem,
    kind_of,
    refused_kind,
)


def clusters(rng, kinds: dict[str, tuple[float, int]], dims: int = 12) -> dict[str, np.ndarray]:
    """Gaussian features around a centre per kind: (offset on the first axis, count)."""
    out = {}
    for kind, (offset, count) in kinds.items():
        centre = np.zeros(dims)
        centre[USE_KINDS.index(kind) % dims] = offset
        out[kind] = rng.normal(centre, 1.0, size=(count, dims))
    return out


def test_each_kind_is_named_and_a_kind_without_examples_never_is():
    rng = np.random.default_rng(0)
    train = clusters(rng, {ANSWERED: (0, 600), "adult_chest": (8, 40), "other_body_part": (-8, 40)})
    head = fit_use_head(train)
    test = clusters(rng, {ANSWERED: (0, 200), "adult_chest": (8, 30), "other_body_part": (-8, 30)})
    for kind, features in test.items():
        named = head.kinds(features)
        assert np.mean([n == kind for n in named]) >= 0.95, kind
    assert head.bias[USE_KINDS.index("lateral_chest")] == NEVER
    assert not np.any(head.weights[:, USE_KINDS.index("lateral_chest")])
    assert "lateral_chest" not in head.kinds(rng.normal(0, 30, size=(500, 12)))


def test_two_kinds_keep_their_columns():
    rng = np.random.default_rng(1)
    head = fit_use_head(clusters(rng, {ANSWERED: (0, 300), "other_body_part": (6, 60)}))
    far = np.zeros((1, 12))
    far[0, USE_KINDS.index("other_body_part")] = 6
    assert head.kinds(far) == ["other_body_part"] and head.kinds(np.zeros((1, 12))) == [ANSWERED]
    assert kind_of(head.logits(far)[0]) == "other_body_part"


def test_the_head_needs_the_answered_kind_and_another():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError):
        fit_use_head(clusters(rng, {ANSWERED: (0, 50)}))
    with pytest.raises(ValueError):
        fit_use_head(clusters(rng, {"adult_chest": (0, 50), "other_body_part": (5, 50)}))


def test_the_head_problem_is_what_the_head_is_fitted_on():
    rng = np.random.default_rng(3)
    # Kinds given out of USE_KINDS order, one of them empty: the problem keeps USE_KINDS order.
    features = clusters(
        rng, {"other_body_part": (5, 40), ANSWERED: (0, 200), "adult_chest": (9, 30)}
    )
    features["lateral_chest"] = np.zeros((0, 12))
    features["other_body_part"][:, 3] *= 50  # another scale on one input
    problem = head_problem(features)
    assert problem.present == [ANSWERED, "adult_chest", "other_body_part"]
    assert np.bincount(problem.y).tolist() == [200, 30, 40]
    np.testing.assert_allclose(problem.x.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(problem.x.std(axis=0), 1, atol=1e-4)
    raw = np.concatenate([features[kind] for kind in problem.present])
    np.testing.assert_allclose(problem.x * problem.scale + problem.mean, raw, atol=1e-9)
    head = fit_use_head(features)
    np.testing.assert_array_equal(head.mean, problem.mean)
    np.testing.assert_array_equal(head.scale, problem.scale)
    named = np.argmax(head.logits(raw), axis=1)
    assert np.mean(named == [USE_KINDS.index(problem.present[i]) for i in problem.y]) >= 0.95
    with pytest.raises(ValueError):
        head_problem({ANSWERED: features[ANSWERED], "lateral_chest": np.zeros((0, 12))})


def test_the_margin_holds_the_answered_kinds_refusals_to_the_rate():
    from pneumonia.decision.use import with_margin

    rng = np.random.default_rng(3)
    # Overlapping kinds: the plain argmax names many answered images another kind.
    train = clusters(rng, {ANSWERED: (0, 400), "other_body_part": (1.5, 400)})
    head = fit_use_head(train)
    validation = clusters(rng, {ANSWERED: (0, 1000)})[ANSWERED]
    plain = np.mean([kind != ANSWERED for kind in head.kinds(validation)])
    assert plain > 0.1
    held = with_margin(head, validation, 0.01)
    fresh = clusters(rng, {ANSWERED: (0, 4000), "other_body_part": (1.5, 4000)})
    refused = np.mean([kind != ANSWERED for kind in held.kinds(fresh[ANSWERED])])
    assert refused <= 0.02
    assert np.mean([k == "other_body_part" for k in held.kinds(fresh["other_body_part"])]) > 0
    # Where the argmax already refuses fewer than the rate, the margin is not lowered.
    easy = fit_use_head(clusters(rng, {ANSWERED: (0, 400), "other_body_part": (9, 400)}))
    same = with_margin(easy, validation, 0.01)
    np.testing.assert_array_equal(same.bias, easy.bias)


def test_the_margin_holds_for_each_framing_not_only_their_pool():
    from pneumonia.decision.use import with_margin

    rng = np.random.default_rng(6)
    head = fit_use_head(clusters(rng, {ANSWERED: (0, 400), "other_body_part": (3, 400)}))
    validation = clusters(rng, {ANSWERED: (0, 2000)})[ANSWERED]
    # one framing of validation drifts toward the other kind: pooled, it is 5% of the rows
    drifted = clusters(rng, {"other_body_part": (1.5, 100)})["other_body_part"]
    pooled = np.concatenate([validation, drifted])
    loose = with_margin(head, pooled, 0.01)
    assert np.mean([k != ANSWERED for k in loose.kinds(drifted)]) > 0.05
    held = with_margin(head, pooled, 0.01, [validation, drifted])
    assert np.mean([k != ANSWERED for k in held.kinds(drifted)]) <= 0.01
    assert held.bias[USE_KINDS.index(ANSWERED)] > loose.bias[USE_KINDS.index(ANSWERED)]


def test_each_framing_may_be_held_to_its_own_ceiling():
    from pneumonia.decision.use import with_margin

    rng = np.random.default_rng(8)
    head = fit_use_head(clusters(rng, {ANSWERED: (0, 400), "other_body_part": (3, 400)}))
    validation = clusters(rng, {ANSWERED: (0, 2000)})[ANSWERED]
    drifted = clusters(rng, {"other_body_part": (1.5, 200)})["other_body_part"]
    strict = with_margin(head, validation, 0.01, [drifted])
    loose = with_margin(head, validation, 0.01, [drifted], group_rate=0.2)
    refused = [np.mean([k != ANSWERED for k in h.kinds(drifted)]) for h in (strict, loose)]
    assert refused[0] <= 0.01 < refused[1] <= 0.2
    # the pooled rate still holds for the pool whatever the framing's ceiling
    assert np.mean([k != ANSWERED for k in loose.kinds(validation)]) <= 0.01


def test_every_external_image_is_held_out_once_and_a_small_kind_still_is():
    from pneumonia.evaluation.intended_use import kind_folds

    kinds = ["adult_chest"] * 32 + ["lateral_chest"] * 2 + ["other_body_part"] * 50
    fold_of = kind_folds(kinds, 5, seed=0)
    assert fold_of.shape == (84,) and set(fold_of) == set(range(5))
    for kind in set(kinds):
        counts = np.bincount(fold_of[[k == kind for k in kinds]], minlength=5)
        assert counts.max() - counts.min() <= 1, (kind, counts)  # dealt evenly
    laterals = fold_of[32:34]
    assert laterals[0] != laterals[1]  # each lateral is measured by a head fitted on the other
    assert np.array_equal(fold_of, kind_folds(kinds, 5, seed=0))
    assert not np.array_equal(fold_of, kind_folds(kinds, 5, seed=1))


def test_a_refusal_names_the_heads_kind_or_else_its_runner_up():
    # USE_KINDS: pediatric_chest, adult_chest, lateral_chest, other_body_part
    assert refused_kind(np.array([0.0, 1.0, -2.0, 3.0])) == "other_body_part"
    assert refused_kind(np.array([5.0, 1.0, -2.0, 0.5])) == "adult_chest"  # answered: next
    assert refused_kind(np.array([[5.0, NEVER, 2.0, 0.5]])) == "lateral_chest"


def test_refused_as_such_needs_the_kinds_own_reason():
    from pneumonia.decision.use import as_such

    assert as_such("other_body_part", "refused before the model (not_a_chest_xray)")
    assert not as_such("other_body_part", "refused before the model (lateral_view)")
    assert as_such("other_body_part", "refused by the gate as other_body_part")
    assert not as_such("other_body_part", "refused as adult_chest")
    assert as_such("adult_chest", "refused as adult_chest")
    assert as_such("adult_chest", "refused by the gate as adult_chest")
    assert not as_such("adult_chest", "refused by the gate as other_body_part")
    assert not as_such("adult_chest", "answered")
    assert as_such("lateral_chest", "refused as lateral_chest")


def test_the_cross_validation_gives_each_external_image_one_outcome_and_counts_them():
    from pneumonia.evaluation.intended_use import External, fit_and_measure

    rng = np.random.default_rng(3)
    train = clusters(
        rng, {ANSWERED: (0, 300), "adult_chest": (10, 30), "other_body_part": (10, 30)}
    )
    kinds = ["adult_chest"] * 30 + ["other_body_part"] * 30 + ["other_body_part"]
    features = [
        row[None] for row in np.concatenate([train["adult_chest"], train["other_body_part"]])
    ]
    external = External(kinds, [None] * 60 + ["not_a_chest_xray"], [*features, np.zeros((0, 0))])
    validation = clusters(rng, {ANSWERED: (0, 200)})[ANSWERED]
    outcomes: dict[int, str] = {}
    _, report = fit_and_measure(
        external,
        train[ANSWERED],
        validation,
        lambda values: np.zeros(len(values)),  # a gate that refuses nothing
        1.0,
        0.01,
        seed=0,
        framing_rate=None,
        outcomes=outcomes,
    )
    assert sorted(outcomes) == list(range(61))
    assert outcomes[60] == "refused before the model (not_a_chest_xray)"
    for kind, figures in report["kinds"].items():
        mine = [outcomes[i] for i, k in enumerate(kinds) if k == kind]
        assert figures["outcomes"] == {name: mine.count(name) for name in set(mine)}
    # far-apart clusters: every image is refused with its own kind's reason
    assert report["kinds"]["adult_chest"]["outcomes"] == {"refused as adult_chest": 30}
    assert report["kinds"]["other_body_part"]["refused_as_such"] == 1.0


@pytest.mark.parametrize(
    "kinds",
    [
        {ANSWERED: (0, 300), "adult_chest": (3, 40), "other_body_part": (-3, 40)},
        {ANSWERED: (0, 300), "other_body_part": (2, 60)},  # sklearn's binary form
    ],
)
def test_a_fold_started_from_the_head_on_everything_reaches_the_same_head(kinds):
    from pneumonia.decision.use import solver_start

    rng = np.random.default_rng(5)
    features = clusters(rng, kinds)
    everything = fit_use_head(features)
    problem = head_problem(features)
    # The start is the head itself, in the solver's layout: its logits (for two kinds, the
    # second kind's logit less the first's) on the standardised inputs.
    start = solver_start(everything, problem.present)
    assert start is not None
    coefficients, intercepts = start
    logits = everything.logits(np.concatenate([features[kind] for kind in problem.present]))
    columns = [USE_KINDS.index(kind) for kind in problem.present]
    expected = logits[:, columns] if len(columns) > 2 else np.diff(logits[:, columns], axis=1)
    np.testing.assert_allclose(problem.x @ coefficients.T + intercepts, expected, atol=1e-9)
    # A fold (every image but a fifth of each kind) reaches the same head from it as from zero.
    fold = {kind: rows[: len(rows) * 4 // 5] for kind, rows in features.items()}
    held_out = np.concatenate([rows[len(rows) * 4 // 5 :] for rows in features.values()])
    cold, warm = fit_use_head(fold), fit_use_head(fold, start=everything)
    np.testing.assert_allclose(warm.logits(held_out), cold.logits(held_out), atol=1e-3)
    # A head of other kinds is no start.
    assert solver_start(everything, [ANSWERED, "lateral_chest"]) is None
