"""Put the versioned dataset in place: data/source/chest-xray-pneumonia, as its .dvc file says.

The dataset is a DVC-tracked folder: its content hash is committed in
`data/source/chest-xray-pneumonia.dvc`, its bytes live in the DVC remote. This
module makes the folder match that hash, trying in order:

1. the workspace already matches (nothing to do);
2. the local DVC cache (`dvc checkout`);
3. the configured DVC remote (`dvc pull`);
4. a local copy given with --fallback (default: ../shared/data/chest-xray-pneumonia),
   copied in and accepted only if it hashes to the committed value, then put in the
   DVC cache so that `dvc push` can publish it.

Anything else is an error that names the remote and the fallback folder.

    python -m pneumonia.dataset                 # what `make repro` runs first
    python -m pneumonia.dataset --fallback /data/chest_xray
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pneumonia import paths

log = logging.getLogger("dataset")

DEFAULT_FALLBACK = Path("..") / "shared" / "data" / "chest-xray-pneumonia"


class DatasetError(RuntimeError):
    """The dataset could not be put in place; the message says where it was looked for."""


def dvc(*args: str) -> subprocess.CompletedProcess:
    """`dvc ARGS` from the interpreter's own environment, output captured."""
    command = [sys.executable, "-m", "dvc", *args]
    return subprocess.run(command, capture_output=True, text=True)


def state(target: Path = paths.SOURCE) -> str:
    """'ok', 'not in cache' (right bytes, not cached yet), 'deleted' or 'modified'."""
    result = dvc("status", "--json", str(target.with_suffix(".dvc")))
    if result.returncode != 0:
        raise DatasetError(f"dvc status failed: {result.stderr.strip()[-500:]}")
    changes = json.loads(result.stdout or "{}")
    for entry in changes.get(str(target.with_suffix(".dvc")), []):
        if isinstance(entry, dict) and "changed outs" in entry:
            return str(entry["changed outs"].get(target.as_posix(), "modified"))
    return "ok"


def remote_url() -> str:
    """The default DVC remote and its URL, for messages."""
    result = dvc("remote", "default")
    name = result.stdout.strip()
    if not name:
        return "no default DVC remote"
    url = dvc("config", f"remote.{name}.url").stdout.strip()
    return f"DVC remote {name!r} ({url})"


def from_fallback(folder: Path, target: Path) -> None:
    """Copy `folder` in; keep it only if DVC hashes it to the committed value.

    `dvc status` cannot tell right from wrong bytes without a cache, so the copy is
    committed to the cache (DVC's own hashing) and the .dvc file compared before and
    after: a different hash is put back, and the copy removed.
    """
    dvc_file = target.with_suffix(".dvc")
    committed = dvc_file.read_text()
    log.info("copying %s into %s", folder, target)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(folder, target)
    result = dvc("commit", "--force", str(dvc_file))
    found = dvc_file.read_text()
    if result.returncode != 0 or found != committed:
        dvc_file.write_text(committed)
        shutil.rmtree(target)
        raise DatasetError(
            f"{folder} is not the dataset {dvc_file} names: its content hash differs "
            f"({hash_of(found)} against the committed {hash_of(committed)}). Point --fallback "
            f"at an unmodified copy, or commit the new data with `dvc add {target}` "
            "(a reviewable change of the hash)."
        )


def hash_of(dvc_text: str) -> str:
    """The md5 an .dvc file records for its output."""
    outs = yaml.safe_load(dvc_text).get("outs") or [{}]
    return str(outs[0].get("md5", "?"))


def ensure(target: Path = paths.SOURCE, fallback: Path | None = DEFAULT_FALLBACK) -> str:
    """Make `target` match its .dvc file; returns where the bytes came from."""
    if not target.with_suffix(".dvc").is_file():
        raise DatasetError(f"{target.with_suffix('.dvc')} is missing: nothing says what to fetch")
    if state(target) == "ok":
        return "workspace"
    if dvc("checkout", str(target.with_suffix(".dvc"))).returncode == 0 and state(target) == "ok":
        return "DVC cache"
    log.info("pulling %s from the %s", target, remote_url())
    pulled = dvc("pull", str(target.with_suffix(".dvc")))
    if pulled.returncode == 0 and state(target) == "ok":
        return "DVC remote"
    if fallback is not None and (fallback / "train").is_dir():
        from_fallback(fallback, target)
        return f"{fallback} (verified against the committed hash)"
    raise DatasetError(
        f"the dataset {target} is neither in the {remote_url()} "
        f"nor at {fallback if fallback is not None else '(no fallback folder given)'}. "
        "Configure the remote and its credentials (README, 'Remote storage'), or pass "
        "--fallback PATH to a copy in the Kaggle chest-xray-pneumonia layout."
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: put the dataset in place; exit 1 when it cannot be."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--fallback",
        type=Path,
        default=DEFAULT_FALLBACK,
        help="a local copy to verify and use when the remote does not have the data",
    )
    parser.add_argument(
        "--no-fallback", action="store_true", help="the DVC cache or remote only (CI runners)"
    )
    args = parser.parse_args(argv)
    try:
        origin = ensure(paths.SOURCE, None if args.no_fallback else args.fallback)
    except DatasetError as error:
        log.error("%s", error)
        return 1
    log.info("%s is in place, from the %s", paths.SOURCE, origin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
