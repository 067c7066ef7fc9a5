"""The package's shape (docs/architecture.md): imports flow one way between the stages, with no cycles, and no
function is longer than 80 lines. Function-level imports count like the others."""

import ast
from pathlib import Path

import textrnn

PACKAGE = Path(textrnn.__file__).parent
# cli -> lm / forecast / serve -> train -> nn / text / timeseries: a unit imports only units of lower rank.
RANKS = {
    "errors": 0,
    "atomic": 0,
    "tables": 0,
    "nn": 1,
    "text": 1,
    "timeseries": 1,
    "plots": 1,
    "config": 2,
    "checkpoint": 3,
    "train": 4,
    "lm": 5,
    "forecast": 5,
    "serve": 6,
    "export": 6,
    "bench": 6,
    "": 6,  # textrnn/__init__.py: the public Python API
    "cli": 7,
    "__main__": 8,
}
MAX_LINES = 80


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(part for part in parts if part != "__init__")] = path
    return found


def unit(module: str) -> str:
    return module.split(".")[0]


def imported(path: Path, known: dict) -> set[str]:
    """The textrnn modules ``path`` imports anywhere in it (``textrnn.x.y`` -> ``x.y``)."""

    def short(name: str) -> str:
        return name.removeprefix("textrnn").removeprefix(".")

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(short(alias.name) for alias in node.names if alias.name.split(".")[0] == "textrnn")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "textrnn":
            submodules = {short(f"{node.module}.{alias.name}") for alias in node.names} & set(known)
            # `from textrnn.x import y` of a submodule y imports x.y; of a name, x itself
            names.update(submodules if len(submodules) == len(node.names) else {short(node.module), *submodules})
    return names & set(known)


def test_every_unit_has_a_rank():
    assert {unit(module) for module in modules()} <= set(RANKS)


def test_imports_flow_one_way():
    known = modules()
    wrong = []
    for module, path in known.items():
        for target in imported(path, known):
            same = unit(target) == unit(module) and unit(module) != ""
            if not same and RANKS[unit(target)] >= RANKS[unit(module)]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the flow cli -> lm/forecast/serve -> train -> nn/text/timeseries:\n" + "\n".join(
        sorted(wrong)
    )


def test_no_module_imports_one_that_imports_it_back():
    known = modules()
    graph = {module: imported(path, known) - {module} for module, path in known.items()}
    cycles = []

    def visit(module, trail):
        for target in graph[module]:
            if target in trail:
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in done:
                visit(target, [*trail, target])
        done.add(module)

    done: set[str] = set()
    for module in graph:
        if module not in done:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_no_function_is_longer_than_80_lines():
    long = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            # from the def line: a command's option decorators are data, not code
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= MAX_LINES:
                long.append(f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, f"functions over {MAX_LINES} lines:\n" + "\n".join(long)
