"""What fitting the intended-use head costs, by solver: evaluate fits it six times a run (five
cross-validation folds over the external radiographs, then on all of them).

Needs the pipeline's outputs (models/model.keras, data/prepared, data/raw: `make repro`) and
the external radiographs (data/external/radiographs). Computes the
features evaluate fits the head on (the training split, a quarter of it under every shift,
and the external radiographs under every shift), then fits the head once on all of them with
each solver and prints a table: iterations, seconds, the largest distance of a coefficient and
of an intercept from a 1e-8 solve, and how many of the fitted rows another solver's head would
name another kind.

    python -m benchmarks.use_head    (benchmarks/use_head.txt: a run on a 2-core AMD EPYC)
"""

from __future__ import annotations

import os
import time

import numpy as np

from pneumonia.decision.use import HEAD_SOLVER
from pneumonia.machine import describe

# (label, LogisticRegression options): lbfgs at its defaults was the head's solver until
# 2026-12-05; HEAD_SOLVER is the one it uses now, read from where the head is fitted.
SOLVERS = {
    "lbfgs, tol 1e-4 (before)": {"solver": "lbfgs", "tol": 1e-4, "max_iter": 2000},
    "newton-cg, tol 1e-4": {"solver": "newton-cg", "tol": 1e-4, "max_iter": 200},
    f"{HEAD_SOLVER['solver']}, tol {HEAD_SOLVER['tol']:g} (HEAD_SOLVER)": HEAD_SOLVER,
}
REFERENCE = {"solver": "newton-cg", "tol": 1e-8, "max_iter": 200}


def head_problem() -> tuple[np.ndarray, np.ndarray]:
    """(standardised inputs, kind index) of the head's fit on every external radiograph, as
    `pneumonia.decision.use.fit_use_head` builds them (this benchmark needs the solver object
    itself, for its iteration count)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    import pneumonia.model.network  # noqa: F401  (registers the custom layer)
    from pneumonia import paths
    from pneumonia.config import load_params
    from pneumonia.data.prepared import preprocess_config
    from pneumonia.decision import use
    from pneumonia.evaluation.gate import split_features
    from pneumonia.evaluation.intended_use import (
        USE_LAYOUT_ASYMMETRY,
        External,
        by_kind,
        external_features,
    )
    from pneumonia.evaluation.scoring import Scorer
    from pneumonia.release.export import network_to_serve

    params = load_params()
    model = keras.models.load_model(paths.KERAS_MODEL)
    config = preprocess_config()
    scorer = Scorer(model, network_to_serve(model, config.image_size, params.export_onnx))
    external: External = external_features(scorer, config)
    reached = [i for i, reason in enumerate(external.refused_early) if reason is None]
    features = by_kind(external, reached, split_features(scorer, "train", config, every=4))
    problem = use.head_problem(features, USE_LAYOUT_ASYMMETRY)
    return problem.x, problem.y


def main() -> None:
    """Print the table."""
    from sklearn.linear_model import LogisticRegression

    from pneumonia.evaluation.intended_use import USE_STRENGTH

    x, y = head_problem()

    def fit(options: dict) -> tuple[LogisticRegression, float]:
        started = time.perf_counter()
        head = LogisticRegression(C=USE_STRENGTH, class_weight="balanced", **options).fit(x, y)
        return head, time.perf_counter() - started

    reference, _ = fit(REFERENCE)
    kinds = reference.predict(x)
    print(f"machine: {describe()}; {len(y):,} rows, {x.shape[1]:,} inputs, {len(set(y))} kinds")
    print(
        "| solver | iterations | seconds | coefficient vs 1e-8 | intercept vs 1e-8 "
        "| rows named otherwise |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label, options in SOLVERS.items():
        head, seconds = fit(options)
        coefficient = np.abs(head.coef_ - reference.coef_).max()
        intercept = np.abs(head.intercept_ - reference.intercept_).max()
        changed = int((head.predict(x) != kinds).sum())
        print(
            f"| {label} | {int(head.n_iter_.max())} | {seconds:.1f} | {coefficient:.2g} | "
            f"{intercept:.2g} | {changed} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
