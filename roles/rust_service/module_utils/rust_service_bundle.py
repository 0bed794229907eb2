"""Release bundles and signed manifests of the rust_service role.

A bundle is a .tar.gz whose top level is the release directory's content. `unpack` checks every
member before anything is written (regular files and directories only, relative paths without
`..`, no reserved names) and unpacks into a temporary directory beside the target, renamed into
place at the end, so a release directory is either complete or absent.

A signed release carries MANIFEST, canonical JSON produced by the controller:

    {"files":{"<relpath>":"<sha256>",...},"format":1,"id":"<release id>",
     "sbom_sha256":"<hex or null>","version":"<version>"}

(sorted keys, separators "," and ":", UTF-8, one trailing newline) and MANIFEST.sig, the output
of `ssh-keygen -Y sign -n orchestrate-release`. It lists every file of the release directory
except the top-level names in RESERVED (the manifest, its signature and the RELEASE record the
role writes itself).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import unicodedata

MANIFEST = "MANIFEST"
SIGNATURE = "MANIFEST.sig"
RELEASE_RECORD = "RELEASE"
#: top-level names of a release directory that the manifest does not list (and a bundle may not hold)
RESERVED = frozenset((MANIFEST, SIGNATURE, RELEASE_RECORD))
#: the signature namespace and the principal of the allowed signers file
NAMESPACE = "orchestrate-release"
PRINCIPAL = "orchestrate-release"
MANIFEST_FORMAT = 1

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_PUBLIC_KEY = re.compile(r"ssh-ed25519 [A-Za-z0-9+/]+={0,2}( [^\x00-\x1f\x7f]*)?\Z")


class BundleError(ValueError):
    """A bundle member that may not be unpacked; the message names it."""


class IntegrityError(ValueError):
    """A release directory that does not match its signed manifest; `problems` lists every finding."""

    def __init__(self, message, problems=()):
        super().__init__(message)
        self.problems = list(problems) or [message]


# --- bundles ---------------------------------------------------------------------------------


def member_path(name):
    """The normalised relative path of a tar member name, or BundleError.

    `./a/b` -> `a/b`; `.` (the top directory itself) -> ""; absolute paths, `..`, control
    characters and backslashes are refused.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise BundleError(f"bundle member {name!r}: the name is not UTF-8") from None
    if any(unicodedata.category(c) == "Cc" for c in name) or "\\" in name:
        raise BundleError(f"bundle member {name!r}: control characters and backslashes are not allowed")
    if name.startswith("/"):
        raise BundleError(f"bundle member {name!r}: absolute paths are not allowed")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BundleError(f"bundle member {name!r}: '..' is not allowed")
    return "/".join(parts)


def member_mode(mode, is_dir):
    """The mode a member gets: no setuid/setgid/sticky, no group/other write (tarfile's data filter)."""
    if is_dir:
        return 0o755
    return (mode & 0o755) | 0o600


def check_members(members):
    """[(path, member)] for the members to unpack, in order; BundleError for the first bad one.

    Only regular files and directories are allowed (no symlinks, hard links, devices or fifos),
    at most once each, and no top-level RESERVED name.
    """
    checked = []
    seen = {}
    for member in members:
        path = member_path(member.name)
        if not (member.isreg() or member.isdir()):
            kind = ("symlink" if member.issym() else "hard link" if member.islnk() else
                    "fifo" if member.isfifo() else "device" if member.isdev() else "special file")
            raise BundleError(f"bundle member {member.name!r} is a {kind}; only regular files and directories "
                              "are allowed")
        if not path:
            if member.isreg():
                raise BundleError(f"bundle member {member.name!r}: a file cannot be the top directory")
            continue
        if path.split("/")[0] in RESERVED:
            raise BundleError(f"bundle member {member.name!r}: {path.split('/')[0]} is reserved for the role")
        if path in seen:
            if not (seen[path] and member.isdir()):
                raise BundleError(f"bundle member {member.name!r} appears more than once (or as a file and "
                                  "a directory)")
            continue
        for parent in _parents(path):
            if seen.get(parent) is False:
                raise BundleError(f"bundle member {member.name!r}: {parent} is a file")
            seen.setdefault(parent, True)
        seen[path] = member.isdir()
        checked.append((path, member))
    return checked


def _parents(path):
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def unpack(archive, target):
    """Unpack the .tar.gz `archive` into the directory `target` (which must not exist), atomically.

    Everything is checked first; files are written with O_EXCL|O_NOFOLLOW into a temporary
    directory beside `target`, which is renamed to `target` at the end. Returns the number of
    files unpacked.
    """
    import tarfile  # here: a switch to a release already unpacked (most of them) never needs it

    parent = os.path.dirname(target)
    os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = check_members(tar.getmembers())
            tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(target)}.unpack-")
            try:
                os.chmod(tmp, 0o755)
                count = _extract(tar, members, tmp)
                os.rename(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"{archive}: cannot unpack: {exc}") from exc
    return count


def _extract(tar, members, root):
    count = 0
    for path, member in members:
        dest = os.path.join(root, path)
        for parent in _parents(path):
            folder = os.path.join(root, parent)
            if not os.path.isdir(folder):
                os.mkdir(folder, 0o755)
        if member.isdir():
            if not os.path.isdir(dest):
                os.mkdir(dest, 0o755)
            os.chmod(dest, member_mode(member.mode, True))
            continue
        source = tar.extractfile(member)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            shutil.copyfileobj(source, handle, 1 << 20)
            os.fchmod(handle.fileno(), member_mode(member.mode, False))
        count += 1
    return count


# --- manifests -------------------------------------------------------------------------------


def manifest_text(files, release_id, version, sbom_sha256=None):
    """The canonical MANIFEST for `files` ({relpath: sha256}); what the controller signs."""
    data = {"files": dict(files), "format": MANIFEST_FORMAT, "id": release_id, "sbom_sha256": sbom_sha256,
            "version": version}
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def _no_duplicates(pairs):
    data = {}
    for key, value in pairs:
        if key in data:
            raise IntegrityError(f"MANIFEST: key {key!r} appears twice")
        data[key] = value
    return data


def parse_manifest(text):
    """The manifest as a dict, checked: format 1, id, version, files {relpath: sha256}, sbom_sha256."""
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as exc:
        if isinstance(exc, IntegrityError):
            raise
        raise IntegrityError(f"MANIFEST is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise IntegrityError("MANIFEST: expected a JSON object")
    if data.get("format") != MANIFEST_FORMAT:
        raise IntegrityError(f"MANIFEST: format {data.get('format')!r} is not {MANIFEST_FORMAT}")
    for field in ("id", "version"):
        if not isinstance(data.get(field), str) or not data[field]:
            raise IntegrityError(f"MANIFEST: {field} must be a non-empty string")
    sbom = data.get("sbom_sha256")
    if sbom is not None and not (isinstance(sbom, str) and _HEX64.match(sbom)):
        raise IntegrityError("MANIFEST: sbom_sha256 must be 64 lower-case hex digits or null")
    files = data.get("files")
    if not isinstance(files, dict) or not files:
        raise IntegrityError("MANIFEST: files must be a non-empty object")
    for path, digest in files.items():
        try:
            normal = member_path(path)
        except BundleError:
            normal = ""
        if normal != path or path.split("/")[0] in RESERVED:
            raise IntegrityError(f"MANIFEST: {path!r} is not a plain relative path of a release file")
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise IntegrityError(f"MANIFEST: the sha256 of {path} is not 64 lower-case hex digits")
    unknown = sorted(set(data) - {"files", "format", "id", "sbom_sha256", "version"})
    if unknown:
        raise IntegrityError(f"MANIFEST: unknown keys {', '.join(unknown)}")
    return data


def sha256_file(path):
    """sha256 of a regular file, not following a symlink in its last component."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def release_files(root):
    """({relpath} of regular files, {relpath: kind} of other non-directory entries) under `root`.

    The top-level RESERVED names are left out; symlinks are reported, never followed.
    """
    files, others = set(), {}
    for folder, dirs, names in os.walk(root, followlinks=False):
        rel_folder = os.path.relpath(folder, root)
        for name in dirs + names:
            rel = name if rel_folder == "." else f"{rel_folder}/{name}"
            if rel_folder == "." and name in RESERVED:
                continue
            mode = os.lstat(os.path.join(folder, name)).st_mode
            if stat.S_ISDIR(mode):
                continue
            if stat.S_ISREG(mode):
                files.add(rel)
            else:
                others[rel] = "symlink" if stat.S_ISLNK(mode) else "special file"
    return files, others


def content_problems(root, manifest, release_id):
    """What differs between the release directory `root` and its (parsed) manifest; [] when nothing.

    Each problem names the file: a digest that differs, a listed file that is missing, a file
    (or link) the manifest does not list; and a manifest made for another release.
    """
    problems = []
    if manifest["id"] != release_id:
        problems.append(f"MANIFEST is for release {manifest['id']}, not {release_id}")
    files, others = release_files(root)
    for path, expected in sorted(manifest["files"].items()):
        full = os.path.join(root, path)
        if path not in files:
            kind = others.get(path)
            problems.append(f"{path} is a {kind}, not a regular file" if kind else f"{path} is missing")
            continue
        actual = sha256_file(full)
        if actual != expected:
            problems.append(f"{path}: sha256 {actual} differs from the manifest's {expected}")
    for path in sorted((files | set(others)) - set(manifest["files"])):
        problems.append(f"{path} is not listed in the manifest")
    return problems


def verify_signature(manifest_bytes, signature_bytes, allowed_signers, timeout=30):
    """(ok, output) of `ssh-keygen -Y verify` of the manifest against the allowed signers file."""
    with tempfile.TemporaryDirectory(prefix="orchestrate-sig-") as tmp:
        sig = os.path.join(tmp, SIGNATURE)
        with open(sig, "wb") as handle:
            handle.write(signature_bytes)
        argv = ["ssh-keygen", "-Y", "verify", "-f", allowed_signers, "-I", PRINCIPAL, "-n", NAMESPACE, "-s", sig]
        try:
            proc = subprocess.run(argv, input=manifest_bytes, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, str(exc)
    return proc.returncode == 0, proc.stdout.decode("utf-8", "replace").strip()


def verify_release(root, release_id, allowed_signers, manifest_bytes=None, signature_bytes=None):
    """Check the release directory `root` against its signed manifest; raise IntegrityError.

    The manifest and signature are read from `root` unless given (check mode verifies the ones
    it would write). Order: the signature, then the manifest's id, digests and file list.
    """
    try:
        if manifest_bytes is None:
            with open(os.path.join(root, MANIFEST), "rb") as handle:
                manifest_bytes = handle.read()
        if signature_bytes is None:
            with open(os.path.join(root, SIGNATURE), "rb") as handle:
                signature_bytes = handle.read()
    except FileNotFoundError as exc:
        raise IntegrityError(f"{os.path.basename(exc.filename)} is missing in {root}: the release is not "
                             "signed") from None
    ok, output = verify_signature(manifest_bytes, signature_bytes, allowed_signers)
    if not ok:
        raise IntegrityError(f"signature invalid: {output}", [f"signature invalid: {output}"])
    try:
        manifest = parse_manifest(manifest_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        raise IntegrityError("MANIFEST is not UTF-8") from None
    problems = content_problems(root, manifest, release_id)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise IntegrityError(f"{problems[0]}{more}", problems)
    return manifest


def allowed_signers(public_keys):
    """The allowed_signers file trusting `public_keys` (ssh-ed25519 lines) for release signatures."""
    if isinstance(public_keys, str) or not isinstance(public_keys, (list, tuple)):
        raise ValueError("signing public keys: expected a list of 'ssh-ed25519 AAAA... comment' lines")
    lines = []
    for index, key in enumerate(public_keys):
        text = str(key).strip()
        if not _PUBLIC_KEY.match(text):
            raise ValueError(f"signing public key {index}: expected one line 'ssh-ed25519 AAAA... [comment]'")
        lines.append(f'{PRINCIPAL} namespaces="{NAMESPACE}" {text}\n')
    return "".join(lines)
