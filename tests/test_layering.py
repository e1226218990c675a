"""The layer order of rljax (DESIGN.md's layout): an import points only to its own layer or an
earlier one, and neither modules nor top-level packages import each other in a circle.

Imports are read from the source with `ast`, never by importing it, so imports inside functions
(lazy ones) count as much as those at the top of a file. `from rljax.pkg import name` is an
import of the module `rljax.pkg.name` when there is one (a file or a package), else of
`rljax.pkg`; relative imports are resolved against the importing module's package. The root
`rljax/__init__.py` loads the top-level packages lazily through `importlib` (no import
statement), so `from rljax import sharding` is an import of `rljax.sharding`.
"""

from __future__ import annotations

import ast
import collections
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1] / "rljax"

# Bottom first. A top-level package may import its own layer and earlier ones; a package missing
# here fails wherever it imports or is imported, so a new package has to be placed in the order.
LAYERS = (
    ("losses", "rewards"),
    ("data",),
    ("models",),
    ("sharding",),
    ("generate",),
    ("envs",),
    ("train",),
    ("estimators",),
)


class Import(NamedTuple):
    source: str  # the importing module, e.g. "rljax.models.hf"
    target: str  # the imported module
    file: str  # the importing file, relative to the directory that holds the root package
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def find_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package directory `root` (a
    package is named by its __init__.py)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def find_imports(root: Path) -> list[Import]:
    """Every import of a module of the package `root` made anywhere in its files, once per
    statement and imported module, in file order."""
    modules = find_modules(root)
    top = root.name
    imports = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        where = path.relative_to(root.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=where)):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0]  # "." is the package itself
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module
                # From the root every name is a top-level package (its lazy loader's); elsewhere
                # a name is a module when one exists, else an attribute of `base`.
                targets = [f"{base}.{a.name}" if base == top or f"{base}.{a.name}" in modules else base
                           for a in node.names]
            else:
                continue
            imports += [Import(name, t, where, node.lineno) for t in targets
                        if t.split(".")[0] == top and t != name]
    return sorted(set(imports), key=lambda i: (i.file, i.line, i.target))


def _package(module: str) -> str | None:
    """The top-level package of a module ("rljax.models.hf" -> "models"); None for the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _cycles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """One cycle (a list of nodes, the first repeated at the end) for every strongly connected
    component of more than one node (Tarjan's algorithm): the shortest through its first node."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while node not in component:
                component.add(stack.pop())
            on_stack.difference_update(component)
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(_shortest_cycle(min(c), c, edges) for c in components)


def _shortest_cycle(start: str, component: set[str], edges: dict[str, dict[str, Import]]) -> list[str]:
    """The shortest path start -> ... -> start inside `component` (breadth first)."""
    paths, frontier = {start: [start]}, collections.deque([start])
    while frontier:
        node = frontier.popleft()
        for nxt in sorted(edges.get(node, {})):
            if nxt == start:
                return paths[node] + [start]
            if nxt in component and nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                frontier.append(nxt)
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


def _describe_cycle(cycle: Sequence[str], edges: dict[str, dict[str, Import]]) -> str:
    steps = [f"{a} ({edges[a][b].where}) -> " for a, b in zip(cycle, cycle[1:])]
    return "".join(steps) + cycle[-1]


def layering_problems(root: Path, layers: Sequence[Sequence[str]] = LAYERS) -> list[str]:
    """What breaks the layer order in the package `root`: imports of a later layer or of a
    package outside the order, import cycles between modules, and cycles between top-level
    packages. One message per problem, naming the file and line."""
    layer_of = {pkg: i for i, names in enumerate(layers) for pkg in names}

    def layer(pkg):
        return f"{pkg!r}, layer {layer_of[pkg]}" if pkg in layer_of else f"{pkg!r}, in no layer"

    imports = find_imports(root)
    problems = []
    modules, packages = {}, {}
    for imp in imports:
        modules.setdefault(imp.source, {}).setdefault(imp.target, imp)
        src, tgt = _package(imp.source), _package(imp.target)
        if src is None or tgt is None or src == tgt:
            continue
        packages.setdefault(src, {}).setdefault(tgt, imp)
        if src not in layer_of or tgt not in layer_of:
            problems.append(f"{imp.where}: {imp.source} ({layer(src)}) imports {imp.target} ({layer(tgt)}): "
                            f"place every top-level package in the layer order")
        elif layer_of[tgt] > layer_of[src]:
            problems.append(f"{imp.where}: {imp.source} ({layer(src)}) imports {imp.target} ({layer(tgt)}), "
                            f"a later layer")
    problems += [f"import cycle between modules: {_describe_cycle(c, modules)}" for c in _cycles(modules)]
    problems += [f"import cycle between top-level packages: {_describe_cycle(c, packages)}"
                 for c in _cycles(packages)]
    return problems


def test_rljax_keeps_its_layer_order():
    problems = layering_problems(ROOT)
    assert not problems, "\n".join(problems)


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_reports_later_layers_cycles_and_unplaced_packages(tmp_path):
    root = tmp_path / "rljax"
    _write_tree(root, {
        "__init__.py": "import importlib\n",
        "losses/__init__.py": "from rljax.losses import a\n",
        "losses/a.py": "import numpy\n\n\ndef f():\n    from ..train import loop\n",  # lazy, relative, upward
        "losses/b.py": "from rljax import rewards\n",
        "rewards/__init__.py": "from .r import score\n",
        "rewards/r.py": "from rljax.losses.a import f\n",  # rewards <-> losses: same layer, a package cycle
        "data/__init__.py": "",
        "data/x.py": "from . import y\n",
        "data/y.py": "from rljax.data.x import thing\n",  # x <-> y: a module cycle
        "train/__init__.py": "",
        "train/loop.py": "import rljax.data.x\nfrom rljax.models import get_config\n",  # earlier layers: fine
        "mystery/__init__.py": "from rljax import data\n",  # a package outside the order
    })
    problems = layering_problems(root)
    assert problems == [
        "rljax/losses/a.py:5: rljax.losses.a ('losses', layer 0) imports rljax.train.loop ('train', layer 6), "
        "a later layer",
        "rljax/mystery/__init__.py:1: rljax.mystery ('mystery', in no layer) imports rljax.data ('data', layer 1): "
        "place every top-level package in the layer order",
        "import cycle between modules: rljax.data.x (rljax/data/x.py:1) -> rljax.data.y (rljax/data/y.py:1) -> "
        "rljax.data.x",
        "import cycle between top-level packages: losses (rljax/losses/b.py:1) -> rewards (rljax/rewards/r.py:1) -> "
        "losses",
    ], "\n".join(problems)

    # Without the upward import, the cycles and the unplaced package's import, nothing is reported.
    _write_tree(root, {"losses/a.py": "def f():\n    pass\n", "losses/b.py": "", "data/y.py": "thing = 1\n",
                       "mystery/__init__.py": ""})
    assert layering_problems(root) == []
