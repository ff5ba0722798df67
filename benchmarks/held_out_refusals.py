"""How the endpoint names the real held-out X-rays it refuses, under each framing shift.

evaluate counts the held-out X-rays refused under each framing (`framing_report`); this says
what each refusal is *named*: every held-out image (test, early, late: pediatric frontal
chest X-rays of the training population's hospital, never trained on), reframed by each
shift of `FRAMING` as evaluate reframes it, encoded as a 16-bit PNG and sent through the
served model as the endpoint loads it (`Classifier.load(models/)`, `classify`): the reason
code of every 4xx, per shift, with " (gate)" where the learned gate refused (the heads and the
view check passed it: `ClientError.check`). evaluate reports the same names pooled over the
framings (`metrics/refusals.json`), on the images as it decodes them. A real chest X-ray
refused as `not_a_chest_xray` is named wrongly (the intended-use issue: a chest X-ray unlike
the training cohort is never `not_a_chest_xray`). For the refusals the reason head names, its
logits are kept and each is named again under each prior for other body parts (`--priors`,
in place of `pneumonia.decision.reason.BODY_PART_PRIOR`): what the prior costs real X-rays.

Needs `make repro` (models/, data/raw, data/prepared).

    python -m benchmarks.held_out_refusals [--splits test early late] [--priors 0 0.5 1 1.5]

Prints the table and appends it to benchmarks/held_out_refusals.txt (`--out`).
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.cache import print_and_record

ROOT = Path(__file__).resolve().parents[1]


def png(gray: np.ndarray) -> bytes:
    """The decoded (H, W) image in [0, 1] as a 16-bit PNG (what evaluate scores, to 1/65535)."""
    import cv2

    ok, encoded = cv2.imencode(".png", np.round(gray * 65535).astype(np.uint16))
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()


@dataclass
class Found:
    """What the endpoint said of the reframed held-out images."""

    codes: dict[str, Counter]  # per framing, each refusal's reason code (+ " (gate)")
    images: int  # per framing
    version: str  # the model's
    logits: list[np.ndarray]  # the reason head's, of each refusal it named
    lateral: list[bool]  # the view check's call on each of those


def reasons(splits: list[str]) -> Found:
    """Every held-out image of `splits` under each framing shift (and `unchanged`) through
    the served model."""
    from pneumonia import paths
    from pneumonia.evaluation.framing import UNCHANGED, held_out_files
    from pneumonia.evaluation.shifts import FRAMING
    from pneumonia.images.decode import decode_image
    from pneumonia.serving.classifier import Classifier, prepare
    from pneumonia.serving.requests import ClientError

    model = Classifier.load(paths.MODELS)
    files, _ = held_out_files(splits)
    decoded = [decode_image(path.read_bytes()) for path in files]
    found = Found({}, len(files), model.metadata.model_version, [], [])
    shifts = {UNCHANGED: lambda gray: gray, **FRAMING}
    for name, shift in tqdm(shifts.items(), desc="framings", unit="shift"):
        counts: Counter = Counter()
        for gray in decoded:
            sent = png(shift(gray))
            try:
                model.classify(sent)
            except ClientError as refusal:
                by = " (gate)" if refusal.check == "gate" else ""
                counts[refusal.reason + by] += 1
                if refusal.check is None:
                    continue  # refused before the model: the reason head does not name it
                # decoded as serving decodes it (the logits the endpoint named it by)
                layout = model.namer.layout(prepare(sent, model.metadata.preprocessing)[0])
                logits = model.namer.logits(layout)
                if logits is not None:
                    found.logits.append(logits)
                    found.lateral.append(layout.lateral)
        found.codes[name] = counts
    return found


def by_prior(found: Found, priors: list[float]) -> list[str]:
    """The refusals the reason head names, pooled over the framings, named again under each
    prior: how many get each reason code."""
    from pneumonia.decision.reason import BODY_PART_PRIOR, reason_named
    from pneumonia.decision.use import REFUSAL_REASONS, USE_KINDS

    codes = sorted(set(REFUSAL_REASONS.values()))
    lines = [
        f"| prior | named by the reason head | {' | '.join(codes)} |",
        "|---:|---:|" + "---:|" * len(codes),
    ]
    body = USE_KINDS.index("other_body_part")
    for prior in priors:
        counts: Counter = Counter()
        for logits, lateral in zip(found.logits, found.lateral, strict=True):
            shifted = np.asarray(logits, dtype=np.float64).copy()
            shifted[body] += prior - BODY_PART_PRIOR
            kind = reason_named(shifted, lateral)
            counts[REFUSAL_REASONS[str(kind)]] += 1
        cells = " | ".join(str(counts.get(code, 0)) for code in codes)
        mark = " (served)" if prior == BODY_PART_PRIOR else ""
        lines.append(f"| {prior:g}{mark} | {len(found.logits)} | {cells} |")
    return lines


def table(found: dict[str, Counter], images: int) -> list[str]:
    """One row per shift: refused, and each reason code's count."""
    codes = sorted({code for counts in found.values() for code in counts})
    lines = [
        f"| framing | refused of {images} | " + " | ".join(codes) + " |",
        "|---|---:|" + "---:|" * len(codes),
    ]
    for name, counts in found.items():
        cells = " | ".join(str(counts.get(code, 0)) for code in codes)
        lines.append(f"| {name} | {sum(counts.values())} | {cells} |")
    pooled = Counter[str]()
    for counts in found.values():
        pooled.update(counts)
    cells = " | ".join(str(pooled.get(code, 0)) for code in codes)
    lines.append(f"| all framings | {sum(pooled.values())} | {cells} |")
    return lines


def main() -> None:
    """Parse the arguments, send every reframed image, print and record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", nargs="+", default=["test", "early", "late"])
    parser.add_argument("--priors", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/held_out_refusals.txt")
    args = parser.parse_args()
    from pneumonia.machine import describe

    found = reasons(args.splits)
    lines = [
        f"machine: {describe()}; model {found.version}; held-out splits {', '.join(args.splits)}",
        "",
        *table(found.codes, found.images),
        "",
        *by_prior(found, args.priors),
    ]
    print_and_record("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
