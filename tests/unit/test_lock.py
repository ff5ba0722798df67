"""The committed dvc.lock was made from the committed code and params.

Otherwise `dvc repro` on a clone reruns stages nobody changed, and the metrics in
the lock (and in PR reviews) describe code that is no longer there.
"""

import hashlib
import json
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def committed_files() -> set[str]:
    listing = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return set(listing.splitlines())


def md5_of(path: str, tracked: set[str]) -> str | None:
    """DVC's md5 of a committed file, or of a folder of committed files (DVC 3: the md5 of
    the sorted JSON list of its files' md5 and relpath, suffixed ".dir"); None for what git
    does not hold (data and models live in the DVC cache)."""
    if path in tracked:
        return hashlib.md5((ROOT / path).read_bytes()).hexdigest()
    inside = sorted(name for name in tracked if name.startswith(f"{path}/"))
    if not inside:
        return None
    entries = [
        {
            "md5": hashlib.md5((ROOT / name).read_bytes()).hexdigest(),
            "relpath": name[len(path) + 1 :],
        }
        for name in inside
    ]
    listing = json.dumps(entries, sort_keys=True).encode()
    return hashlib.md5(listing).hexdigest() + ".dir"


def test_every_code_dependency_in_the_lock_matches_the_file():
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    tracked = committed_files()
    checked, stale = 0, []
    for stage_name, stage in lock["stages"].items():
        for dep in stage.get("deps", []):
            actual = md5_of(dep["path"], tracked)
            if actual is None or "md5" not in dep:
                continue
            checked += 1
            if actual != dep["md5"]:
                stale.append(f"{stage_name}: {dep['path']}")
    assert checked >= 20, "dvc.lock lists fewer code dependencies than dvc.yaml declares"
    assert not stale, f"dvc.lock predates these files; run `make repro`: {stale}"


def _param(params: dict, key: str) -> object:
    """A params.yaml value by DVC's key: a section ("train") or a dotted path ("a.b")."""
    value: object = params
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def test_the_params_in_the_lock_are_the_params_file():
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stale = [
        f"{stage_name}: {key}"
        for stage_name, stage in lock["stages"].items()
        for key, value in stage.get("params", {}).get("params.yaml", {}).items()
        if _param(params, key) != value
    ]
    assert not stale, f"params.yaml changed since dvc.lock was written; run `make repro`: {stale}"


def test_a_dotted_param_is_read_from_its_section():
    params = {"export_onnx": {"quantize": "int8", "opset": 17}, "base": {"seed": 42}}
    assert _param(params, "export_onnx.quantize") == "int8"
    assert _param(params, "base") == {"seed": 42}
    assert _param(params, "export_onnx.missing") is None
    assert _param(params, "base.seed.deeper") is None
