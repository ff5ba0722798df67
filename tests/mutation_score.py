"""Mutation scores per module from mutmut's results (`make mutation` runs it after mutmut).

    python tests/mutation_score.py [--min 85]

Prints `mutation score MODULE: K/N killed (P%)` for each mutated module, then the total.
A mutant counts as killed when a test failed or timed out on it; "no tests" (no selected
test reaches the mutated function) and survivors count against the score. With `--min`,
exits 1 when any module scores under that percentage (the total alone does not count).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

LINE = re.compile(r"^\s*(?P<name>[\w.]+)__mutmut_\d+: (?P<status>.+)$")
KILLED = {"killed", "timeout"}


def module_of(name: str) -> str:
    """pneumonia.images.sanitize.x_sanitize -> pneumonia/images/sanitize.py"""
    parts = name.split(".")
    while parts and (parts[-1].startswith("x") or parts[-1][:1].isupper()):
        parts.pop()  # the mangled function, and its class for a method
    return "/".join(parts) + ".py"


def scores(results: str) -> dict[str, Counter]:
    by_module: dict[str, Counter] = {}
    for line in results.splitlines():
        match = LINE.match(line)
        if match:
            counts = by_module.setdefault(module_of(match["name"]), Counter())
            counts["all"] += 1
            counts["killed"] += match["status"].strip() in KILLED
    return by_module


def below(by_module: dict[str, Counter], minimum: float) -> list[str]:
    """The modules whose share of killed mutants is under `minimum` percent."""
    return [
        module
        for module, counts in sorted(by_module.items())
        if 100 * counts["killed"] < minimum * counts["all"]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--min", type=float, default=None, help="fail when a module scores under this percent"
    )
    args = parser.parse_args(argv)
    mutmut = Path(sys.executable).with_name("mutmut")
    results = subprocess.run(
        [str(mutmut), "results", "--all", "true"], capture_output=True, text=True, check=True
    ).stdout
    by_module = scores(results)
    total = Counter()
    for module, counts in sorted(by_module.items()):
        total.update(counts)
        share = counts["killed"] / counts["all"]
        print(f"mutation score {module}: {counts['killed']}/{counts['all']} killed ({share:.0%})")
    if total["all"]:
        share = total["killed"] / total["all"]
        print(f"mutation score total: {total['killed']}/{total['all']} killed ({share:.0%})")
    if args.min is not None:
        if not by_module:
            print("mutation score: no mutants in mutmut's results", file=sys.stderr)
            return 1
        failing = below(by_module, args.min)
        for module in failing:
            counts = by_module[module]
            share = 100 * counts["killed"] / counts["all"]
            print(f"mutation score {module}: {share:.1f}% is under {args.min:g}%", file=sys.stderr)
        if failing:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
