"""The package's shape: no import cycles (lazy imports inside functions included), and the two flows one-way.

Training (data -> training) may use inference to decode and calibrate; inference (engines -> tagger -> predict,
serve, review) never imports training, so a service or a Ray worker never loads the training stack."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "fashiontag"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """The fashiontag modules a file imports anywhere in it (a name imported from a package counts as the package,
    a module imported from it as that module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "fashiontag"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "fashiontag":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found & set(MODULES)


GRAPH = {name: imports(path) - {name} for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("flow", ["fashiontag.data", "fashiontag.models", "fashiontag.model_folder",
                                  "fashiontag.inference", "fashiontag.serve", "fashiontag.review"])
def test_nothing_outside_training_imports_training(flow):
    offenders = {name: sorted(d for d in deps if d.startswith("fashiontag.training"))
                 for name, deps in GRAPH.items() if name == flow or name.startswith(flow + ".")}
    assert not {k: v for k, v in offenders.items() if v}


def test_data_and_models_know_nothing_of_inference_serving_or_review():
    lower = [n for n in GRAPH if n.startswith(("fashiontag.data", "fashiontag.models", "fashiontag.model_folder"))]
    upper = ("fashiontag.inference", "fashiontag.serve", "fashiontag.review", "fashiontag.cli")
    assert {n: sorted(d for d in GRAPH[n] if d.startswith(upper)) for n in lower} == {n: [] for n in lower}
