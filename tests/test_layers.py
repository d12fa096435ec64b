"""The package's architecture, checked: every module imports only from its own layer or the
layers below it, and no import cycle exists anywhere, counting imports inside functions.
(The layers are listed in ``mgpu_lab/__init__.py`` and in the README's module table.)"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mgpu_lab"

# module (dotted, without "mgpu_lab.") or subpackage prefix -> layer
LAYERS = {
    "_theano": 1, "errors": 1, "validate": 1, "split": 1, "gradients": 1, "optim": 1,
    "models": 1, "presets": 1, "data": 1, "checkpoint": 1, "collectives": 1,
    "sources": 1,
    "predict": 2,
    "engines": 3, "trainer": 3,
    "measure": 4, "figures": 4, "exercises": 4,
    "cli": 5, "__main__": 5, "": 5,  # "": the package's own __init__
}


def modules():
    """{dotted name relative to the package: path} for every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def layer(name):
    return LAYERS[name] if name in LAYERS else LAYERS[name.split(".")[0]]


def _resolve(name, node, known):
    """The package modules one import statement in module ``name`` brings in."""
    is_pkg = modules_paths[name].name == "__init__.py"
    if isinstance(node, ast.Import):
        return [a.name[len("mgpu_lab."):] for a in node.names if a.name.startswith("mgpu_lab.")]
    if node.level == 0:
        if not (node.module or "").startswith("mgpu_lab"):
            return []
        base = node.module[len("mgpu_lab"):].lstrip(".")
    else:
        here = name.split(".") if name else []
        here = here if is_pkg else here[:-1]
        up = here[:len(here) - (node.level - 1)] if node.level > 1 else here
        base = ".".join(up + ([node.module] if node.module else []))
    found = []
    for alias in node.names:  # "from . import graph" imports a module, not a name
        sub = f"{base}.{alias.name}" if base else alias.name
        found.append(sub if sub in known else base)
    return found


modules_paths = modules()


def imports():
    """{module: {imported package module: line}}, from every import statement anywhere."""
    graph = {}
    for name, path in modules_paths.items():
        edges = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _resolve(name, node, modules_paths):
                    if target != name:
                        edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def test_every_module_has_a_layer():
    assert sorted(n for n in modules_paths if n.split(".")[0] not in LAYERS and n not in LAYERS) == []


def test_no_module_imports_a_layer_above_its_own():
    bad = [f"mgpu_lab.{a or '__init__'} (layer {layer(a)}) imports mgpu_lab.{b} (layer "
           f"{layer(b)}) at line {line}"
           for a, edges in imports().items() for b, line in edges.items() if layer(b) > layer(a)]
    assert bad == []


def test_there_is_no_import_cycle():
    graph, state, cycles = imports(), {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in graph.get(nxt_key := node, {}):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[nxt_key] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """A test that cannot fail is a defect: the resolver must see a function-level import."""
    src = "def f():\n    from ..trainer import DataParallelTrainer\n"
    node = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom))
    assert _resolve("predict.memory", node, modules_paths) == ["trainer"]
    assert layer("trainer") > layer("predict.memory")


@pytest.mark.parametrize("pkg", ["engines", "predict", "measure", "figures"])
def test_each_subpackage_says_what_it_holds(pkg):
    assert ast.get_docstring(ast.parse((PACKAGE / pkg / "__init__.py").read_text()))
