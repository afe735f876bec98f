"""The layer order and the absence of import cycles, read from the source (function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import blockkit

PACKAGE = Path(blockkit.__file__).parent

# contract → stac → runtime → storage/gateway → runner → export → cli; a module may import
# its own layer and the layers below it, never one above.
LAYERS = {
    "contract": 0,
    "stac": 1,
    "runtime": 2,
    "storage": 3,
    "gateway": 3,
    "runner": 4,
    "report": 5,
    "export": 5,
    "cli": 6,
}
# Top-level modules: the public API re-exports contract and runtime; `_lazy` (the subpackages'
# lazy re-exports) imports nothing of blockkit; the test harness runs
# blocks as the process engine does.
TOP_LEVEL = {"blockkit": 2, "blockkit._lazy": 0, "blockkit.testing": 4}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (annotations only: no run-time edge)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return found


def _imports(path: Path, module: str, *, runtime_only: bool = False) -> set[str]:
    """Every blockkit module `path` imports, at any depth of the code (or only those run at run time)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skip = _type_only(tree) if runtime_only else set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "blockkit")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "blockkit":
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
    return {name for name in found if name in MODULES}


def _layer(module: str) -> int:
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    sub = module.split(".")[1]
    return LAYERS[sub]


# The block template is a block (it runs inside a container), not part of the package's layers.
MODULES = {
    _module_name(p): p for p in PACKAGE.rglob("*.py") if "templates" not in p.relative_to(PACKAGE).parts
}
GRAPH = {name: _imports(path, name) for name, path in MODULES.items()}
RUNTIME_GRAPH = {name: _imports(path, name, runtime_only=True) for name, path in MODULES.items()}


def test_every_subpackage_has_a_layer() -> None:
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert subpackages <= set(LAYERS), f"subpackages without a layer: {sorted(subpackages - set(LAYERS))}"


def test_no_import_goes_against_the_layers() -> None:
    wrong = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in sorted(GRAPH.items())
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert not wrong, "\n".join(wrong)


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for succ in RUNTIME_GRAPH[node]:
            if succ == node or _is_parent(succ, node):
                continue
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return found


def _is_parent(package: str, module: str) -> bool:
    # A module importing its own package's __init__ (re-exports) is not a design cycle.
    return module.startswith(package + ".")


def test_no_import_cycles() -> None:
    """No two modules import each other at run time (type-only imports under TYPE_CHECKING aside)."""
    cycles = _cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


# Reach-ins still to remove (issue 16): a module using another subpackage's private name.
KNOWN_REACH_INS: set[tuple[str, str]] = set()


def _private_names_imported(path: Path, module: str) -> set[str]:
    """`pkg.mod._name` for every underscore name (not a module) `path` imports from blockkit."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level and node.module.startswith("blockkit."):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if alias.name.startswith("_") and not alias.name.startswith("__") and full not in MODULES:
                    found.add(full)
    return found


def _subpackage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_module_uses_a_private_name_of_another_subpackage() -> None:
    """An underscore name defined in a module is private to its subpackage: no other subpackage imports it."""
    found = {
        (module, name)
        for module, path in MODULES.items()
        for name in _private_names_imported(path, module)
        if _subpackage(name) != _subpackage(module)
    }
    new = sorted(found - KNOWN_REACH_INS)
    assert not new, "reach-ins into another subpackage's private names:\n" + "\n".join(f"{m} uses {n}" for m, n in new)
    gone = sorted(KNOWN_REACH_INS - found)
    assert not gone, f"remove from KNOWN_REACH_INS (fixed): {gone}"
