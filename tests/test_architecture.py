"""The structure docs/ARCHITECTURE.md describes, checked on the source: which package may import which, the few
top-level modules, short functions, typed configs."""

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "leukemia"
# What each package may import of the project, besides the shared leaves (errors, names, schema) and the root
# config (which imports the packages' schemas: a package below it that imports it closes a cycle, see below).
ALLOWED = {
    "models": set(),
    "data": {"data"},
    "evaluation": {"evaluation"},
    "training": {"training", "data", "models", "evaluation"},
    "tracking": {"tracking"},
    "tasks": {"tasks", "data", "training", "tracking", "models", "evaluation"},
}
# Single modules a package may import beyond those: the logged model carries the network, the decoding and the
# decision; a run logs an evaluation's report.
ALLOWED_MODULES = {
    "tracking": {
        "leukemia.models",
        "leukemia.data.decoding",
        "leukemia.evaluation.decision",
        "leukemia.evaluation.report",
        "leukemia.training.schema",  # trainer.monitor: which way a sweep's best job lies
    }
}
SHARED = ("config", "errors", "names", "schema")


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imported(path: Path) -> set[str]:
    """The project modules (``leukemia.x.y``) and third-party packages ``path`` imports, at any depth."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return names


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(REPO)))
def test_imports_point_one_way(path):
    own = layer(path)
    for name in imported(path):
        if name.split(".")[0] == "mlflow":
            assert own == "tracking", f"{path.name} imports mlflow; only leukemia/tracking may"
        if not name.startswith("leukemia.") or own in ("__main__", "bench", *SHARED):
            continue
        target = name.split(".")[1]
        if target in SHARED or own not in ALLOWED or name in ALLOWED_MODULES.get(own, ()):
            continue
        assert target in ALLOWED[own], f"{path.relative_to(REPO)} imports {name}: {own} may not depend on {target}"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module's project imports (at any depth: a function's import counts), as module names; importing
    ``leukemia.x.y`` also runs the packages above it, except those the importer sits in (already running)."""
    known = {module_name(path) for path in modules()}
    graph = {}
    for path in modules():
        own, targets = module_name(path), set()
        for name in imported(path):
            parts = name.split(".")
            targets |= {".".join(parts[:k]) for k in range(2, len(parts) + 1)} & known
        graph[own] = {target for target in targets if not f"{own}.".startswith(f"{target}.")}
    return graph


def test_no_import_cycle():
    graph, state, path = import_graph(), {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            assert state.get(target) != "open", " -> ".join([*path[path.index(target) :], target])
            if target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_at_most_six_modules_sit_directly_in_the_package():
    top = sorted(path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py")
    assert len(top) <= 6, top
    assert {path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"} == {
        "data",
        "evaluation",
        "training",
        "tracking",
        "tasks",
        "bench",
    }


def test_every_folder_of_the_package_is_a_package():
    """What ``pip install .`` builds holds only packages: a folder without ``__init__.py`` is left out."""
    folders = [path for path in [PACKAGE, *PACKAGE.rglob("*")] if path.is_dir() and path.name != "__pycache__"]
    assert [str(folder) for folder in folders if not (folder / "__init__.py").is_file()] == []


def functions():
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield path, node


def test_no_function_is_longer_than_60_lines():
    long = [f"{path.relative_to(REPO)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, node in functions() if node.end_lineno - node.lineno + 1 > 60]  # fmt: skip
    assert not long


def test_no_config_parameter_is_typed_any():
    untyped = [f"{path.relative_to(REPO)}:{node.name}({argument.arg})" for path, node in functions()
               for argument in node.args.args
               if argument.arg.endswith("cfg") and (argument.annotation is None
                                                   or ast.unparse(argument.annotation) == "Any")]  # fmt: skip
    assert not untyped
