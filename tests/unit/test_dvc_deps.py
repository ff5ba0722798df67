"""Every project module a stage imports is in that stage's deps in dvc.yaml.

Otherwise `dvc repro` skips a stage whose code changed, and the lock describes code
that is no longer there. Imports are followed statically (ast), never executed.
"""

from __future__ import annotations

import ast
import os
import shlex
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STAGES: dict[str, dict] = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_files(root: Path, dotted: str) -> list[Path]:
    """The files `import dotted` runs inside root: each package __init__ on the way, the module."""
    found: list[Path] = []
    base = root
    for part in dotted.split("."):
        base = base / part
        if (base / "__init__.py").is_file():
            found.append(base / "__init__.py")
        elif base.with_suffix(".py").is_file():
            found.append(base.with_suffix(".py"))
            break
        elif not base.is_dir():  # a folder without __init__.py is a namespace package
            break
    return found


def absolute(root: Path, path: Path, module: str | None, level: int) -> str:
    if not level:
        return module or ""
    parts = list(path.relative_to(root).with_suffix("").parts)[:-1]
    parts = parts[: len(parts) - level + 1] if level > 1 else parts
    return ".".join([*parts, *([module] if module else [])])


def is_import_module(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name == "import_module" and bool(node.args)


@cache
def imported_names(root: Path, path: Path) -> tuple[str, ...]:
    """Dotted names path imports anywhere in its body: functions and TYPE_CHECKING included."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = absolute(root, path, node.module, node.level)
            names += [base] + [f"{base}.{a.name}" for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Call) and is_import_module(node):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.append(arg.value)
    return tuple(name for name in names if name and not name.startswith("."))


def entry_files(root: Path, cmd: str | list[str]) -> list[Path]:
    """The files the python commands in a stage's cmd start from."""
    found: list[Path] = []
    for part in [cmd] if isinstance(cmd, str) else cmd:
        for command in part.split("&&"):
            words = shlex.split(command)
            if not words or not Path(words[0]).name.startswith("python"):
                continue
            args = words[1:]
            if "-m" in args:
                dotted = args[args.index("-m") + 1]
                found += module_files(root, dotted)
                main = root.joinpath(*dotted.split("."), "__main__.py")
                found += [main] if main.is_file() else []
            elif args and args[0].endswith(".py"):
                found.append(root / args[0])
    return found


def reachable(root: Path, cmd: str | list[str]) -> set[str]:
    """Repo-relative paths of every project file the cmd's imports reach, transitively."""
    todo = entry_files(root, cmd)
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(root, path):
            todo += module_files(root, name)
    return {path.relative_to(root).as_posix() for path in seen}


def dep_paths(stage: dict) -> list[str]:
    deps = [next(iter(dep)) if isinstance(dep, dict) else dep for dep in stage.get("deps", [])]
    return [os.path.normpath(str(dep).rstrip("/")) for dep in deps]


def uncovered(files: set[str], deps: list[str]) -> list[str]:
    def covered(file: str) -> bool:
        return any(dep == "." or file == dep or file.startswith(dep + "/") for dep in deps)

    return sorted(file for file in files if not covered(file))


@pytest.mark.parametrize("name", list(STAGES), ids=list(STAGES))
def test_every_imported_project_file_is_a_dep_of_the_stage(name: str) -> None:
    stage = STAGES[name]
    reached = reachable(ROOT, stage["cmd"])
    assert reached, f"stage {name}: no python entry point found in cmd {stage['cmd']!r}"
    missing = uncovered(reached, dep_paths(stage))
    assert not missing, (
        f"stage {name} imports files that are not in its deps: {', '.join(missing)}; "
        "add the file or its folder to dvc.yaml"
    )


def test_follower_on_a_small_tree(tmp_path: Path) -> None:
    files = {  # each file below pkg/ is reached by one route only
        "pkg/__init__.py": "",
        "pkg/main.py": "from pkg import sub\nfrom .rel import thing\n"
        "def late():\n    import pkg.deep.leaf\n",
        "pkg/sub.py": "import os\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import pkg.typed\n",
        "pkg/typed.py": "",
        "pkg/rel.py": "from . import helper\nthing = 1\n",
        "pkg/helper.py": "",
        "pkg/deep/__init__.py": "",
        "pkg/deep/leaf.py": "import importlib\nfrom .. import other\n"
        "importlib.import_module('pkg.dyn')\n",
        "pkg/other.py": "",
        "pkg/dyn.py": "",
        "pkg/unused.py": "",
        "tool.py": "import numpy\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    reached = reachable(tmp_path, "python -m pkg.main && python tool.py")
    assert reached == set(files) - {"pkg/unused.py"}
    deps = dep_paths({"deps": ["pkg/deep/", "pkg/de", {"tool.py": {"cache": False}}]})
    assert uncovered(reached, deps) == sorted(
        set(files) - {"pkg/unused.py", "pkg/deep/__init__.py", "pkg/deep/leaf.py", "tool.py"}
    )
