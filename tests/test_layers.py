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
    "sources": 1, "statistics": 1,
    "predict": 2,
    "engines": 3, "trainer": 3,
    "measure": 4,  # measure returns data...
    "figures": 5, "exercises": 5,  # ...figures draw it (and may use its provenance)
    "cli": 6, "__main__": 6, "": 6,  # "": the package's own __init__
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


# -- strategies are objects; optimizers are pure ------------------------------------------
STRATEGY_NAMES = {"host", "ring", "sharded", "hierarchical", "ring16"}


def strategy_name_comparisons(source, where="<test>"):
    """Places in ``source`` that compare something to a strategy's name (==, !=, in, match)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for c in [node.left, *node.comparators]:
                elts = c.elts if isinstance(c, (ast.Tuple, ast.List, ast.Set)) else [c]
                if any(isinstance(e, ast.Constant) and e.value in STRATEGY_NAMES for e in elts):
                    found.append(f"{where}:{node.lineno}")
        elif isinstance(node, ast.match_case) and any(
                isinstance(n, ast.Constant) and n.value in STRATEGY_NAMES for n in ast.walk(node.pattern)):
            found.append(f"{where}:{node.pattern.lineno}")
    return found


def test_no_engine_compares_a_strategy_name_to_a_string():
    found = [hit for path in (PACKAGE / "engines").glob("*.py")
             for hit in strategy_name_comparisons(path.read_text(), path.name)]
    assert found == [], "let the strategy object decide (engines/strategies.py)"


def test_the_strategy_name_checker_can_fail():
    assert strategy_name_comparisons("if self.strategy == 'ring': pass")
    assert strategy_name_comparisons("x = s in ('host', 'tree')")
    assert not strategy_name_comparisons("if self.strategy.updates_on_host: pass")


def optimizer_attribute_assignments(source, where="<test>"):
    """Assignments to an attribute of something named like an optimizer (``opt.state = ...``,
    ``update.optimizer.t += 1``, ``setattr(opt, ...)``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
        for t in targets:
            for e in ast.walk(t):
                if isinstance(e, ast.Attribute) and "opt" in ast.unparse(e.value).lower():
                    found.append(f"{where}:{node.lineno}: {ast.unparse(e)}")
        if (isinstance(node, ast.Call) and ast.unparse(node.func) == "setattr" and node.args
                and "opt" in ast.unparse(node.args[0]).lower()):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_optimizer_attribute_is_assigned_outside_optim():
    found = [hit for name, path in modules_paths.items() if name != "optim"
             for hit in optimizer_attribute_assignments(path.read_text(), path.name)]
    assert found == [], "optimizers are pure: pass their state along instead (mgpu_lab/optim.py)"


def test_the_optimizer_checker_can_fail():
    assert optimizer_attribute_assignments("opt.state = []")
    assert optimizer_attribute_assignments("update.optimizer.t += 1")
    assert optimizer_attribute_assignments("setattr(self.optimizer, 'lr', 1)")
    assert not optimizer_attribute_assignments("self.opt_state = new_state")
