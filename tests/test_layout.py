"""The house's shape, read from the source (no imports run): no import circle among imagebuild's
modules, counting imports inside functions (a circle hidden there is still a circle), at run
time and counting `if TYPE_CHECKING:` blocks too (type-only); no import up the floors (FLOORS)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PKG = ROOT / "imagebuild"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path, modules: set[str]) -> set[str]:
    """imagebuild modules `path` imports: `from P import m` is an edge to P.m when that is a
    module (it needs only P's start, which every submodule of P has), else to P."""
    found: set[str] = set()
    todo: list[ast.AST] = [ast.parse(path.read_text())]
    while todo:
        node = todo.pop()
        if _type_checking_only(node):
            continue
        todo.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            found |= subs
            if len(subs) < len(node.names):  # some names come from the package's own code
                found.add(node.module)
    return {m for m in found if m in modules and m.startswith("imagebuild")}


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PKG.rglob("*.py")}
    modules = set(paths)
    return {m: imports(p, modules) - {m} for m, p in paths.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every circle, found by depth-first search (one path per circle entry)."""
    found, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(g[m]):
            if state.get(n) == "open":
                found.append([*path[path.index(n) :], n])
            elif n not in state:
                visit(n, [*path, n])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return found


def test_the_checker_sees_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_no_import_circle() -> None:
    g = graph()
    assert "imagebuild.lock.lockfile" in g["imagebuild.lock"]  # the reader sees the edges
    assert cycles(g) == []


def test_no_import_circle_even_a_type_only_one() -> None:
    paths = {module_name(p): p for p in PKG.rglob("*.py")}
    with_types = {m: _all_imports(p, set(paths)) - {m} for m, p in paths.items()}
    assert "imagebuild.cache_entries" in with_types["imagebuild.diskimage"]  # a type-only edge
    assert cycles(with_types) == []


# The floors of the house, bottom up: a module imports from its own floor or below, never above.
# builders make the artifacts, verify reads them (and knows their formats), plan asks both.
FLOORS = ("imagebuild", "imagebuild.builders", "imagebuild.verify", "imagebuild.plan")


def floor(module: str) -> int:
    return max(i for i, f in enumerate(FLOORS) if module == f or module.startswith(f + "."))


def upward(g: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {n}" for m, deps in g.items() for n in deps if floor(n) > floor(m))


def test_the_checker_sees_an_import_upward() -> None:
    g = {
        "imagebuild.keys": {"imagebuild.builders.layers"},
        "imagebuild.builders.vm": {"imagebuild.keys"},
    }
    assert upward(g) == ["imagebuild.keys -> imagebuild.builders.layers"]


def test_no_import_runs_up_the_floors_nor_a_type_only_one() -> None:
    """Counting `if TYPE_CHECKING:` imports too: a type-only edge upward is still one."""
    paths = {module_name(p): p for p in PKG.rglob("*.py")}
    with_types = {m: _all_imports(p, set(paths)) - {m} for m, p in paths.items()}
    assert upward(with_types) == []


def _all_imports(path: Path, modules: set[str]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            found |= subs or {node.module}
    return {m for m in found if m in modules}


def test_the_types_check() -> None:
    """mypy over imagebuild/ and tasks.py, configured in pyproject.toml ([tool.mypy])."""
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_modules_stay_small_and_no_folder_is_named_build() -> None:
    """One reason to change per module (350 lines at most), and every package visible to a
    module-graph tool (tools and ignore templates skip folders named `build`)."""
    long = {
        str(p.relative_to(ROOT)): n
        for p in PKG.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 350
    }
    assert long == {}
    assert [p for p in PKG.rglob("build") if p.is_dir()] == []


def _example_app(path: Path) -> bool:
    """examples/NAME/app/...: an example app's bytes are its image's content, left as written
    (pyproject.toml excludes them from the formatter too)."""
    parts = path.relative_to(ROOT).parts
    return parts[0] == "examples" and parts[2:3] == ("app",)


def test_the_formatter_needs_no_opt_outs() -> None:
    """Formatting is the formatter's (`ruff format`): no line or block of the project opts out,
    so a reader never meets two styles and a reformat never fights a hand-kept table."""
    opt_out = re.compile(r"#\s*fmt:\s*(skip|off)\b|#\s*yapf:\s*disable")
    found = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in sorted(ROOT.glob("**/*.py"))
        if not p.relative_to(ROOT).parts[0].startswith((".", "dist")) and not _example_app(p)
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if opt_out.search(line)
    ]
    assert found == []


def test_the_readme_layout_names_every_module_and_only_real_paths() -> None:
    """README's Layout block matches the tree: every module of imagebuild/ is named there (a
    top-level one by its path, one in a package by its name under that package's entry), and
    every path the block names exists."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    words = set(re.findall(r"[\w.]+", block))
    missing = []
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(ROOT)
        if p.name == "__init__.py" and p.parent != PKG:
            continue  # named by its folder
        if p.parent == PKG:
            named = str(rel) in block or p.name in words
        else:
            folder = f"{p.parent.relative_to(ROOT)}/"
            ancestors = [f"{a.relative_to(ROOT)}/" for a in p.parents if PKG in (a, *a.parents)]
            named = any(a in block for a in ancestors) and (p.name in words or p.stem in words)
            named = named and (folder in block or p.parent.name in words)
        if not named and p.name != "__init__.py":
            missing.append(str(rel))
    assert missing == []
    paths = re.findall(r"^(\S+)", block, re.M)
    assert [p for p in paths if not (ROOT / p.rstrip("/")).exists()] == []
