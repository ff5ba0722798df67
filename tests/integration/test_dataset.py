"""`python -m pneumonia.dataset` in fresh clones: the dataset from the DVC remote, or from a
local copy verified against the committed hash, or a clear error naming both places."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.pipeline_repo import pipeline_env

pytestmark = pytest.mark.integration

SOURCE = Path("data/source/chest-xray-pneumonia")


def sh(cwd: Path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=cwd, env=pipeline_env(cwd), capture_output=True, text=True, timeout=300
    )


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True)


def small_dataset(sample_data: Path, destination: Path) -> Path:
    """Four real images per class in the Kaggle layout."""
    for label in ("NORMAL", "PNEUMONIA"):
        folder = destination / "train" / label
        folder.mkdir(parents=True)
        for file in sorted((sample_data / "train" / label).iterdir())[:4]:
            shutil.copyfile(file, folder / file.name)
    return destination


@pytest.fixture
def origin(tmp_path, sample_data) -> tuple[Path, Path, Path]:
    """(repository with the dataset DVC-tracked, its empty local remote, a copy of the data)."""
    repo, remote = tmp_path / "origin", tmp_path / "remote"
    repo.mkdir()
    remote.mkdir()
    git(repo, "init", "-q", "-b", "main")
    assert sh(repo, sys.executable, "-m", "dvc", "init", "-q").returncode == 0
    assert sh(repo, "dvc", "remote", "add", "-d", "store", str(remote)).returncode == 0
    small_dataset(sample_data, repo / SOURCE)
    assert sh(repo, "dvc", "add", str(SOURCE)).returncode == 0
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "dataset")
    copy = shutil.copytree(repo / SOURCE, tmp_path / "elsewhere" / "chest-xray-pneumonia")
    return repo, remote, copy


def fresh_clone(repo: Path, where: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(repo), str(where)], check=True)
    assert not (where / SOURCE).exists()
    return where


def fetch(clone: Path, fallback: Path) -> subprocess.CompletedProcess:
    return sh(clone, sys.executable, "-m", "pneumonia.dataset", "--fallback", str(fallback))


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.jpeg")}


def test_a_fresh_clone_gets_the_dataset_from_the_remote(origin, tmp_path):
    repo, _, copy = origin
    assert sh(repo, "dvc", "push").returncode == 0
    clone = fresh_clone(repo, tmp_path / "runner" / "clone")
    result = fetch(clone, tmp_path / "nowhere")
    assert result.returncode == 0, result.stderr
    assert "from the DVC remote" in result.stderr
    assert files(clone / SOURCE) == files(copy)


def test_with_an_empty_remote_a_local_copy_is_verified_cached_and_pushable(origin, tmp_path):
    repo, remote, copy = origin
    clone = fresh_clone(repo, tmp_path / "runner" / "clone")
    result = fetch(clone, copy)
    assert result.returncode == 0, result.stderr
    assert "verified against the committed hash" in result.stderr
    assert files(clone / SOURCE) == files(copy)
    assert sh(clone, "dvc", "status").stdout.strip().endswith("up to date.")
    assert sh(clone, "dvc", "push").returncode == 0  # now in the cache, so it can be published
    assert "in sync" in sh(clone, "dvc", "status", "-c").stdout
    assert any(remote.rglob("*")), "nothing reached the remote"
    assert not sh(clone, "git", "status", "--porcelain").stdout.strip()  # the hash is unchanged


def test_a_local_copy_that_differs_is_refused_and_removed(origin, tmp_path):
    repo, _, copy = origin
    changed = next((copy / "train" / "NORMAL").iterdir())
    changed.write_bytes(changed.read_bytes()[:-10])
    clone = fresh_clone(repo, tmp_path / "runner" / "clone")
    result = fetch(clone, copy)
    assert result.returncode == 1
    assert "content hash differs" in result.stderr and str(copy) in result.stderr
    assert not (clone / SOURCE).exists()


def test_neither_remote_nor_copy_is_an_error_naming_both(origin, tmp_path):
    repo, remote, _ = origin
    clone = fresh_clone(repo, tmp_path / "runner" / "clone")
    missing = tmp_path / "no" / "such" / "folder"
    result = fetch(clone, missing)
    assert result.returncode == 1
    assert str(remote) in result.stderr and str(missing) in result.stderr
