"""Pull-request review: a markdown report against a base revision, and a metric gate.

    python -m pneumonia.review report --base main --output review.md --plots review_plots
    python -m pneumonia.review gate --base main

The same commands run locally and in CI; the workflow only calls them.
Gate exit codes: 0 passed, 1 a floor or the regression tolerance failed, 2 the
metrics could not be read.

Training is bit-reproducible on one CPU family only (README, "Devices"), so one draw is
not a baseline: when the base revision has `metrics/seed_spread.json` (written by
`benchmarks/ablation.py --only defaults`), a regression is a value below the lowest of the
base's seeds by more than the tolerance, not below the base's own run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from pneumonia import paths
from pneumonia.config import GateParams, load_params

GATED = ("roc_auc", "sensitivity")
REPORTED = ("roc_auc", "accuracy", "sensitivity", "specificity")
SEED_SPREAD = paths.METRICS / "seed_spread.json"


class MetricsError(RuntimeError):
    """A metrics file is missing or unreadable."""


def read_metrics(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MetricsError(f"{path} not found: run `dvc repro` first") from None
    except json.JSONDecodeError as error:
        raise MetricsError(f"{path} is not valid JSON ({error})") from None


def metrics_at(revision: str, path: Path = paths.EVALUATE_LIVE / "metrics.json") -> dict | None:
    """The metrics file as committed at a git revision; None when it has none."""
    shown = subprocess.run(
        ["git", "show", f"{revision}:{path.as_posix()}"], capture_output=True, text=True
    )
    if shown.returncode != 0:
        return None
    try:
        return json.loads(shown.stdout)
    except json.JSONDecodeError as error:
        raise MetricsError(f"{path} at {revision} is not valid JSON ({error})") from None


def lowest_seed(spread: dict | None, name: str) -> tuple[float, int] | None:
    """The lowest test value of a metric over the base's seeds, and how many seeds ran."""
    try:
        test = spread["splits"]["test"]  # type: ignore[index]
        return float(test[name]["min"]), len(spread["seeds"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None


def check_gate(
    current: dict, base: dict | None, gate: GateParams, spread: dict | None = None
) -> list[str]:
    """Every failed condition, as a sentence; empty when the change may merge.

    `spread`: the base's seed spread; when it has a metric, a regression is measured from
    the lowest seed rather than from the base's single run.
    """
    try:
        test = {name: float(current["test"][name]) for name in GATED}
    except (KeyError, TypeError, ValueError):
        raise MetricsError(f"the metrics lack test.{' / test.'.join(GATED)}") from None
    failures = []
    floors = {"roc_auc": gate.min_roc_auc, "sensitivity": gate.min_sensitivity}
    for name, floor in floors.items():
        if test[name] < floor:
            failures.append(f"test {name} {test[name]:.4f} is below the floor {floor:.4f}")
    for name in GATED:
        lowest = lowest_seed(spread, name)
        if lowest is not None:
            value, seeds = lowest
            if value - test[name] > gate.max_regression:
                failures.append(
                    f"test {name} {test[name]:.4f} is below the base's lowest of {seeds} seeds "
                    f"({value:.4f}) by more than the tolerance {gate.max_regression:.4f}"
                )
            continue
        try:
            before = float(base["test"][name])  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            continue  # no base, or it predates this metric: nothing to regress from
        if before - test[name] > gate.max_regression:
            failures.append(
                f"test {name} fell from {before:.4f} to {test[name]:.4f}, more than "
                f"the tolerance {gate.max_regression:.4f}"
            )
    return failures


def dvc(*args: str) -> str:
    result = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if result.returncode != 0:
        return f"`dvc {' '.join(args)}` failed:\n```\n{result.stderr.strip()[-1500:]}\n```"
    return result.stdout.strip() or "_no changes_"


def held_out_table(current: dict, base: dict | None, spread: dict | None) -> str:
    """Markdown: each held-out split's headline metrics, this change against the base.

    The base column is the base's seed spread (mean [min, max]) where it has one: the
    range a retrain of the base alone would move within.
    """
    lines = [
        "| split | metric | this change | base |",
        "|---|---|---:|---:|",
    ]
    for split in paths.HELD_OUT:
        if split not in current:
            continue
        for name in REPORTED:
            before = "-"
            ranged = (spread or {}).get("splits", {}).get(split, {}).get(name)
            if ranged:
                before = f"{ranged['mean']:.4f} [{ranged['min']:.4f}, {ranged['max']:.4f}]"
            elif base and name in base.get(split, {}):
                before = f"{base[split][name]:.4f}"
            lines.append(f"| {split} | {name} | {current[split][name]:.4f} | {before} |")
    if spread:
        lines.append(
            f"\nBase column: mean [min, max] over seeds {spread.get('seeds')} on "
            f"{spread.get('cpu', {}).get('model', '?')} ({spread.get('cpu', {}).get('isa', '?')})."
        )
    return "\n".join(lines)


def report(
    base: str,
    plots_dir: Path | None,
    gate_lines: list[str],
    baseline: bool,
    held_out: str = "",
) -> str:
    """The markdown posted on the pull request."""
    sections = [
        "## Model review",
        f"Compared with `{base}`.",
        "### Held-out splits",
        "`test`: random patients; `early`, `late`: the lowest and highest patient ids, "
        "other periods of the hospital (a cohort shift).",
        held_out or "_no held-out metrics_",
        "### Params",
        dvc("params", "diff", base, "--md"),
        "### Metrics",
        dvc("metrics", "diff", base, "--md", "--precision", "4"),
    ]
    if plots_dir is not None:
        dvc("plots", "diff", base, "-o", str(plots_dir))
        sections += [
            "### Plots",
            f"ROC, precision-recall, confusion, calibration, robustness "
            f"and training curves: `{plots_dir}/index.html` (workflow artifact).",
        ]
    verdict = "passed" if not gate_lines else "**failed**"
    sections += ["### Gate", f"Metric gate {verdict}."]
    if not baseline:
        sections.append(f"`{base}` has no evaluation metrics: floors only, no regression check.")
    sections += [f"- {line}" for line in gate_lines]
    return "\n\n".join(sections) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("report", "gate"):
        command = sub.add_parser(name)
        command.add_argument("--base", default="main", help="git revision to compare with")
        command.add_argument("--metrics", type=Path, default=paths.EVALUATE_LIVE / "metrics.json")
        command.add_argument("--base-metrics", type=Path, help="a file instead of --base")
        command.add_argument("--base-spread", type=Path, help="a seed spread instead of --base's")
    sub.choices["report"].add_argument("--output", type=Path, default=Path("review.md"))
    sub.choices["report"].add_argument("--plots", type=Path, help="write dvc plots diff here")
    args = parser.parse_args(argv)

    try:
        current = read_metrics(args.metrics)
        base = read_metrics(args.base_metrics) if args.base_metrics else metrics_at(args.base)
        spread: dict | None = None
        if args.base_spread:
            spread = read_metrics(args.base_spread)
        elif not args.base_metrics:
            spread = metrics_at(args.base, SEED_SPREAD)
        failures = check_gate(current, base, load_params().gate, spread)
    except MetricsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "report":
        held_out = held_out_table(current, base, spread)
        args.output.write_text(report(args.base, args.plots, failures, base is not None, held_out))
        print(f"wrote {args.output}")
        return 0
    for line in failures:
        print(f"FAIL {line}")
    if base is None:
        print(f"no baseline metrics at {args.base}: floors only")
    print("gate failed" if failures else "gate passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
