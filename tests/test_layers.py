"""Layer contracts of the code, read from its import statements (module level and inside functions,
as import-linter's graph does): no import circle, the pure cores import nothing above them, and
the Kubernetes API is talked to from the I/O modules only."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"tlt": ROOT / "workers" / "tlt", "tlt_operator": ROOT / "operator" / "tlt_operator"}

# What each pure core may import from tlt (itself included). The built-in task and its base model
# (`tlt.tasks`) sit below the models: `tlt.models.resolve` turns a built-in name into its folder.
# A `commands` module is the CLI's edge of its package and is not part of the layer.
FOUNDATIONS = {
    "tlt.api": {"tlt.api"},
    "tlt.tasks": {"tlt.tasks"},
    "tlt.models": {"tlt.models", "tlt.tasks"},
    "tlt.speculative": {"tlt.speculative", "tlt.models", "tlt.tasks", "tlt.api"},
    "tlt.elastic": {"tlt.elastic", "tlt.api"},
}

# The only modules that import the Kubernetes client, and why: the operator's I/O module and the
# worker's. The developer tools drive a local cluster and are not counted.
KUBERNETES_API = {
    "tlt_operator.kube": "the operator's API I/O",
    "tlt.worker.kube": "the worker's API I/O: the coordinator's report, its pod's role label and watch, its job's end",
    "tlt.kubeconfig": "the client's login (no API call)",
}
DEV_TOOLS = "tlt.dev."


def modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def imported(name: str, path: Path, is_package: bool, known) -> set[str]:
    """Every module `name` imports (absolute names; `from X import y` is X.y when that is a module)."""
    base = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                package = base
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                module = f"{package}.{module}" if module else package
            for a in node.names:
                out.add(f"{module}.{a.name}" if f"{module}.{a.name}" in known else module)
    return out


def graph() -> dict[str, set[str]]:
    """Our modules -> the modules of ours they import."""
    known = modules()
    edges = {}
    for name, (path, is_package) in known.items():
        targets = set()
        for target in imported(name, path, is_package, known):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_the_library_has_no_import_circle():
    assert cycles(graph()) == []


def test_a_circle_is_found_when_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert "tlt.models.resolve" in graph()["tlt.coordinator.actors"]  # an import inside a function counts


def test_the_pure_cores_import_nothing_above_them():
    wrong = []
    for module, targets in graph().items():
        allowed = FOUNDATIONS.get(package_of(module))
        if allowed is None or module.endswith(".commands"):
            continue
        for target in targets:
            if target.startswith("tlt.") and package_of(target) not in allowed:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_only_the_io_modules_talk_to_the_kubernetes_api():
    known = modules()
    clients = {name for name, (path, is_package) in known.items()
               if any(t == "kubernetes" or t.startswith("kubernetes.") for t in imported(name, path, is_package, known))}
    assert {c for c in clients if not c.startswith(DEV_TOOLS)} == set(KUBERNETES_API)
