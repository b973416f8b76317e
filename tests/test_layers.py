"""Imports point one way: io -> data -> models / sampling / text -> pipelines -> training -> evaluation -> cli.

Every ``import volsynth...`` in src/ (at module level or inside a function) must go to the same layer or a lower
one; and no volsynth import sits inside a function to dodge a cycle (the command line's lazy imports, and the
package root's PEP 562 attribute, are the exceptions: they keep ``volsynth --help`` fast). No file is over 400
lines.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "volsynth"
LAYERS = {  # package or top-level module -> layer
    "errors": 0, "config": 0, "devices": 0, "io": 0, "parallel": 0, "viz": 0,
    "data": 1,
    "models": 2, "sampling": 2, "text": 2,
    "pipelines": 3,
    "training": 4,
    "evaluation": 5,
    "demo": 6, "cli": 6, "pipeline_commands": 6, "studio": 6,
}
LAZY_ALLOWED = {"cli.py", "__init__.py", "evaluation/commands.py", "training/commands.py", "pipeline_commands.py",
                "studio/commands.py"}
MAX_LINES = 400


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "volsynth":
        return None
    if len(parts) == 1:
        return -1  # the package root (``__version__``)
    return LAYERS[parts[1]]


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inside = {id(node) for f in functions for node in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno, id(node) in inside
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in inside


def _files():
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer():
    names = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in _files()} - {"__init__"}
    assert names <= set(LAYERS), names - set(LAYERS)


def test_imports_point_one_way():
    wrong = []
    for path in _files():
        rel = path.relative_to(SRC)
        own = 7 if rel == Path("__init__.py") else LAYERS[rel.parts[0].removesuffix(".py")]  # the root: a facade
        for module, line, _ in _imports(path):
            target = _layer(module)
            if target is not None and target > own:
                wrong.append(f"{rel}:{line} imports {module} (layer {target} > {own})")
    assert not wrong, "\n".join(wrong)


def test_no_volsynth_import_inside_a_function():
    lazy = [f"{path.relative_to(SRC)}:{line} {module}" for path in _files() for module, line, inside in _imports(path)
            if inside and module.startswith("volsynth") and str(path.relative_to(SRC)) not in LAZY_ALLOWED]
    assert not lazy, "\n".join(lazy)


def test_no_file_over_the_limit():
    long = [f"{p.relative_to(SRC)}: {n}" for p in _files() if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, long
