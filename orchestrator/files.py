"""Small file operations every part shares: digests, atomic replacement, exclusive locks, and
private directories in shared places."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import OrchestratorError

#: libyaml's safe loader and dumper when PyYAML was built with it (several times faster; an
#: inventory of 10,000 hosts is dumped in 0.3 s instead of 1.2 s), else PyYAML's own
_FAST_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_FAST_SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class UnsafeDirectory(OrchestratorError):
    """A directory the tool keeps private (SSH control sockets, test fleets) is not: it belongs
    to another user, is writable by others, or is not a plain directory (exit 1)."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at `path`, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_files(paths: Iterable[Path], root: Path) -> str:
    """Hex sha256 over the files among `paths` (name relative to `root`, then content), in name
    order; directories and `__pycache__` are left out."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()


def atomic_write(path: Path, text: str, *, mode: int | None = None, durable: bool = False) -> None:
    """Replace `path` with `text` so that readers see the old or the new content, never a mix.

    `durable` also fsyncs the file and its directory (lock records, journal heads: they must
    survive a power loss in the state they were last written).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        if mode is not None:
            os.fchmod(handle.fileno(), mode)
        handle.write(text)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    tmp.replace(path)
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive fcntl lock on `path` (created if needed), released on exit or process death."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _owner_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def private_dir(path: Path) -> Path:
    """`path` as a directory only the current user can enter: created with mode 0700 when missing,
    checked when it exists, and returned.

    For directories in shared places (`/tmp`, `/var/tmp`) whose names anyone can guess: a
    directory someone else made there first (to read SSH control sockets, or to plant files)
    must not be used. Refused with UnsafeDirectory when `path` is a symlink or not a directory,
    when its owner is not the current user, or when group or others may write to it. One that is
    ours and only readable by others (an older version made it 0755) is tightened to 0700: nobody
    else can have written into it.
    """
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafeDirectory(f"cannot create the private directory {path}: {exc.strerror or exc}") from None
    info = os.lstat(path)
    fix = f"remove it (`rm -rf {path}`) or move it aside; it is made again with mode 0700"
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a directory"
        raise UnsafeDirectory(f"refusing to use {path}: it is {kind}, not a private directory", hint=fix)
    me = os.getuid()
    if info.st_uid != me:
        raise UnsafeDirectory(f"refusing to use {path}: it belongs to {_owner_name(info.st_uid)}, not to "
                              f"{_owner_name(me)}", hint=f"another user may have made it first; {fix}")
    if info.st_mode & 0o022:
        raise UnsafeDirectory(f"refusing to use {path}: its mode {stat.S_IMODE(info.st_mode):04o} lets others "
                              "write to it (expected 0700)", hint=f"something in it may not be ours; {fix}")
    if stat.S_IMODE(info.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def ssh_control_dir() -> Path:
    """Where SSH keeps the master connections' sockets (`ControlPath`), one directory per user.

    Short on purpose (a socket path must stay under ~108 bytes); not created here: callers make
    it with `private_dir` before SSH may use it.
    """
    return Path(f"/tmp/orch-cp-{os.getuid()}")


def load_yaml(text: str) -> Any:
    """A YAML document the tool wrote itself (an inventory), loaded safely and fast.

    Files an operator writes go through PyYAML's own parser (orchestrator.config.loader), whose
    error messages the validation errors quote."""
    return yaml.load(text, Loader=_FAST_SAFE_LOADER)  # noqa: S506 - a safe loader


def dump_yaml(data: Any) -> str:
    """`data` as a YAML document, safely and fast, keys in their given order (an inventory)."""
    return yaml.dump(data, Dumper=_FAST_SAFE_DUMPER, sort_keys=False)
