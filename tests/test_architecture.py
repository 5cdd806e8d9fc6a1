"""The shape of the code, checked: one direction of imports, no cycles, small modules.

Every first-party import is read from the source with ``ast``, the ones inside
functions included (a function-local import hides a cycle from Python but not
from this test). The rules, and why:

- ``edge`` never imports ``toolchain``: the device side installs without
  TensorFlow and must run on a Pi with ``pip install 'edgetl[edge]'``.
- No cycles inside ``toolchain`` or ``edge``: a newcomer follows one command's
  data down the layers without climbing back up.
- Folders are layers, and imports only go down them (``LAYERS``): the command line
  (``toolchain/*.py``) → ``train/`` or ``export/`` → ``validate/`` → ``confidence/`` → ``quantize/`` →
  ``core/`` → ``edge/``. ``train`` and ``export`` never import each other: a run
  folder is their only interface. The package root holds only ``__version__``.
- No module over ``MAX_LINES`` lines: one idea per file.
- First-party imports at module level (heavy third-party ones such as
  TensorFlow stay lazy through ``toolchain.core.quiet``), so the graph above is the
  real one. The CLI is the one exception: it imports a command's module when
  that command runs, so ``edgetl classify`` starts without the workstation side.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "toolchain")
MAX_LINES = 400
LAZY_FIRST_PARTY_ALLOWED = {"toolchain.cli"}
# Top to bottom; a folder may import its own modules and any folder on a lower line.
LAYERS = (
    ("toolchain",),
    ("toolchain.train", "toolchain.export"),
    ("toolchain.validate", "toolchain.accelerators"),
    ("toolchain.confidence",),
    ("toolchain.quantize",),
    ("toolchain.core",),
    ("edge",),
)
VERSION_ONLY = "toolchain"  # `from toolchain import __version__` is allowed everywhere


def module_files() -> Dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


def imports_of(name: str, path: Path, modules: Set[str]) -> List[Tuple[str, int, bool]]:
    """(imported first-party module, line, at module level) for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        targets: List[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = name.split(".")[: -node.level if path.name != "__init__.py" else None]
                base = ".".join([*package, node.module] if node.module else package)
            else:
                base = node.module or ""
            # `from toolchain import metrics` imports the module toolchain.metrics
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                found.append((target, node.lineno, id(node) in top_level))
    return found


def import_graph() -> Tuple[Dict[str, Set[str]], List[str]]:
    files = module_files()
    modules = set(files)
    graph: Dict[str, Set[str]] = {name: set() for name in files}
    lazy = []
    for name, path in files.items():
        for target, line, top in imports_of(name, path, modules):
            if target != name:
                graph[name].add(target)
            if not top and name not in LAZY_FIRST_PARTY_ALLOWED:
                lazy.append(f"{path.relative_to(REPO)}:{line} imports {target} inside a function")
    return graph, lazy


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_sees_what_it_must(tmp_path):
    """The checker itself can fail: cycles, and imports hidden inside functions, are read."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    source = tmp_path / "sample.py"
    source.write_text(
        "from edge import errors\n"
        "def later():\n"
        "    from toolchain.export import command\n"
        "    import toolchain.validate.command as p\n"
    )
    modules = {"edge.errors", "toolchain", "toolchain.export.command", "toolchain.validate.command"}
    assert imports_of("edge.sample", source, modules) == [
        ("edge.errors", 1, True),
        ("toolchain.export.command", 3, False),
        ("toolchain.validate.command", 4, False),
    ]
    graph, _ = import_graph()
    assert "toolchain.core.rundir" in graph["toolchain.export.command"]  # the real tree is read


def test_no_import_cycles():
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_edge_never_imports_toolchain():
    graph, _ = import_graph()
    upward = sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name.split(".")[0] == "edge"
        for target in targets
        if target.split(".")[0] == "toolchain"
    )
    assert upward == []


def test_first_party_imports_are_at_module_level():
    _, lazy = import_graph()
    assert lazy == []


def test_no_module_over_the_line_limit():
    too_long = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in module_files().items()
        if len(path.read_text(encoding="utf-8").splitlines()) > MAX_LINES
    }
    assert too_long == {}


def folder_of(module: str) -> str:
    """The layer folder a module sits in: ``toolchain.export.qat.worker`` → ``toolchain.export``."""
    parts = module.split(".")
    for depth in (2, 1):
        candidate = ".".join(parts[:depth])
        if any(candidate in layer for layer in LAYERS):
            return candidate
    raise AssertionError(f"{module} sits in no folder of LAYERS: add its folder there")


def layer_of(module: str) -> int:
    folder = folder_of(module)
    return next(i for i, layer in enumerate(LAYERS) if folder in layer)


def test_imports_go_down_the_folders():
    graph, _ = import_graph()
    upward = sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        for target in targets
        if target != VERSION_ONLY
        and folder_of(target) != folder_of(name)
        and layer_of(target) <= layer_of(name)
    )
    assert upward == []


def test_the_layer_rule_can_fail():
    assert folder_of("toolchain.export.qat.worker") == "toolchain.export"
    assert folder_of("toolchain.cli") == "toolchain"
    assert layer_of("toolchain.train.phases") == layer_of("toolchain.export.command")
    assert layer_of("toolchain.core.rundir") > layer_of("toolchain.validate.decision")
