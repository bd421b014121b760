"""The shape docs/architecture.md promises: no import cycles (lazy imports inside functions count),
no module importing another module's private names, and ``import tunekit`` staying light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tunekit"


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_pkg else parts)
        out[name] = (path, is_pkg)
    return out


def _imports(modules):
    """``{module: {(imported module, name or None)}}`` for every import anywhere in each module."""
    found: dict[str, set[tuple[str, str | None]]] = {}
    for name, (path, is_pkg) in modules.items():
        edges: set[tuple[str, str | None]] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    target = ".".join(base + ([node.module] if node.module else []))
                elif node.module and node.module.split(".")[0] == "tunekit":
                    target = node.module
                else:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add((sub, None) if sub in modules else (target, alias.name))
            elif isinstance(node, ast.Import):
                edges |= {(a.name, None) for a in node.names if a.name.split(".")[0] == "tunekit"}
        found[name] = edges
    return found


def _owner(target: str, modules) -> str | None:
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def test_no_import_cycles():
    modules = _modules()
    graph = {m: {o for t, _ in edges if (o := _owner(t, modules)) and o != m}
             for m, edges in _imports(modules).items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"


def test_no_private_names_across_modules():
    modules = _modules()
    offenders = []
    for m, edges in _imports(modules).items():
        for target, name in edges:
            owner = _owner(target, modules)
            if name and name.startswith("_") and not name.startswith("__") and owner != m:
                offenders.append(f"{m} imports {owner}.{name}")
    # Attribute access on an imported tunekit module: `hub._reason(...)`.
    for m, (path, _) in modules.items():
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                for a in node.names:
                    aliases[a.asname or a.name] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__")):
                target = f"{m.rpartition('.')[0]}.{aliases[node.value.id]}"
                if target in modules or f"tunekit.{aliases[node.value.id]}" in modules:
                    offenders.append(f"{m} uses {node.value.id}.{node.attr}")
    assert offenders == [], "\n".join(sorted(offenders))


def test_import_tunekit_loads_no_heavy_library():
    code = ("import sys, tunekit; heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'huggingface_hub') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
