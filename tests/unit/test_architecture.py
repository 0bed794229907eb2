"""The dependency direction of docs/architecture.md, checked on the source: a package imports only
packages below it, so no two packages import each other. Function-level imports count."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.support.project import REPO

PACKAGE = REPO / "orchestrator"

#: docs/architecture.md, bottom to top; packages of one rank must not import each other either
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("paths", "files", "ids"),
    ("config",),
    ("tools", "models"),
    ("runs",),
    ("fleet",),
    ("monitoring", "logs", "notify"),
    ("traffic",),
    ("release",),
    ("heal", "verify"),
    ("pipeline",),
    ("cli",),
    ("entry",),
    ("__main__",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}

#: Upward imports that exist today and are to be removed (docs/architecture.md names them).
#: (importing package, imported package, file): a new one fails the test, and so does one that is gone.
KNOWN_EXCEPTIONS: set[tuple[str, str, str]] = set()


def top_level(path: Path) -> str:
    """`config` for orchestrator/config/loader.py, `paths` for orchestrator/paths.py."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def imported_packages(path: Path) -> Iterator[str]:
    """Top-level orchestrator packages that `path` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "orchestrator":  # from orchestrator import paths
                names = [f"orchestrator.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            # `from orchestrator import __version__` names an attribute of the package, not a module
            if parts[0] == "orchestrator" and len(parts) > 1 and (
                    (PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file()):
                yield parts[1]


def upward_imports() -> set[tuple[str, str, str]]:
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = top_level(path)
        if importer == "__init__":
            continue
        for imported in imported_packages(path):
            if imported != importer and RANK[imported] >= RANK[importer]:
                found.add((importer, imported, path.relative_to(REPO).as_posix()))
    return found


def test_every_module_of_the_package_has_a_layer() -> None:
    unplaced = {top_level(p) for p in PACKAGE.rglob("*.py")} - set(RANK) - {"__init__"}
    assert not unplaced, f"add {sorted(unplaced)} to LAYERS here and to docs/architecture.md"


def test_packages_import_only_packages_below_them() -> None:
    found = upward_imports()
    new = sorted(found - KNOWN_EXCEPTIONS)
    assert not new, "imports against the dependency direction (docs/architecture.md):\n" + "\n".join(
        f"  {file}: {importer} imports {imported}" for importer, imported, file in new)
    gone = sorted(KNOWN_EXCEPTIONS - found)
    assert not gone, f"fixed, remove from KNOWN_EXCEPTIONS and docs/architecture.md: {gone}"
