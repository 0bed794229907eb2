"""Release bundles on the controller: a `.tar.gz` whose top level is the release directory.

A bundle holds the executable and the files it needs (assets, migrations), and optionally a
top-level `VERSION` file naming its version. It is checked here with the rules the rust_service
role applies on the hosts (roles/rust_service/module_utils/rust_service_bundle.py), so a bundle
the hosts would refuse is refused before any host changes: regular files and directories only,
relative paths without `..`, no member twice, no top-level MANIFEST, MANIFEST.sig or RELEASE,
and the service's executable at the top, executable.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ReleaseError

#: file names a bundle may end with
BUNDLE_SUFFIXES = (".tar.gz", ".tgz")


#: top-level names the role keeps for itself
RESERVED = frozenset(("MANIFEST", "MANIFEST.sig", "RELEASE"))


#: the bundle's own version file (first line: the version)
VERSION_FILE = "VERSION"


_VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")


@dataclass(frozen=True)
class BundleContents:
    """What a checked bundle holds: its files (relative paths) and the version its VERSION file names."""

    files: tuple[str, ...]
    version: str | None


def is_bundle_name(name: str) -> bool:
    """Whether a file name says bundle (`.tar.gz`, `.tgz`)."""
    return name.endswith(BUNDLE_SUFFIXES)


def member_path(name: str) -> str:
    """The normalised relative path of a member (`./a/b` -> `a/b`, `.` -> ''); ReleaseError for an
    absolute path, `..`, a backslash or a control character."""
    if any(ord(c) < 32 or ord(c) == 127 for c in name) or "\\" in name:
        raise ReleaseError(f"bundle member {name!r}: control characters and backslashes are not allowed")
    if name.startswith("/"):
        raise ReleaseError(f"bundle member {name!r}: absolute paths are not allowed")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ReleaseError(f"bundle member {name!r}: '..' is not allowed")
    return "/".join(parts)


def check_members(members: list[tarfile.TarInfo], binary: str) -> list[tuple[str, tarfile.TarInfo]]:
    """[(path, member)] to unpack, in order; ReleaseError naming the first member the role would refuse."""
    checked: list[tuple[str, tarfile.TarInfo]] = []
    kinds: dict[str, bool] = {}  # path -> is a directory
    for member in members:
        path = member_path(member.name)
        if not (member.isreg() or member.isdir()):
            kind = "symlink" if member.issym() else "hard link" if member.islnk() else "special file"
            raise ReleaseError(f"bundle member {member.name!r} is a {kind}; only regular files and directories "
                               "are allowed")
        if not path:
            if member.isreg():
                raise ReleaseError(f"bundle member {member.name!r}: a file cannot be the top directory")
            continue
        top = path.split("/")[0]
        if top in RESERVED:
            raise ReleaseError(f"bundle member {member.name!r}: {top} is reserved (the role writes it)")
        if path in kinds and not (kinds[path] and member.isdir()):
            raise ReleaseError(f"bundle member {member.name!r} appears more than once")
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if kinds.get(parent) is False:
                raise ReleaseError(f"bundle member {member.name!r}: {parent} is a file")
            kinds.setdefault(parent, True)
        if path not in kinds or not kinds[path]:
            checked.append((path, member))
        kinds[path] = member.isdir()
    executable = next((m for p, m in checked if p == binary), None)
    if executable is None or not executable.isreg():
        raise ReleaseError(f"the bundle has no executable {binary!r} at its top level (service.binary)",
                           hint="files at its top: " + ", ".join(sorted({p.split('/')[0] for p, _ in checked}))
                           or None)
    if not executable.mode & 0o100:
        raise ReleaseError(f"bundle member {binary!r} is not executable (mode {executable.mode:04o})")
    return checked


def _version(root: Path) -> str | None:
    path = root / VERSION_FILE
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    text = lines[0].strip() if lines else ""
    if not _VERSION_RE.fullmatch(text):
        raise ReleaseError(f"the bundle's {VERSION_FILE} file says {text[:70]!r}, not a version such as 1.4.2")
    return text


def unpack(archive: Path, target: Path, binary: str) -> BundleContents:
    """Check `archive` and unpack it into the directory `target` (replaced whole, atomically).

    Raises ReleaseError for an archive that is not a gzipped tar or holds anything the role would
    refuse; `target` is then left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.unpack-", dir=target.parent))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = check_members(tar.getmembers(), binary)
                # the data filter refuses what slipped past (links, devices, modes), as the hosts' does
                tar.extractall(scratch, members=[m for _, m in members], filter="data")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ReleaseError(f"{archive}: not a readable .tar.gz bundle: {exc}") from None
        contents = BundleContents(files=tuple(sorted(p for p, m in members if m.isreg())), version=_version(scratch))
        if target.exists():
            shutil.rmtree(target)
        scratch.rename(target)
        return contents
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def peek_version(archive: Path) -> str | None:
    """The version the bundle's top-level VERSION file names, read without unpacking (None: no such
    file, or the archive cannot be read; `unpack` reports those)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                if member.isreg() and member_path(member.name) == VERSION_FILE:
                    handle = tar.extractfile(member)
                    text = handle.read(4096).decode("utf-8", "replace") if handle is not None else ""
                    first = text.strip().splitlines()[0].strip() if text.strip() else ""
                    return first if _VERSION_RE.fullmatch(first) else None
    except (tarfile.TarError, EOFError, OSError, ReleaseError):
        return None
    return None
