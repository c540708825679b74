"""The package's layering: a module imports only its own layer or those below it, no import cycle exists, and no
module reaches into another package's private (underscore) names. The imports are read from the source with
``ast`` (function-level imports included), so a lazy import cannot hide an upward dependency."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "stdask"

#: bottom to top (README, "Layers"); a module may import modules of its own layer or of lower ones
LAYERS: list[tuple[str, ...]] = [
    ("stdask._version", "stdask.settings", "stdask.progress", "stdask.data", "stdask.random_streams",
     "stdask.memory"),
    ("stdask.store",),
    ("stdask.io",),
    ("stdask.backend",),
    ("stdask.dataset", "stdask.tilemap", "stdask.cluster", "stdask.blocks", "stdask.results"),
    ("stdask.raster", "stdask.datasets"),
    ("stdask.gr",),
    ("stdask.pp",),
    ("stdask.models",),
    ("stdask.tl",),
    ("stdask.pl",),
    ("stdask.report",),
    ("stdask.cli",),
]


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _package(name: str) -> str:
    return name if _is_package(name) else name.rsplit(".", 1)[0]


def _from_imports(name: str):
    """(absolute target module, imported names, line) of every ``from ... import`` of a stdask module."""
    path = MODULES[name]
    pkg = _package(name)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "stdask":
                yield target, [a.name for a in node.names], node.lineno


def imports(name: str) -> list[tuple[str, int]]:
    """(imported stdask module, line) for every import statement in module ``name``; ``from X import y``
    names the submodule X.y where y is one."""
    path = MODULES[name]
    out = [(a.name, node.lineno) for node in ast.walk(ast.parse(path.read_text(), str(path)))
           if isinstance(node, ast.Import) for a in node.names if a.name.split(".")[0] == "stdask"]
    for target, names, line in _from_imports(name):
        out += [(f"{target}.{n}" if f"{target}.{n}" in MODULES else target, line) for n in names]
    return out


def layer_of(name: str) -> int | None:
    """Index in :data:`LAYERS` of the longest matching prefix; None for the top-level package."""
    best, rank = -1, None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    return rank


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if m != "stdask" and layer_of(m) is None]
    assert not missing, f"modules outside every layer (add them to LAYERS and the README): {missing}"


def test_no_upward_imports():
    bad = []
    for m in MODULES:
        if m == "stdask":  # the front door binds the namespaces; it is above every layer
            continue
        for target, line in imports(m):
            lt, lm = layer_of(target), layer_of(m)
            if target == "stdask" or lt is None or lm is None or lt > lm:
                bad.append(f"{MODULES[m].relative_to(PKG.parent)}:{line} imports {target}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = {m: sorted({t for t, _ in imports(m) if t in MODULES and t != m}) for m in MODULES}
    # a package's __init__ re-exports its modules; a module importing a name from its own package's __init__
    # is a cycle Python tolerates only by import order, so it counts
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_names_across_packages():
    """``from stdask.pp._blocks import x`` from outside ``stdask.pp`` reaches into a private module."""
    bad = []
    for m in MODULES:
        mpkg = m if _is_package(m) else m.rsplit(".", 1)[0]
        for target, line in imports(m):
            parts = target.split(".")
            private = [i for i, p in enumerate(parts) if p.startswith("_") and p != "__init__"]
            if private:
                owner = ".".join(parts[: private[0]])
                if not (mpkg == owner or mpkg.startswith(owner + ".")):
                    bad.append(f"{MODULES[m].relative_to(PKG.parent)}:{line} imports {target}")
    assert not bad, "private modules imported from another package:\n" + "\n".join(bad)


def test_no_private_names_imported_across_packages():
    """``from stdask.pp.normalize import _helper`` from outside ``stdask.pp`` uses a private name."""
    bad = []
    for m, path in MODULES.items():
        for target, names, line in _from_imports(m):
            owner = _package(target) if target in MODULES else target.rsplit(".", 1)[0]
            inside = _package(m) == owner or _package(m).startswith(owner + ".")
            bad += [f"{path.relative_to(PKG.parent)}:{line} imports {n} from {target}" for n in names
                    if n.startswith("_") and not n.startswith("__") and not inside]
    assert not bad, "private names imported from another package:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", ["stdask.tl", "stdask.pl", "stdask.store.reader"])
def test_the_checker_sees_imports(name):
    # guards against a checker that reads nothing: these modules do import stdask modules
    assert imports(name), name


def test_only_the_store_opens_zarr():
    """The store layer (and the dataset, the door to it) is the only code that touches zarr directly."""
    bad = []
    for m, path in MODULES.items():
        if m.startswith("stdask.store") or m == "stdask.dataset":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n.split(".")[0] == "zarr" for n in names):
                bad.append(f"{path.relative_to(PKG.parent)}:{node.lineno}")
    assert not bad, "zarr imported above the store layer:\n" + "\n".join(bad)
