"""Keep the view check's statistics of radiographs whose licence allows no copy.

    python -m benchmarks.view_statistics --git-dir DIR [--out FILE]
    python -m benchmarks.view_statistics --git-dir DIR --endpoint [--model DIR] [--record FILE]

DIR: a git directory of rishabhbhardwaj/ChestXRay-Classification (a snapshot that commits
CheXpert v1.0's validation split, the downsampled JPEGs). Each frontal and lateral view is
read from the commit, decoded and screened as the endpoint does, and only its view grids
are kept (`pneumonia.evaluation.view.view_grids`: 16x16 cell means, standardised, as it is
and under each framing shift), never the image. Run it again when
`pneumonia.decision.view.VIEW_FEATURES_VERSION` or the framing shifts change: evaluate refuses
statistics of another version.

`--endpoint` instead sends each image through the served model (`models/`) as the endpoint
does and counts its answers by view: the intended-use head has never seen these images (it
is fitted on network features of committed images only), the view check has (the full fit
uses the kept statistics; its cross-validated figures are evaluate's).
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import numpy as np

from pneumonia import paths
from pneumonia.config import load_params
from pneumonia.data.prepared import preprocess_config
from pneumonia.decision.view import view_grid
from pneumonia.evaluation.view import KEPT_STATISTICS, ReasonNetwork, framings, save_kept
from pneumonia.images.formats import ImageError
from pneumonia.images.screening import screen_and_prepare
from pneumonia.release.reason import network_onnx

REPOSITORY = "rishabhbhardwaj/ChestXRay-Classification"
COMMIT = "cb6db7eab66933e1ddbfe51cfe1d9ceef23adbdd"
VIEWS = re.compile(
    r"^CheXpert-v1\.0-small/valid/patient\d+/study\d+/view\d+_(frontal|lateral)\.jpg$"
)
KIND = {"frontal": "adult_chest", "lateral": "lateral_chest"}
LICENCE = (
    "CheXpert Dataset Research Use Agreement (Stanford AIMI): no copies; the repository "
    "has no licence of its own. Only these derived statistics are kept."
)


def git(git_dir: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True
    ).stdout


def endpoint(git_dir: Path, commit: str, chosen: list[str], model: Path) -> str:
    """Markdown: each view's images by the served model's answer (answered, or the reason)."""
    from pneumonia.machine import describe
    from pneumonia.serving.classifier import Classifier
    from pneumonia.serving.requests import ClientError

    classifier = Classifier.load(model)
    counts: dict[str, dict[str, int]] = {}
    for name in chosen:
        view = VIEWS.match(name)
        assert view is not None  # chosen by it
        try:
            classifier.classify(git(git_dir, "show", f"{commit}:{name}"))
            answer = "answered"
        except ClientError as refused:
            answer = refused.reason
        mine = counts.setdefault(view.group(1), {})
        mine[answer] = mine.get(answer, 0) + 1
    answers = sorted({answer for mine in counts.values() for answer in mine})
    lines = [
        f"{describe()}; model {classifier.metadata.model_version}; {REPOSITORY}@{commit[:8]}",
        "",
        "| view | images | " + " | ".join(answers) + " |",
        "|---|---:|" + "---:|" * len(answers),
    ]
    for view, mine in sorted(counts.items()):
        cells = " | ".join(str(mine.get(answer, 0)) for answer in answers)
        lines.append(f"| {view} | {sum(mine.values())} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--git-dir", type=Path, required=True)
    parser.add_argument("--commit", default=COMMIT)
    parser.add_argument("--out", type=Path, default=KEPT_STATISTICS / "chexpert-valid.npz")
    parser.add_argument("--endpoint", action="store_true", help="count the served answers")
    parser.add_argument("--record", type=Path, help="with --endpoint: also write the table here")
    parser.add_argument("--model", type=Path, default=paths.MODELS, help="with --endpoint")
    args = parser.parse_args()
    listed = git(args.git_dir, "ls-tree", "-r", "--name-only", args.commit).decode().splitlines()
    chosen = sorted(name for name in listed if VIEWS.match(name))
    if args.endpoint:
        table = endpoint(args.git_dir, args.commit, chosen, args.model)
        print(table)
        if args.record:
            args.record.write_text(table)
        return
    config = preprocess_config()
    network = ReasonNetwork(network_onnx(load_params().export_onnx.opset))
    grids, reasons, kinds, files = [], [], [], []
    for name in chosen:
        view = VIEWS.match(name)
        assert view is not None  # chosen by it
        data = git(args.git_dir, "show", f"{args.commit}:{name}")
        try:
            gray, _ = screen_and_prepare(data, config)
        except ImageError as error:
            print(f"left out {name}: {error.reason}")
            continue
        grays = framings(gray)
        grids.append(np.stack([view_grid(image) for image in grays]))
        reasons.append(network.features(grays))
        kinds.append(KIND[view.group(1)])
        files.append(name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    source = {"repository": REPOSITORY, "commit": args.commit, "licence": LICENCE}
    save_kept(args.out, np.stack(grids), kinds, files, source, np.stack(reasons))
    counts = {kind: kinds.count(kind) for kind in sorted(set(kinds))}
    print(f"{args.out}: {counts}, {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
