"""The ablation's runs leave the branch checked out: `dvc exp run` detaches HEAD, and an
interrupted run leaves it so, where later commits would leave the branch behind."""

from __future__ import annotations

import subprocess

import pytest

from benchmarks import ablation


def git(folder, *command: str) -> str:
    return subprocess.run(
        ["git", "-C", str(folder), *command], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    git(tmp_path, "init", "--quiet", "--initial-branch", "main")
    for number in (1, 2):
        (tmp_path / "file").write_text(str(number))
        git(tmp_path, "add", "file")
        git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", str(number))
    monkeypatch.setattr(ablation, "ROOT", tmp_path)
    return tmp_path


def test_a_head_left_detached_at_the_branch_is_put_back_on_it(repo):
    git(repo, "checkout", "--quiet", git(repo, "rev-parse", "HEAD"))
    ablation.reattach("main")
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "main"


def test_a_head_detached_elsewhere_or_with_no_branch_is_left_alone(repo):
    earlier = git(repo, "rev-parse", "HEAD~1")
    git(repo, "checkout", "--quiet", earlier)
    ablation.reattach("main")  # not the branch's commit: someone's own checkout
    ablation.reattach("")  # the run started detached
    assert git(repo, "rev-parse", "HEAD") == earlier
    assert subprocess.run(["git", "-C", str(repo), "symbolic-ref", "-q", "HEAD"]).returncode == 1
