"""The package's module-level imports form no cycle (every module can be read bottom-up)."""

import ast
from pathlib import Path

import arc_encoder

ROOT = Path(arc_encoder.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path) -> str:
    """The package that a file's relative imports start from."""
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def import_targets(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """The modules an import statement may load (some are names inside a module, filtered later)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    # `from . import x` loads the submodule x; `from .m import x`: m, or its submodule x
    return [f"{target}.{a.name}" for a in node.names] + ([target] if node.module else [])


def imported(path: Path, known: set[str]) -> set[str]:
    """arc_encoder modules imported by the top-level statements of a file (not inside functions)."""
    name, package = module_name(path), package_of(path)
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= {c for c in import_targets(node, package) if c in known and c != name}
    return out


def test_module_level_imports_have_no_cycle():
    files = sorted(ROOT.rglob("*.py"))
    known = {module_name(f) for f in files}
    graph = {module_name(f): imported(f, known) for f in files}
    assert graph["arc_encoder.cli"], "the parser found no import at all"
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


# Imported inside a function on purpose: these modules need the optional `serve` extra (fastapi,
# and pydantic with it) at module level, and the other commands must run without it.
LAZY_FOR_OPTIONAL_DEPENDENCY = {
    ("arc_encoder.serving.commands", "arc_encoder.serving.app"),
    ("arc_encoder.serving.commands", "arc_encoder.serving.schemas"),
}


def lazy_imports(path: Path, known: set[str]) -> set[str]:
    """arc_encoder modules imported below the top level of a file (in a function, class or block)."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
            out |= {c for c in import_targets(node, package_of(path)) if c in known}
    return out


def test_package_modules_are_imported_at_module_level():
    """A function-level import would hide an edge from the cycle test above."""
    files = sorted(ROOT.rglob("*.py"))
    known = {module_name(f) for f in files}
    found = {(module_name(f), target) for f in files for target in lazy_imports(f, known)}
    assert not found - LAZY_FOR_OPTIONAL_DEPENDENCY, "import these at module level"
    assert not LAZY_FOR_OPTIONAL_DEPENDENCY - found, "an allowed lazy import is gone: drop it from the list"
