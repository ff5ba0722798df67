"""Pull-request review: a markdown report against a base revision, and a metric gate.

    python -m pneumonia.review report --base main --output review.md --plots review_plots
    python -m pneumonia.review gate --base main

The same commands run locally and in CI; the workflow only calls them.
Gate exit codes: 0 passed, 1 a floor or the regression tolerance failed (or a gated
metric is missing or not a finite number), 2 the metrics could not be read.

The floors and the tolerance are read from `params.yaml` at the base revision, not from the
change under review, so a pull request cannot lower the bar it is measured against. Only
when the base has no `gate` section does the change's own one apply, with a warning.

Training is bit-reproducible on one CPU family only (README, "Devices"), so one draw is
not a baseline: when the base revision has `metrics/seed_spread.json` (written by
`benchmarks/ablation.py --only defaults`), a regression is a value below the lowest of the
base's seeds by more than the tolerance, not below the base's own run.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from pneumonia import paths
from pneumonia.config import PARAMS_FILE, GateParams, load_params

GATED = ("roc_auc", "sensitivity")
REPORTED = ("roc_auc", "accuracy", "sensitivity", "specificity")
SEED_SPREAD = paths.METRICS / "seed_spread.json"
# What `dvc metrics` does not list, diffed in the report's collapsed details.
DETAILS = (
    str(paths.EVALUATE_LIVE / "metrics.json"),
    str(paths.TRAIN_LIVE / "metrics.json"),
    str(paths.INGEST_SUMMARY),
    str(paths.EXPORT_METRICS),
)


class MetricsError(RuntimeError):
    """A metrics file is missing or unreadable."""


def read_metrics(path: Path) -> dict:
    """A metrics JSON file; MetricsError when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MetricsError(f"{path} not found: run `dvc repro` first") from None
    except json.JSONDecodeError as error:
        raise MetricsError(f"{path} is not valid JSON ({error})") from None


def show_at(revision: str, path: Path) -> str | None:
    """A file's text as committed at a git revision; None when it has none."""
    shown = subprocess.run(
        ["git", "show", f"{revision}:{path.as_posix()}"], capture_output=True, text=True
    )
    return shown.stdout if shown.returncode == 0 else None


def metrics_at(revision: str, path: Path = paths.EVALUATE_LIVE / "metrics.json") -> dict | None:
    """The metrics file as committed at a git revision; None when it has none."""
    text = show_at(revision, path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise MetricsError(f"{path} at {revision} is not valid JSON ({error})") from None


@dataclass(frozen=True)
class ReviewGate:
    """The gate's floors and tolerance, and where they were read."""

    params: GateParams
    source: str  # a sentence for the report: which revision's params.yaml
    warning: str | None = None  # set when the floors are the change's own


def gate_at(revision: str, fallback: Path = PARAMS_FILE) -> ReviewGate:
    """The `gate` section of params.yaml at the base revision.

    A pull request edits its own params.yaml, so its floors are not trusted: only when the
    base revision has no params.yaml or no `gate` section (the gate is new) are the
    change's own floors used, with a warning. A base section that does not validate is an
    error, never a reason to fall back.
    """
    text = show_at(revision, PARAMS_FILE)
    reason = f"`{revision}` has no {PARAMS_FILE}"
    if text is not None:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise MetricsError(f"{PARAMS_FILE} at {revision} is not valid YAML ({error})") from None
        section = raw.get("gate") if isinstance(raw, dict) else None
        if section is not None:
            try:
                params = GateParams.model_validate(section)
            except ValidationError as error:
                raise MetricsError(
                    f"the gate section of {PARAMS_FILE} at {revision} is invalid ({error})"
                ) from None
            return ReviewGate(params, f"`{PARAMS_FILE}` at `{revision}` (the base)")
        reason = f"{PARAMS_FILE} at `{revision}` has no gate section"
    return ReviewGate(
        load_params(fallback).gate,
        f"this change's own `{fallback}`",
        f"{reason}: the floors are this change's own, which it could have lowered",
    )


def finite(value: object) -> float | None:
    """A metric as a finite float; None when it is absent, not a number, NaN or infinite."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def lowest_seed(spread: dict | None, name: str) -> tuple[float, int] | None:
    """The lowest test value of a metric over the base's seeds, and how many seeds ran."""
    try:
        test = spread["splits"]["test"]  # type: ignore[index]
        lowest, seeds = finite(test[name]["min"]), len(spread["seeds"])  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    return None if lowest is None else (lowest, seeds)


def check_gate(
    current: dict, base: dict | None, gate: GateParams, spread: dict | None = None
) -> list[str]:
    """Every failed condition, as a sentence; empty when the change may merge.

    A gated metric that is missing or not a finite number (evaluate writes NaN AUC for a
    split with one class) fails: NaN compares false with every floor, so it would pass.
    `spread`: the base's seed spread; when it has a metric, a regression is measured from
    the lowest seed rather than from the base's single run.
    """
    section = current.get("test") if isinstance(current, dict) else None
    if not isinstance(section, dict):
        raise MetricsError(f"the metrics lack test.{' / test.'.join(GATED)}")
    test, failures = gated_values(section)
    floors = {"roc_auc": gate.min_roc_auc, "sensitivity": gate.min_sensitivity}
    for name, floor in floors.items():
        if name in test and test[name] < floor:
            failures.append(f"test {name} {test[name]:.4f} is below the floor {floor:.4f}")
    for name, value in test.items():
        failure = regression(name, value, base, gate.max_regression, spread)
        if failure:
            failures.append(failure)
    return failures


def gated_values(section: dict) -> tuple[dict[str, float], list[str]]:
    """The gated test metrics that are finite numbers, and a failure for each that is not."""
    test: dict[str, float] = {}
    failures = []
    for name in GATED:
        value = finite(section.get(name))
        if value is not None:
            test[name] = value
        elif name not in section:
            failures.append(f"test {name} is missing: the gate cannot pass without it")
        else:
            failures.append(
                f"test {name} is {section[name]!r}, not a finite number: the gate cannot pass "
                "without it (a split with one class has no AUC)"
            )
    return test, failures


def regression(
    name: str, value: float, base: dict | None, tolerance: float, spread: dict | None
) -> str | None:
    """A sentence when `value` fell from the base by more than `tolerance`, else None.

    Measured from the lowest of the base's seeds when it has a spread for the metric,
    otherwise from the base's single run; nothing when the base has no finite value.
    """
    lowest = lowest_seed(spread, name)
    if lowest is not None:
        floor, seeds = lowest
        if floor - value > tolerance:
            return (
                f"test {name} {value:.4f} is below the base's lowest of {seeds} seeds "
                f"({floor:.4f}) by more than the tolerance {tolerance:.4f}"
            )
        return None
    try:
        before = finite(base["test"][name])  # type: ignore[index]
    except (KeyError, TypeError):
        before = None
    if before is not None and before - value > tolerance:
        return (
            f"test {name} fell from {before:.4f} to {value:.4f}, more than "
            f"the tolerance {tolerance:.4f}"
        )
    return None  # no base, or it predates this metric: nothing to regress from


def dvc_output(*args: str) -> str:
    """`dvc ARGS` output for the report; a failure comes back as a markdown block."""
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
            value = current[split].get(name)
            shown = f"{value:.4f}" if isinstance(value, (int, float)) else "missing"
            lines.append(f"| {split} | {name} | {shown} | {before} |")
    if spread:
        lines.append(
            f"\nBase column: mean [min, max] over seeds {spread.get('seeds')} on "
            f"{spread.get('cpu', {}).get('model', '?')} ({spread.get('cpu', {}).get('isa', '?')})."
        )
    return "\n".join(lines)


def review_report(
    base: str,
    plots_dir: Path | None,
    gate_lines: list[str],
    baseline: bool,
    held_out: str = "",
    gate: ReviewGate | None = None,
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
        dvc_output("params", "diff", base, "--md"),
        "### Metrics",
        "The headline: each held-out split, the worst split, the worst shift (framing "
        "included), the decision band and the gate (`dvc metrics diff`).",
        dvc_output("metrics", "diff", base, "--md", "--precision", "4"),
        "<details><summary>Every figure evaluate measures (metrics/evaluate/metrics.json)"
        "</summary>\n",
        dvc_output("metrics", "diff", base, "--md", "--precision", "4", "--targets", *DETAILS),
        "</details>",
    ]
    if plots_dir is not None:
        dvc_output("plots", "diff", base, "-o", str(plots_dir))
        sections += [
            "### Plots",
            f"ROC, precision-recall, confusion, calibration, robustness "
            f"and training curves: `{plots_dir}/index.html` (workflow artifact).",
        ]
    verdict = "passed" if not gate_lines else "**failed**"
    sections += ["### Gate", f"Metric gate {verdict}."]
    if gate is not None:
        sections.append(gate_origin(gate))
    if not baseline:
        sections.append(f"`{base}` has no evaluation metrics: floors only, no regression check.")
    sections += [f"- {line}" for line in gate_lines]
    return "\n\n".join(sections) + "\n"


def gate_origin(gate: ReviewGate) -> str:
    """Which params.yaml the floors came from, and the floors; a warning when not the base's."""
    floors = (
        f"min_roc_auc {gate.params.min_roc_auc}, min_sensitivity {gate.params.min_sensitivity}, "
        f"max_regression {gate.params.max_regression}"
    )
    line = f"Gate from {gate.source}: {floors}."
    return f"**Warning**: {gate.warning}. {line}" if gate.warning else line


def main(argv: list[str] | None = None) -> int:
    """Command line: `report` writes the markdown review, `gate` checks the metrics."""
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
        gate = gate_at(args.base)
        failures = check_gate(current, base, gate.params, spread)
    except MetricsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "report":
        if gate.warning:
            print(f"warning: {gate.warning}", file=sys.stderr)
        held_out = held_out_table(current, base, spread)
        args.output.write_text(
            review_report(args.base, args.plots, failures, base is not None, held_out, gate)
        )
        print(f"wrote {args.output}")
        return 0
    print(gate_origin(gate).replace("**", ""))
    for line in failures:
        print(f"FAIL {line}")
    if base is None:
        print(f"no baseline metrics at {args.base}: floors only")
    print("gate failed" if failures else "gate passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
