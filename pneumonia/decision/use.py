"""The intended-use check: is this a pediatric frontal chest X-ray, an adult one, a lateral
view, or a radiograph of another body part?

A linear (multinomial logistic) head over the model's pooled features, fitted by evaluate on
the training split's X-rays and on real radiographs from public repositories
(`data/external/radiographs`, with their manifest). The export stage puts it into the graph
(output `use_logits`), so the model version covers it; serving refuses by its answer:
another body part is `not_a_chest_xray`, a lateral view `lateral_view`, an adult
`outside_training_population`. A kind with no examples is never chosen (its bias is -1e4).
An image the learned gate refuses is refused as the head's runner-up kind (`refused_kind`)
where the model has no reason head; with one, the reason head names every refusal by the
model (`pneumonia.decision.reason.reason_kind`).

With `layout_asymmetry`, the head also reads how far the input's layout (the last features:
its mean intensity per cell of a grid) is from its mirror image (`layout_asymmetry`): a
frontal chest X-ray has a lung field either side of the spine, a lateral view has the spine
at one side and the sternum at the other. A linear head cannot compute that from the layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pneumonia.images.layout import LAYOUT_GRID  # the last LAYOUT_GRID^2 features

USE_KINDS = ("pediatric_chest", "adult_chest", "lateral_chest", "other_body_part")
ANSWERED = "pediatric_chest"  # the one kind the model answers
# The 422 reason the endpoint refuses each other kind with, and a refused image that the
# reason head (`pneumonia.decision.reason.reason_kind`) calls a pediatric chest X-ray: a chest
# X-ray unlike the ones the model answers, so outside the training population.
REFUSAL_REASONS = {
    ANSWERED: "outside_training_population",
    "adult_chest": "outside_training_population",
    "lateral_chest": "lateral_view",
    "other_body_part": "not_a_chest_xray",
}
NEVER = -1.0e4  # the bias of a kind with no examples
# The head's solver: Newton steps with conjugate-gradient Hessian products. On evaluate's
# problem (about 22,000 rows of 2,256 standardised features, four kinds) it converges in 25
# steps where lbfgs took 905 (51 s against 110 s a fit on a 2-core AMD EPYC, six fits a run),
# to 6e-4 of the optimum's largest coefficient (a 1e-8 solve) and 0.08 of its intercepts,
# where lbfgs at its default tolerance stopped 0.03 and 3.3 away (benchmarks/use_head.py).
HEAD_SOLVER = {"solver": "newton-cg", "tol": 1e-6, "max_iter": 200}


def layout_asymmetry(features: np.ndarray) -> np.ndarray:
    """(N, LAYOUT_GRID^2 / 2): |cell - its mirror cell| for each cell of the layout's left
    half, row by row; zero for an image that is its own mirror image."""
    values = np.asarray(features, dtype=np.float64)
    grid = values[:, -(LAYOUT_GRID**2) :].reshape(len(values), LAYOUT_GRID, LAYOUT_GRID)
    half = LAYOUT_GRID // 2
    return np.abs(grid[:, :, :half] - grid[:, :, : half - 1 : -1]).reshape(len(values), -1)


def head_inputs(features: np.ndarray, asymmetry: bool) -> np.ndarray:
    """What the head reads: the features, then with `asymmetry` the layout's asymmetry."""
    values = np.asarray(features, dtype=np.float64)
    return np.concatenate([values, layout_asymmetry(values)], axis=1) if asymmetry else values


@dataclass(frozen=True)
class UseHead:
    """logits = ((inputs - mean) / scale) @ weights + bias, one column per USE_KINDS entry;
    inputs = the features, then with `layout_asymmetry` their layout's asymmetry."""

    mean: np.ndarray  # (I,)
    scale: np.ndarray  # (I,)
    weights: np.ndarray  # (I, K)
    bias: np.ndarray  # (K,)
    layout_asymmetry: bool = False

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, K) logits for (N, F) features."""
        standard = (head_inputs(features, self.layout_asymmetry) - self.mean) / self.scale
        return standard @ self.weights + self.bias

    def kinds(self, features: np.ndarray) -> list[str]:
        """The kind of each image."""
        return [USE_KINDS[index] for index in np.argmax(self.logits(features), axis=1)]

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Its arrays by name; evaluate saves them in models/gate.npz under `use_`."""
        named = {"mean": self.mean, "scale": self.scale, "weights": self.weights, "bias": self.bias}
        named["layout_asymmetry"] = np.array(self.layout_asymmetry)
        return {prefix + name: value for name, value in named.items()}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "") -> UseHead | None:
        """The head saved by `arrays(prefix)`, or None when `arrays` hold none."""
        if prefix + "weights" not in arrays:
            return None
        flag = prefix + "layout_asymmetry"
        return cls(
            mean=arrays[prefix + "mean"],
            scale=arrays[prefix + "scale"],
            weights=arrays[prefix + "weights"],
            bias=arrays[prefix + "bias"],
            layout_asymmetry=flag in arrays and bool(arrays[flag]),
        )


def with_margin(
    head: UseHead,
    answered_features: np.ndarray,
    false_rejection_rate: float,
    groups: Sequence[np.ndarray] = (),
    group_rate: float | None = None,
) -> UseHead:
    """The head with the answered kind's bias raised just enough that at most
    `false_rejection_rate` of `answered_features` (validation X-rays and their shifted
    copies), and at most `group_rate` (default: the rate) of each of `groups` (validation
    under one framing), are named another kind: the largest split-conformal quantile of
    (best other logit - answered logit), never lowered below the plain argmax."""
    from pneumonia.decision.band import conformal_quantile

    answered = USE_KINDS.index(ANSWERED)

    def excess(features: np.ndarray) -> np.ndarray:
        logits = head.logits(features)
        return np.delete(logits, answered, axis=1).max(axis=1) - logits[:, answered]

    level = 1 - (false_rejection_rate if group_rate is None else group_rate)
    quantiles = [conformal_quantile(excess(answered_features), 1 - false_rejection_rate)]
    quantiles += [conformal_quantile(excess(group), level) for group in groups]
    margin = max(0.0, float(max(quantiles)))
    bias = head.bias.copy()
    bias[answered] += margin
    return UseHead(head.mean, head.scale, head.weights, bias, head.layout_asymmetry)


def kind_of(logits: np.ndarray) -> str:
    """The kind one row of the graph's `use_logits` names."""
    return USE_KINDS[int(np.argmax(logits))]


def refused_kind(logits: np.ndarray) -> str:
    """What an image refused for another reason (the learned gate: too far from the
    training X-rays) is most like among the kinds the model does not answer: the kind the
    head names when it is one of them, else the head's runner-up. The head knows body parts
    and adult chests, the gate only distance: so a chest X-ray the gate finds unlike the
    training cohort is refused as outside it, not as "not a chest X-ray"."""
    row = np.asarray(logits, dtype=np.float64).reshape(-1).copy()
    row[USE_KINDS.index(ANSWERED)] = -np.inf
    return USE_KINDS[int(np.argmax(row))]


@dataclass(frozen=True)
class HeadProblem:
    """What the head's solver fits: standardised inputs and each row's kind."""

    present: list[str]  # the kinds with examples, in USE_KINDS order; y indexes them
    x: np.ndarray  # (N, I) standardised inputs
    y: np.ndarray  # (N,) index into `present`
    mean: np.ndarray  # (I,) the inputs' mean ...
    scale: np.ndarray  # (I,) ... and standard deviation (+1e-6) before standardising


def head_problem(features: dict[str, np.ndarray], layout_asymmetry: bool = False) -> HeadProblem:
    """The head's fitting problem from each kind's (N_k, F) features (`head_inputs`,
    standardised); kinds missing or empty are left out."""
    present = [kind for kind in USE_KINDS if kind in features and len(features[kind])]
    if ANSWERED not in present or len(present) < 2:
        raise ValueError(f"the head needs {ANSWERED} and another kind, got {present}")
    x = head_inputs(np.concatenate([features[kind] for kind in present]), layout_asymmetry)
    y = np.concatenate([np.full(len(features[kind]), index) for index, kind in enumerate(present)])
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    return HeadProblem(present, (x - mean) / scale, y, mean, scale)


def solver_start(head: UseHead, present: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """`head`'s coefficients and intercepts in sklearn's layout for a problem of `present`
    kinds (one row for two kinds), or None where `head` fitted other kinds."""
    fitted = [kind for kind, bias in zip(USE_KINDS, head.bias, strict=True) if bias != NEVER]
    if fitted != present or head.weights.shape[0] != len(head.mean):
        return None
    columns = [USE_KINDS.index(kind) for kind in present]
    coefficients, intercepts = head.weights[:, columns].T, head.bias[columns]
    if len(present) == 2:  # sklearn's binary form: the second class's logit minus the first's
        return (coefficients[1] - coefficients[0])[np.newaxis], intercepts[1:] - intercepts[:1]
    return coefficients, intercepts


def fit_use_head(
    features: dict[str, np.ndarray],
    strength: float = 0.05,
    layout_asymmetry: bool = False,
    start: UseHead | None = None,
) -> UseHead:
    """The head from each kind's (N_k, F) features; kinds missing or empty are never chosen.

    Standardised inputs (`head_problem`), balanced class weights, L2 penalty 1/strength: a few
    dozen external radiographs against thousands of training X-rays, so the fit stays simple.

    `start`: a head of the same kinds and inputs the solver starts from (cross-validation
    starts each fold from the head fitted on everything). The problem is strictly convex, so
    its optimum does not depend on the start, only the steps to reach it (HEAD_SOLVER's
    tolerance); the folds' outcomes were the same with and without it
    (docs/benchmarks.md#warm-started-folds).
    """
    from sklearn.linear_model import LogisticRegression

    problem = head_problem(features, layout_asymmetry)
    initial = solver_start(start, problem.present) if start is not None else None
    classifier = LogisticRegression(
        C=strength, class_weight="balanced", warm_start=initial is not None, **HEAD_SOLVER
    )
    if initial is not None:
        classifier.coef_, classifier.intercept_ = initial
    classifier.fit(problem.x, problem.y)
    weights = np.zeros((problem.x.shape[1], len(USE_KINDS)))
    bias = np.full(len(USE_KINDS), NEVER)
    coefficients, intercepts = classifier.coef_, classifier.intercept_
    if len(problem.present) == 2:  # sklearn's binary form: one row for the second class
        coefficients = np.stack([-coefficients[0] / 2, coefficients[0] / 2])
        intercepts = np.array([-intercepts[0] / 2, intercepts[0] / 2])
    for row, kind in enumerate(problem.present):
        weights[:, USE_KINDS.index(kind)] = coefficients[row]
        bias[USE_KINDS.index(kind)] = intercepts[row]
    return UseHead(problem.mean, problem.scale, weights, bias, layout_asymmetry)


def as_such(kind: str, outcome: str) -> bool:
    """Whether an outcome refuses an image of `kind` with that kind's own reason: another
    body part as one (by the cheap checks, `not_a_chest_xray`, too), an adult as an adult,
    a lateral view as one (`REFUSAL_REASONS`)."""
    if outcome.startswith("refused before the model"):
        return f"({REFUSAL_REASONS[kind]})" in outcome
    refused = outcome.removeprefix("refused by the gate as ").removeprefix("refused as ")
    refused = refused.removeprefix("refused by the view check as ")
    return outcome != "answered" and REFUSAL_REASONS[refused] == REFUSAL_REASONS[kind]
