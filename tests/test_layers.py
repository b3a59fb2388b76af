"""Imports flow one way: no cycles between modules (lazy imports included), and no import against the layers.

A module's layer is the entry of LAYERS with the longest matching prefix; a module may import its own layer or
a lower one. A new module outside every entry fails here until it is given a layer.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"kwasi_runtime": ROOT / "runtime" / "kwasi_runtime", "kwasi_operator": ROOT / "operator" / "kwasi_operator",
            "kwasi_dashboards": ROOT / "dashboards" / "kwasi_dashboards"}

# Lower numbers are lower layers. The package roots hold the public API re-exports, so they sit on top.
LAYERS: dict[str, int] = {
    # wasmtime plumbing, and leaf utilities with no kwasi imports
    "kwasi_runtime.wasm": 0,
    "kwasi_runtime.fetch": 0,
    "kwasi_runtime.sample_models": 0,
    "kwasi_runtime.cache_home": 0,
    # the WASI-NN host and the interface backends implement
    "kwasi_runtime.nn": 1,
    "kwasi_runtime.backends": 2,
    "kwasi_runtime.sandbox": 3,
    "kwasi_runtime.host_flags": 4,
    "kwasi_runtime.serve": 5,
    # NNRPC: the server sits beside serve; the protocol and the client (a remote backend) sit with backends
    "kwasi_runtime.nnrpc": 5,
    "kwasi_runtime.nnrpc.proto": 1,
    "kwasi_runtime.nnrpc.wire": 2,
    "kwasi_runtime.nnrpc.client": 2,
    "kwasi_runtime.cli": 6,
    "kwasi_runtime": 7,
    # operator: the spec and what is rendered from it, then API access, then reconciling, then the process
    "kwasi_operator.spec": 0,
    "kwasi_operator.kinds": 0,
    "kwasi_operator.metrics": 0,
    "kwasi_operator.pod_failures": 0,
    "kwasi_operator.status": 1,
    "kwasi_operator.render": 1,
    "kwasi_operator.kube": 2,
    "kwasi_operator.control": 3,
    "kwasi_operator.handlers": 4,
    "kwasi_operator.cli": 5,
    "kwasi_operator": 6,
    # dashboards: query and JSON builders, then the dashboards and the Prometheus client, then what uses them
    "kwasi_dashboards.promql": 0,
    "kwasi_dashboards.grafana": 0,
    "kwasi_dashboards.boards": 1,
    "kwasi_dashboards.evaluate": 1,
    "kwasi_dashboards.catalog": 2,
    "kwasi_dashboards.render": 2,
    "kwasi_dashboards.__main__": 3,
    "kwasi_dashboards": 4,
}


def module_name(package: str, root: Path, path: Path) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            found[module_name(package, root, path)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported kwasi module, line) for every import statement anywhere in the file, lazy ones included."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _resolve(alias.name, (), known, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield from _resolve(base, tuple(a.name for a in node.names), known, node.lineno)


def _resolve(base: str, names: tuple[str, ...], known: set[str], line: int) -> Iterator[tuple[str, int]]:
    if base.split(".")[0] not in PACKAGES:
        return
    submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in known]
    if submodules:
        yield from ((m, line) for m in submodules)
    # `from pkg import name` also runs pkg/__init__; a plain attribute import needs the module itself.
    if base in known and (not names or len(submodules) < len(names)):
        yield base, line


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for prefix, layer in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), layer)
    return None if best is None else best[1]


def import_graph() -> dict[str, dict[str, int]]:
    modules = all_modules()
    known = set(modules)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        for target, line in imports_of(name, path, known):
            # A package's own __init__ importing its children is how it re-exports; that is not a cycle.
            if target != name:
                edges.setdefault(target, line)
    return graph


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in all_modules() if layer_of(m) is None)
    assert not missing, f"give these modules a layer in LAYERS: {missing}"


def test_imports_never_go_up_a_layer() -> None:
    graph = import_graph()
    modules = all_modules()
    wrong = []
    for source, targets in graph.items():
        for target, line in targets.items():
            if target.split(".")[0] != source.split(".")[0]:
                wrong.append(f"{modules[source].relative_to(ROOT)}:{line}: {source} imports the other package {target}")
                continue
            low, high = layer_of(target), layer_of(source)
            if low is not None and high is not None and low > high:
                wrong.append(f"{modules[source].relative_to(ROOT)}:{line}: {source} (layer {high}) imports "
                             f"{target} (layer {low})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = _cycles({m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()})
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join([*c, c[0]]) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize(
    ("source", "imports", "expected"),
    [
        ("a.b", {"a.b": {"a.c"}, "a.c": {"a.b"}}, [["a.b", "a.c"]]),
        ("a.b", {"a.b": {"a.c"}, "a.c": set()}, []),
    ],
)
def test_the_cycle_finder_itself(source: str, imports: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert _cycles(imports) == expected


def test_layer_check_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "kwasi_runtime"
    (pkg / "nn").mkdir(parents=True)
    (pkg / "nn" / "__init__.py").write_text("")
    (pkg / "nn" / "host.py").write_text("def f():\n    from ..serve import server\n    from . import models\n")
    known = {"kwasi_runtime.nn", "kwasi_runtime.nn.host", "kwasi_runtime.nn.models", "kwasi_runtime.serve",
             "kwasi_runtime.serve.server"}
    found = {m for m, _ in imports_of("kwasi_runtime.nn.host", pkg / "nn" / "host.py", known)}
    assert found == {"kwasi_runtime.serve.server", "kwasi_runtime.nn.models"}
    assert layer_of("kwasi_runtime.serve.server") == 5 and layer_of("kwasi_runtime.nn.host") == 1
