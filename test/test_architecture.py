"""The package's structure as a test: layers, no import circles, small modules, entry points.

Every import of every module counts, the ones inside functions and under ``TYPE_CHECKING``
included (a function-local import still ties the two modules together). The layers, lowest
first; a module may import its own package and any lower layer, nothing above and nothing beside:

    0  labels, options, paths, jsonio, image_codec, memory  (no torch, no ROS)
    1  model, data                                   (the method and its data; independent)
    2  bundle                                        (the deployed artifact: reader, graph, writer)
    2  outputs                                       (regions, persistence, depth, snapshots)
    3  runtime                                       (backends over a bundle)
    4  evaluation                                    (metrics, scoring, the validation protocol)
    5  training                                      (the trainer; selects with evaluation)
    6  export                                        (checkpoint -> calibrated bundle)
    7  node                                          (the only ROS package)
    8  tools                                         (entry points and benchmark runners)
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flowclas_ros"
LAYERS = {
    "__init__": 0, "labels": 0, "options": 0, "paths": 0, "jsonio": 0, "image_codec": 0,
    "memory": 0,
    "model": 1, "data": 1,
    "bundle": 2,
    "outputs": 2,
    "runtime": 3,
    "evaluation": 4,
    "training": 5,
    "export": 6,
    "node": 7,
    "tools": 8,
}
MAX_LINES = 450


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """Return the longest known module that ``name`` is or lies in."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Return the package modules that ``module`` imports anywhere in its file."""
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - node.level + 1]
                stem = ".".join(anchor + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import submodule` imports the submodule; `from mod import name` the module
            targets = [f"{stem}.{a.name}" for a in node.names] or [stem]
            targets = [t if _resolve(t, known) == t else stem for t in targets]
        for t in targets:
            if t.split(".")[0] != "flowclas_ros":
                continue
            target = _resolve(t, known)
            if target is not None and target != module:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_room_has_a_layer():
    missing = sorted({room(m) for m in modules()} - set(LAYERS))
    assert not missing, f"give these a layer in LAYERS (and the docstring): {missing}"


def test_no_import_runs_up_or_sideways():
    bad = []
    for mod, targets in graph().items():
        for t in targets:
            a, b = room(mod), room(t)
            if a != b and LAYERS[b] >= LAYERS[a]:
                bad.append(f"{mod} -> {t} (layer {LAYERS[a]} -> {LAYERS[b]})")
    assert not bad, "imports that run up or sideways:\n" + "\n".join(sorted(bad))


def test_no_import_circles():
    g = graph()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    circles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(g[m]):
            if state.get(t) == 1:
                circles.append(" -> ".join(stack[stack.index(t):] + [m, t]))
            elif t not in state:
                visit(t, stack + [m])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_no_module_over_the_size_limit():
    big = {m: n for m, p in modules().items()
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by concept): {big}"


def test_command_lines_are_parsed_only_in_tools():
    """Argparse and ``if __name__ == "__main__"`` belong to the entry points."""
    bad = []
    for mod, path in modules().items():
        if room(mod) == "tools":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if "argparse" in names:
                    bad.append(f"{mod} imports argparse")
            if (isinstance(node, ast.Compare) and isinstance(node.left, ast.Name)
                    and node.left.id == "__name__"):
                bad.append(f"{mod} has a __main__ block")
    assert not bad, "\n".join(bad)
