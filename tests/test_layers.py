"""The layers of docs/architecture.md#layers hold: a module imports only from its own layer or below, and no
import circle exists. Every import counts, those inside functions too, since a lazy import is still a dependency."""

import ast
from pathlib import Path

import avcil

PACKAGE = Path(avcil.__file__).parent
# Lowest first. A module belongs to the longest prefix that names it.
LAYERS = (
    ("avcil", "avcil.errors", "avcil.fileio", "avcil.features"),
    ("avcil.data",),
    ("avcil.model",),
    ("avcil.modeldir", "avcil.backends"),
    ("avcil.train", "avcil.export"),
    ("avcil.runtime",),
    ("avcil.bench", "avcil.demo", "avcil.cli", "avcil.__main__", "avcil.api"),
)
# The one upward import allowed: the package's `__getattr__` hands out `avcil.Model` (avcil/api.py, the top layer)
# on first use, so that `import avcil` stays light and the API sits above everything it uses.
FACADE = {("avcil", "avcil.api")}


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    matches = [(len(prefix), index) for index, prefixes in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or (prefix != "avcil" and module.startswith(prefix + "."))]
    assert matches, f"{module} is in no layer of docs/architecture.md#layers; add it to LAYERS"
    return max(matches)[1]


def imported_modules(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """The avcil modules `path` imports, resolved to modules (a `from package import name` of a submodule counts
    as that submodule)."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "avcil"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "avcil":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    found.discard(me)
    return {m for m in found if m != "avcil"}


GRAPH = {name: imported_modules(path) for name, path in MODULES.items()}


def test_no_module_imports_from_a_higher_layer():
    upward = [f"{m} (layer {layer_of(m) + 1}) imports {t} (layer {layer_of(t) + 1})"
              for m, targets in sorted(GRAPH.items()) for t in sorted(targets)
              if layer_of(t) > layer_of(m) and (m, t) not in FACADE]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    # Packages count as their __init__ only; a circle through submodules is what matters.
    state, circles = {}, []

    def visit(node, path):
        state[node] = "open"
        for target in sorted(GRAPH.get(node, ())):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not circles, "\n".join(circles)


def test_the_checker_sees_a_lazy_upward_import_and_a_relative_one(tmp_path):
    source = tmp_path / "avcil" / "data" / "bad.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from avcil.runtime.recognizer import Recognizer\n    from ..train import learner\n")
    found = imported_modules(source, tmp_path)
    assert found == {"avcil.runtime.recognizer", "avcil.train.learner"}
    assert all(layer_of(m) > layer_of("avcil.data.bad") for m in found)
