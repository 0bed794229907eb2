"""Clean results of slow static checks, remembered by everything they depend on.

A check (ansible-lint, checkov, promtool, ...) whose inputs and tools are byte for byte those of an
earlier clean run passes without running again. Only clean results are remembered: a check that
found something runs again every time, so its findings are always current. The key is a sha256 of
the check's name, the tools it runs (path, size, modification time) and the content of every file
it reads (by path relative to the project, so every checkout and copy of a project shares them).

    key = ResultKey("checkov").tool(checkov).tree(rendered, project_dir).hexdigest()
    message = remembered("checkov", key)       # "" when not seen clean
    ...
    remember("checkov", key, message)

The stamps live in paths.verify_cache() (one file per clean result, the newest KEEP per check).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

from orchestrator import paths
from orchestrator.files import atomic_write, digest_files

#: clean results kept per check (the newest; several projects and environments share the cache)
KEEP = 32


class ResultKey:
    """The sha256 a clean result is remembered under."""

    def __init__(self, purpose: str) -> None:
        self._digest = hashlib.sha256(purpose.encode() + b"\0")

    def text(self, value: str) -> ResultKey:
        self._digest.update(value.encode() + b"\0")
        return self

    def tool(self, program: Path | None) -> ResultKey:
        """A program the check runs: a new build or install of it is a new key."""
        if program is None:
            return self.text("-")
        stat = program.stat()
        return self.text(f"{program}:{stat.st_size}:{stat.st_mtime_ns}")

    def files(self, files: Iterable[Path], base: Path) -> ResultKey:
        """Each file's path relative to `base` (every one lies under it) and its content
        (files.digest_files: `__pycache__` left out)."""
        return self.text(digest_files(files, base))

    def tree(self, root: Path, base: Path, *, keep: Callable[[Path], bool] = lambda path: True) -> ResultKey:
        """Every file under `root` (or `root` itself) that `keep` accepts, in a stable order."""
        if root.is_file():
            return self.files([root], base)
        if not root.is_dir():
            return self.text(f"missing:{root}")
        return self.files(sorted(p for p in root.rglob("*") if p.is_file() and keep(p)), base)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _stamp(name: str, key: str) -> Path:
    return paths.verify_cache() / f"{name}-{key[:32]}.ok"


def remembered(name: str, key: str) -> str:
    """What check `name` said when it passed with `key`, or "" when it has not."""
    stamp = _stamp(name, key)
    return stamp.read_text().strip() if stamp.is_file() else ""


def remember(name: str, key: str, message: str) -> None:
    """Record a clean result of check `name` under `key`; drop that check's oldest beyond KEEP."""
    stamp = _stamp(name, key)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(stamp, message + "\n")

    def age(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:  # another process pruned it meanwhile
            return 0.0

    for old in sorted(stamp.parent.glob(f"{name}-*.ok"), key=age, reverse=True)[KEEP:]:
        old.unlink(missing_ok=True)
