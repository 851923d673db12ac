"""The package's shape: imports run one way and functions stay short enough to read at once.

Parsed from the source (nothing is imported): a cycle among module-level imports fails, and so
does a function-level import of a module that itself imports, directly or not, the importing
module (an import moved into a function to dodge a cycle). Lazy imports that only defer a
heavy dependency (torch at CLI start-up) are allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ttsbench"
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text("utf-8")) for p in sorted(PACKAGE.rglob("*.py"))}


def _targets(node: ast.Import | ast.ImportFrom, here: str, known: set[str]) -> set[str]:
    """The ttsbench modules an import statement loads (a `from pkg import mod` counts mod)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = here.split(".")[: len(here.split(".")) - node.level + (1 if _is_package(here) else 0)]
            base = ".".join(package + ([base] if base else []))
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != here:
            found.add(name)
    return found


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").is_file()


def _imports(modules: dict[str, ast.Module]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level edges, function-level edges); TYPE_CHECKING blocks are not imports."""
    known = set(modules)
    top: dict[str, set[str]] = {m: set() for m in modules}
    inner: dict[str, set[str]] = {m: set() for m in modules}
    for name, tree in modules.items():
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for child in ast.walk(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    in_function = child not in tree.body and _inside_function(node, child)
                    (inner if in_function else top)[name] |= _targets(child, name, known)
    return top, inner


def _inside_function(root: ast.AST, target: ast.AST) -> bool:
    for node in ast.walk(root):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(c is target for c in ast.walk(node)):
            return True
    return False


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycle_among_modules() -> None:
    top, _ = _imports(_modules())
    cycles = sorted(m for m in top if m in _reachable(top, m))
    assert not cycles, f"module-level import cycles through: {', '.join(cycles)}"


def test_no_function_level_import_closes_a_cycle() -> None:
    top, inner = _imports(_modules())
    dodges = sorted(f"{m} -> {t}" for m, targets in inner.items() for t in targets if m in _reachable(top, t))
    assert not dodges, f"function-level imports that avoid a cycle: {', '.join(dodges)}"


@pytest.mark.parametrize("module", sorted(_modules()))
def test_functions_are_short(module: str) -> None:
    tree = _modules()[module]
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{module}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_the_checker_sees_a_cycle(tmp_path: Path) -> None:
    """The graph code on a known cycle, so a pass above means something."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert {m for m in graph if m in _reachable(graph, m)} == {"a", "b", "c"}
