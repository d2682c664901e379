"""The shape of the tree: packages import downward only (no circle between modules, none
between rooms), and no module name is used twice. Imports are read with `ast`, every one of
them: at the top, inside functions, and under `if TYPE_CHECKING:` (a name needed only for a
type still says which room leans on which)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "sidecar"


def modules(src: Path, package: str) -> dict[str, Path]:
    """Every module under `src/package`, by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of the tree that `name` imports. `from a.b import c` is an import of a.b.c
    when that is a module, else of a.b. A package's __init__ that Python runs on the way to a
    submodule is not counted: a package re-exporting its submodules' names would otherwise be
    a circle with each of them."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = here[: len(here) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def graph(src: Path, package: str) -> dict[str, set[str]]:
    known = modules(src, package)
    return {name: imports(name, path, known) for name, path in known.items()}


def room(name: str, package: str) -> str:
    """The room a module lives in: its subpackage, or itself when it lies loose at the top."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else package


def rooms(edges: dict[str, set[str]], package: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for a, targets in edges.items():
        out[room(a, package)]
        for b in targets:
            if room(a, package) != room(b, package):
                out[room(a, package)].add(room(b, package))
    return dict(out)


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle per tangle, as a path that starts and ends at the same node, e.g.
    ['a', 'b', 'a']."""
    return [_path_in(group, edges) for group in tangles(edges)]


def tangles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The groups of nodes that each reach one another (Tarjan's strongly connected
    components of more than one node, or a node importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1 or v in edges.get(v, ()):
                groups.append(group)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def _path_in(group: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest way from the group's first node back to itself, inside the group."""
    start = min(group)
    came: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges.get(v, set()) & group):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came[path[-1]])
                    return [*reversed(path), start]
                if w not in came:
                    came[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(group)


def _shown(edges: dict[str, set[str]]) -> str:
    """Each tangle as one of its circles, and every node it takes in when there are more."""
    out = []
    for group in tangles(edges):
        path = _path_in(group, edges)
        rest = sorted(group - set(path))
        out.append(" -> ".join(path) + (f"  (the tangle also takes in: {', '.join(rest)})"
                                         if rest else ""))
    return "\n".join(out)


def test_no_circle_between_modules() -> None:
    """No module imports, directly or through others, a module that imports it."""
    edges = graph(ROOT, PACKAGE)
    assert not tangles(edges), "import circles between modules:\n" + _shown(edges)


def test_no_circle_between_rooms() -> None:
    """Rooms (the subpackages, and each loose module at the top) import downward only."""
    edges = rooms(graph(ROOT, PACKAGE), PACKAGE)
    assert not tangles(edges), "import circles between rooms:\n" + _shown(edges)


def test_every_module_name_is_used_once() -> None:
    """No two modules or packages in the tree share a name (`restore` means one thing)."""
    seen: dict[str, list[str]] = defaultdict(list)
    for name in modules(ROOT, PACKAGE):
        if name != PACKAGE:
            seen[name.rsplit(".", 1)[-1]].append(name)
    twice = {k: v for k, v in seen.items() if len(v) > 1}
    assert not twice, f"module names used more than once: {twice}"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_circle_through_a_function_import_is_found(tmp_path: Path) -> None:
    """The reader sees an import inside a function and names the circle it closes."""
    src = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "def f():\n    from pkg.c import thing\n",
        "pkg/c.py": "import pkg.a\nthing = 1\n",
        "pkg/d.py": "from pkg import a\n",
    })
    assert circles(graph(src, "pkg")) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def test_a_circle_between_rooms_is_found(tmp_path: Path) -> None:
    """Two subpackages leaning on each other through different modules are a circle of rooms,
    though no module circle exists; a relative import counts like an absolute one."""
    src = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "",
        "pkg/low/x.py": "from pkg.high import y\n",
        "pkg/low/z.py": "",
        "pkg/high/__init__.py": "",
        "pkg/high/y.py": "",
        "pkg/high/w.py": "from ..low import z\n",
    })
    edges = graph(src, "pkg")
    assert circles(edges) == []
    assert circles(rooms(edges, "pkg")) == [["pkg.high", "pkg.low", "pkg.high"]]
