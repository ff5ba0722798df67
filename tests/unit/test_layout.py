"""The layout docs/code-layout.md describes: packages by lifecycle whose imports flow one way,
small stages that nothing imports, HTTP only in serving, and a Lambda image that copies what
its handlers import. Imports are followed statically (ast), as in test_dvc_deps."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest

from tests.unit.test_dvc_deps import ROOT, imported_names, module_files, reachable

# Lowest first: a unit may import its own package and units of lower layers, never higher.
LAYERS: list[set[str]] = [
    {"images"},
    {"config", "paths", "machine", "tracking"},
    {"decision"},
    {"data"},
    {"serving"},
    {"model"},
    {"release"},
    {"evaluation"},
    {"ops"},
    {"batch", "monitor", "dataset", "review", "registry", "recalibrate", "watch"},  # the commands
]
LAYER = {unit: index for index, layer in enumerate(LAYERS) for unit in layer}
CONVENTIONS = {"main", "log", "logger", "metrics", "lambda_handler"}  # the same on purpose
MAX_STAGE_LINES = 150
LIBRARY = sorted((ROOT / "pneumonia").rglob("*.py"))


def unit_of(path: Path) -> str:
    """pneumonia/<package>/... -> package; pneumonia/<module>.py -> module."""
    parts = path.relative_to(ROOT / "pneumonia").parts
    return parts[0].removesuffix(".py")


@cache
def project_imports(path: Path) -> frozenset[Path]:
    """The project files `path` imports directly (anywhere in its body)."""
    return frozenset(
        found
        for name in imported_names(ROOT, path)
        for found in module_files(ROOT, name)
        if found != path
    )


def test_every_library_unit_has_a_layer():
    assert {unit_of(path) for path in LIBRARY} - {"__init__"} == set(LAYER)


def test_packages_import_only_downwards():
    wrong = sorted(
        f"{path.relative_to(ROOT)} imports {target.relative_to(ROOT)}"
        for path in LIBRARY
        for target in project_imports(path)
        if target.is_relative_to(ROOT / "pneumonia")
        and unit_of(target) not in (unit_of(path), "__init__")
        and LAYER[unit_of(target)] >= LAYER[unit_of(path)]
        and not LAYER[unit_of(path)] == LAYER[unit_of(target)] == 1  # the shared modules
    )
    assert not wrong, "imports against the layers of docs/code-layout.md:\n" + "\n".join(wrong)


def find_cycle(graph: dict[Path, frozenset[Path]]) -> list[Path]:
    """One import cycle of `graph`, as the list of its files; [] when there is none."""
    state: dict[Path, int] = {}  # 1: on the current path, 2: done
    stack: list[Path] = []

    def visit(node: Path) -> list[Path]:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_no_module_imports_itself_through_others():
    graph = {
        path: frozenset(t for t in project_imports(path) if t.name != "__init__.py")
        for path in LIBRARY
    }
    assert find_cycle(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    a, b, c = Path("a.py"), Path("b.py"), Path("c.py")
    assert find_cycle({a: frozenset({b}), b: frozenset({c}), c: frozenset({a})}) == [a, b, c, a]
    assert find_cycle({a: frozenset({b}), b: frozenset({c})}) == []


@pytest.mark.parametrize("folder", ["pneumonia", "benchmarks", "tests", "lambda"])
def test_nothing_imports_a_stage(folder: str):
    importers = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / folder).rglob("*.py")
        if any(
            name == "stages" or name.startswith("stages.") for name in imported_names(ROOT, path)
        )
    )
    assert importers == [], "a stage is a command, not a library: import pneumonia.*"


@pytest.mark.parametrize("stage", sorted((ROOT / "stages").glob("[!_]*.py")), ids=lambda p: p.stem)
def test_each_stage_is_small(stage: Path):
    lines = len(stage.read_text().splitlines())
    assert lines <= MAX_STAGE_LINES, f"{stage.name}: {lines} lines; move the work to pneumonia/"


def test_http_statuses_exist_only_in_serving():
    leaking = sorted(
        str(path.relative_to(ROOT))
        for path in LIBRARY
        if unit_of(path) != "serving"
        and (
            "HTTPStatus" in path.read_text()
            or "pneumonia.serving.requests" in imported_names(ROOT, path)
        )
    )
    assert leaking == [], "the library raises domain errors; serving maps them to statuses"


def public_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return {name for name in names if not name.startswith("_")} - CONVENTIONS


def test_no_public_name_means_two_things():
    where = defaultdict(list)
    for path in LIBRARY:
        for name in public_names(path):
            where[name].append(str(path.relative_to(ROOT)))
    assert {name: files for name, files in where.items() if len(files) > 1} == {}


def copied_by_the_image() -> list[str]:
    """The repository paths lambda/Dockerfile copies into the image."""
    copied = []
    for line in (ROOT / "lambda" / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            copied += line.split()[1:-1]
    return copied


def test_the_image_copies_what_its_handlers_import_and_no_tensorflow():
    handlers = "python -m pneumonia.serving.app && python -m pneumonia.serving.fanout"
    needed = {str(path) for path in reachable(ROOT, handlers)}
    copied = copied_by_the_image()
    missing = sorted(
        name
        for name in needed
        if name not in copied and not any(c.endswith("/") and name.startswith(c) for c in copied)
    )
    assert missing == []
    assert "pneumonia/serving/app.py" in needed and "pneumonia/images/decode.py" in needed
    heavy = {
        f"{name} in {path}"
        for path in needed
        for name in imported_names(ROOT, ROOT / path)
        if re.match(r"(tensorflow|keras|tf2onnx|mlflow|dvc)\b", name)
    }
    assert heavy == set()


@pytest.mark.parametrize(
    "command", ["batch", "monitor", "dataset", "review", "registry", "recalibrate", "watch"]
)
def test_documented_commands_run_the_main_of_their_module(command: str):
    shim = ROOT / "pneumonia" / f"{command}.py"
    (target,) = [name for name in imported_names(ROOT, shim) if name.endswith(".main")]
    module = ROOT / (target.removesuffix(".main").replace(".", "/") + ".py")
    assert "main" in public_names(module) | {"main"} and "def main(" in module.read_text()
    assert 'if __name__ == "__main__":' in shim.read_text()
