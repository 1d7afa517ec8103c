"""The package's structure: imports go one way (no cycle between modules or between subpackages, imports inside
functions included), kernels/ are leaves, train/ never reaches for the drop-in layer, and no code grows past the
sizes a reader can hold (Triton kernels exempt)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES, MAX_FILE_LINES = 60, 500


def package_files() -> dict[str, Path]:
    """Module name -> file, for vlmo_fast/ and kernels/ (installed as vlmo_fast.kernels)."""
    files = {}
    for base, prefix in ((ROOT / "vlmo_fast", "vlmo_fast"), (ROOT / "kernels", "vlmo_fast.kernels")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([prefix, *parts])] = path
    return files


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports anywhere in its file (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import name`: the submodule pkg.name, or an attribute of pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            # a module's own ancestor packages are imported before it anyway: no edge
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    files = package_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                out.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def subpackage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_import_cycle_between_modules():
    assert cycles(graph()) == []


def test_no_import_cycle_between_subpackages():
    edges: dict[str, set[str]] = {}
    for module, targets in graph().items():
        edges.setdefault(subpackage(module), set()).update(
            subpackage(t) for t in targets if subpackage(t) != subpackage(module))
    assert cycles(edges) == []


def test_kernels_import_nothing_from_the_package():
    leaks = {m: sorted(t for t in ts if not t.startswith("vlmo_fast.kernels"))
             for m, ts in graph().items() if m.startswith("vlmo_fast.kernels")}
    assert {m: ts for m, ts in leaks.items() if ts} == {}


def test_train_never_imports_the_drop_in_layer():
    leaks = {m: sorted(t for t in ts if t.startswith("vlmo_fast.compat"))
             for m, ts in graph().items() if m.startswith("vlmo_fast.train")}
    assert {m: ts for m, ts in leaks.items() if ts} == {}


def _is_triton_kernel(fn: ast.FunctionDef) -> bool:
    return any("jit" in ast.unparse(d) for d in fn.decorator_list)


@pytest.mark.parametrize("name,path", sorted(package_files().items()))
def test_sizes(name, path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_FILE_LINES, f"{path} has over {MAX_FILE_LINES} lines"
    long = [f"{fn.name}: {fn.end_lineno - fn.lineno + 1} lines" for fn in ast.walk(ast.parse(source))
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_triton_kernel(fn)
            and fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == [], f"{path}: {long}"


def test_the_walk_sees_imports_inside_functions():
    """The check is live: a function-level import is an edge (vlmo_fast/__init__.py imports pretrained lazily)."""
    assert "vlmo_fast.pretrained" in graph()["vlmo_fast"]
