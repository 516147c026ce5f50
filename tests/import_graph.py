"""The package's import graph, read with ``ast`` (nothing is imported): every ``import`` and ``from ... import``,
at module level, inside functions and under ``TYPE_CHECKING`` alike."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "vggexport"


@dataclass
class ImportGraph:
    internal: dict[str, set[str]] = field(default_factory=dict)  # module -> package modules it imports
    external: dict[str, set[str]] = field(default_factory=dict)  # module -> top-level foreign packages

    def closure(self, start: str) -> set[str]:
        """``start`` and every package module it loads, directly or not (parent packages' __init__ included)."""
        seen, todo = set(), [start]
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            todo.extend(self.internal.get(module, ()))
            todo.extend(parents(module))
        return seen

    def cycles(self) -> list[list[str]]:
        """Every import cycle between package modules, each as a path that returns to its start."""
        found, state = [], {}

        def visit(module: str, path: list[str]) -> None:
            state[module] = "open"
            for target in sorted(self.internal.get(module, ())):
                if state.get(target) == "open":
                    found.append(path[path.index(target):] + [target])
                elif target not in state:
                    visit(target, [*path, target])
            state[module] = "done"

        for module in sorted(self.internal):
            if module not in state:
                visit(module, [module])
        return found


def parents(module: str) -> Iterator[str]:
    parts = module.split(".")
    for end in range(1, len(parts)):
        yield ".".join(parts[:end])


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """Dotted names each import statement loads; ``from pkg import sub`` counts ``pkg.sub`` when it is a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            submodules = [f"{origin}.{alias.name}" for alias in node.names if f"{origin}.{alias.name}" in known]
            if len(submodules) < len(node.names):
                yield origin  # a name defined in ``origin`` itself
            yield from submodules


def build_graph(root: Path) -> ImportGraph:
    """The graph of the package under ``root`` (the folder that holds ``vggexport/``)."""
    files = {module_name(root, path): path for path in sorted((root / PACKAGE).rglob("*.py"))}
    graph = ImportGraph()
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        internal, external = set(), set()
        for name in imported_modules(tree, module, path.name == "__init__.py", set(files)):
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                while name not in files and "." in name:
                    name = name.rsplit(".", 1)[0]  # ``from vggexport.x import SomeName``: the module x
                if name != module:
                    internal.add(name)
            elif name:
                external.add(name.split(".")[0])
        graph.internal[module], graph.external[module] = internal, external
    return graph


def relative(module: str) -> str:
    """``vggexport.serve.app`` -> ``serve.app`` (the layering table's names); the package itself -> ``""``."""
    return module.removeprefix(PACKAGE).removeprefix(".")
