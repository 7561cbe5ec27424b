"""The package's shape: imports go one way (models, then run folders, then data, then training
and evaluation, then the pipeline, then the CLI), with no circle, and no module grows past 450
lines."""

import ast
from pathlib import Path

import nanodreamer

ROOT = Path(nanodreamer.__file__).parent
# Optional or slow imports a function may make; every other import sits at the module's top.
LAZY = {"ale_py", "lpips", "wandb", "minari", "torch.utils.tensorboard", "minari.data_collector"}
# (importer prefix, forbidden prefix): the arrows that would point back down the layers.
FORBIDDEN = [
    ("nanodreamer.data", "nanodreamer.train"),
    ("nanodreamer.data", "nanodreamer.eval"),
    ("nanodreamer.eval", "nanodreamer.train"),
    ("nanodreamer.runs", "nanodreamer.data"),
    ("nanodreamer.runs", "nanodreamer.train"),
    ("nanodreamer.runs", "nanodreamer.eval"),
    ("nanodreamer.train", "nanodreamer.pipeline"),
    ("nanodreamer.eval", "nanodreamer.pipeline"),
    ("nanodreamer.", "nanodreamer.cli"),  # only `python -m nanodreamer` (__main__) runs it
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, inside a function) for every import of the file."""
    tree, found = ast.parse(path.read_text()), []
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    nested = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in nested) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:  # `from package import submodule` imports the submodule
                name = f"{node.module}.{alias.name}"
                found.append((name if name in MODULES else node.module, id(node) in nested))
    return found


GRAPH = {
    name: {m for m, _ in imports(path) if m in MODULES and m != name}
    for name, path in MODULES.items()
}


def test_no_import_circle():
    state = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for other in sorted(GRAPH[name]):
            assert state.get(other) != 1, " -> ".join(path + [name, other])
            if other not in state:
                visit(other, path + [name])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [])


def test_imports_point_down_the_layers():
    wrong = [
        f"{name} imports {other}"
        for name, others in GRAPH.items()
        for other in others
        for low, high in FORBIDDEN
        if name.startswith(low)
        and other.startswith(high)
        and not name.startswith(high)
        and name != "nanodreamer.__main__"
    ]
    assert not wrong, wrong


def test_imports_inside_functions_only_for_optional_modules():
    lazy = [
        f"{name}: {module}"
        for name, path in MODULES.items()
        for module, inside in imports(path)
        if inside and module not in LAZY
    ]
    assert not lazy, lazy


def test_no_module_over_450_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert max(long.values()) <= 450, {n: k for n, k in long.items() if k > 450}
