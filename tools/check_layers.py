#!/usr/bin/env python3
"""The package's layer contract, checked from the source (no imports run): `make lint` and CI.

Layers, lowest first; a module may import its own layer and the ones below, never above:

    core        the network and plain mechanisms (spec, config, blocks, backbone, io, speed, ...)
    inputs      what users hand us: weights files, data sets
    jobs        what users run: training, evaluation, export, inference
    entry       the demo and the command-line entry points

``resnext_det/__init__.py`` is the public facade above all of them: it may import anything and
nothing inside the package imports it. Import cycles between modules are refused too (function-
level imports included: a cycle hidden in a function is still a cycle). The developer tooling of
the checkout (``benchmarks/``, ``tools/``) is not in the wheel: the package never imports it.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "resnext_det"
# Top-level module or subpackage -> layer. A module missing here is an error: place it.
LAYERS: dict[str, int] = {
    **dict.fromkeys(["errors", "version", "spec", "config", "io", "blocks", "backbone"], 0),
    **dict.fromkeys(["deform"], 0),
    **dict.fromkeys(["complexity", "speed", "roi_align", "mixed_precision", "winograd"], 0),
    **dict.fromkeys(["env", "runtime", "reading"], 0),
    **dict.fromkeys(["weights", "data"], 1),
    **dict.fromkeys(["training", "evaluation", "export", "lazy", "predict", "model_zoo"], 2),
    **dict.fromkeys(["sweep"], 2),
    **dict.fromkeys(["demo", "cli", "commands"], 3),
}
LAYER_NAMES = ("core", "inputs", "jobs", "entry")
# Top-level folders of the checkout that the wheel does not ship.
OUTSIDE_THE_WHEEL = ("benchmarks", "tools")


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package under ``root``."""
    mods = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def imports_of(module: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported package module, line) for every import of the package in ``path``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    yield (sub if sub in known else target), node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    yield alias.name, node.lineno


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def check(root: Path) -> list[str]:
    """Every breach of the contract under ``root`` (a checkout), as 'file:line: message'."""
    known = module_files(root)
    problems: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for name in names:
                if name.split(".")[0] in OUTSIDE_THE_WHEEL:
                    problems.append(
                        f"{path}:{node.lineno}: {module} imports {name}, which the wheel does "
                        "not ship"
                    )
        mine = _top(module)
        if mine is not None and mine not in LAYERS:
            problems.append(f"{path}: module {module} has no layer in tools/check_layers.py LAYERS")
            continue
        for target, line in imports_of(module, path, known):
            if target == module:
                continue
            graph[module].add(target)
            theirs = _top(target)
            where = f"{path}:{line}"
            if mine is None:
                continue  # the facade may import anything
            if theirs is None:
                problems.append(
                    f"{where}: {module} imports the package facade {PACKAGE}; import the module "
                    "that defines the name instead"
                )
            elif theirs in LAYERS and LAYERS[theirs] > LAYERS[mine]:
                problems.append(
                    f"{where}: {module} ({LAYER_NAMES[LAYERS[mine]]}) imports {target} "
                    f"({LAYER_NAMES[LAYERS[theirs]]}), a higher layer"
                )
    problems.extend(f"import cycle: {' -> '.join(c)}" for c in _cycles(graph))
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
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
            # A package importing its own submodules (re-exports) is not a cycle.
            members = [m for m in component if not any(o.startswith(m + ".") for o in component)]
            if len(component) > 1 and len(members) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    problems = check(root)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"check_layers: {len(problems)} breach(es) of the layer contract", file=sys.stderr)
        return 1
    print(f"check_layers: {len(module_files(root))} modules, layers and no cycles: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
