"""Mutation scores per module from mutmut's results (`make mutation` runs it after mutmut).

    python tests/mutation_score.py

Prints `mutation score MODULE: K/N killed (P%)` for each mutated module, then the total.
A mutant counts as killed when a test failed or timed out on it; "no tests" (no selected
test reaches the mutated function) and survivors count against the score.
"""

from __future__ import annotations

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


def main() -> int:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
