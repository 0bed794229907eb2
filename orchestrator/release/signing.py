"""Signed releases: each environment's signing key, the signed manifest of a release, its record.

Each environment signs its releases with an ed25519 key: `release.signing_key` in the environment
file (a key kept elsewhere: OpenSSH format, no passphrase, mode 0600), else
`.orchestrate/ENV/release_signing_key`, created with ssh-keygen on first use. Only its public half
and signatures ever leave the controller.

A release is sealed when it is staged: its MANIFEST (canonical JSON: the release id, version, the
sha256 of every file of the staged release directory, the SBOM's sha256) is signed with
`ssh-keygen -Y sign -n orchestrate-release`, and the record is kept in
`.orchestrate/ENV/releases/<id>/` (release.json, MANIFEST, MANIFEST.sig, sbom.cdx.json). A deploy
hands the manifest and signature to roles/rust_service (`rust_service_release_manifest` and
`_signature`) and every switch to the release - deploy, rollback, restore, heal - needs them to
verify on the host with the public keys the role installs (`rust_service_signing_public_keys`: the
signing key's own, then `release.trusted_keys`, e.g. the previous key during a rotation).

The manifest format is the one the role's module_utils/rust_service_bundle.py checks; it lists
every file of the release directory except MANIFEST, MANIFEST.sig and RELEASE. It works on a
staged directory, whatever it holds (today one executable).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import ConfigError, OrchestratorError, UsageError
from orchestrator.files import atomic_write, file_lock, sha256_file
from orchestrator.tools import ssh_keygen

MANIFEST = "MANIFEST"
SIGNATURE = "MANIFEST.sig"
RECORD = "release.json"
#: the release's CycloneDX SBOM (orchestrator.release.sbom), when it was built from a cargo project
SBOM_FILE = "sbom.cdx.json"
#: top-level names of a release directory that its manifest does not list (the role writes RELEASE)
RESERVED = frozenset((MANIFEST, SIGNATURE, "RELEASE"))
#: the signature namespace, also the principal of the hosts' allowed signers file
NAMESPACE = "orchestrate-release"
MANIFEST_FORMAT = 1


class SigningError(OrchestratorError):
    """The release signing key cannot be used, or a staged release does not match its signed manifest."""


@dataclass(frozen=True)
class SigningKey:
    """An environment's release signing key (the private part stays where it is)."""

    path: Path
    public: str
    """`ssh-ed25519 AAAA... comment`: what the hosts trust."""
    configured: bool
    """Given as release.signing_key (else the environment's own key under .orchestrate/ENV/)."""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)


def fingerprint(public_key: str) -> str:
    """OpenSSH's `SHA256:...` fingerprint of an `ssh-ed25519 AAAA...` line (what `ssh-keygen -l` shows)."""
    blob = base64.b64decode(public_key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _key_material(public_key: str) -> str:
    return " ".join(public_key.split()[:2])


def _public_of(path: Path, comment: str) -> str:
    """The public line of the private key at `path`; ValueError naming what is wrong with it."""
    # imported here: a rollback or a status never reads a private key, and cryptography's load is
    # a good part of a short command's start
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_ssh_private_key

    try:
        key = load_ssh_private_key(path.read_bytes(), password=None)
    except TypeError:
        raise ValueError("the key is protected by a passphrase; the controller signs unattended: "
                         "use a key without one, kept 0600") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not an OpenSSH private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"an {type(key).__name__.removesuffix('PrivateKey') or 'unknown'} key; release keys "
                         "are ed25519 (ssh-keygen -t ed25519)")
    return key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode() + f" {comment}"


def _refuse_open_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ValueError(f"mode {mode:04o} lets other users read it; run `chmod 600 {path}`")


def signing_key(loaded: LoadedEnvironment) -> SigningKey:
    """The signing key of `loaded`: release.signing_key, or the environment's own one (created on first use).

    A configured key that is missing, readable by others, passphrase-protected or not ed25519 is a
    ConfigError naming the environment file's line (exit 2).
    """
    configured = loaded.env.release.signing_key
    comment = f"{NAMESPACE}@{loaded.name}"
    if configured:
        path = Path(configured).expanduser()
        path = path if path.is_absolute() else loaded.project_dir / path
        try:
            if not path.is_file():
                raise ValueError(f"{path} does not exist (create one with `ssh-keygen -t ed25519 -N '' -f {path}`)")
            _refuse_open_mode(path)
            return SigningKey(path=path, public=_public_of(path, comment), configured=True)
        except (ValueError, OSError) as exc:
            raise ConfigError(str(exc), path=str(loaded.path), line=loaded.line_of("release", "signing_key"),
                              field="release.signing_key") from None
    path = loaded.paths.signing_key
    public_file = path.with_name(path.name + ".pub")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_name(f".{path.name}.lock")):
            if not path.exists():
                public_file.unlink(missing_ok=True)
                ssh_keygen.generate_ed25519(path, comment)
    try:
        _refuse_open_mode(path)
        public = _public_of(path, comment)
    except (ValueError, OSError) as exc:
        raise SigningError(f"release signing key {path}: {exc}",
                           hint="move it away to have a new one created (see README: key rotation)") from None
    if not public_file.exists() or _key_material(public_file.read_text()) != _key_material(public):
        atomic_write(public_file, public + "\n", mode=0o644)
    return SigningKey(path=path, public=public, configured=False)


def signer_public_key(loaded: LoadedEnvironment) -> str:
    """The signing key's public line. A configured key whose private part is not on this controller
    (rollbacks and heal only verify) is read from its `.pub` beside the path."""
    configured = loaded.env.release.signing_key
    if configured:
        path = Path(configured).expanduser()
        private = path if path.is_absolute() else loaded.project_dir / path
        public_file = private.with_name(private.name + ".pub")
        if not private.exists() and public_file.is_file():
            line = public_file.read_text(encoding="utf-8").strip()
            if line.startswith("ssh-ed25519 "):
                return line
    return signing_key(loaded).public


def trusted_public_keys(loaded: LoadedEnvironment, key: SigningKey | None = None) -> list[str]:
    """The public keys the hosts accept: the signing key's, then release.trusted_keys (no repeats)."""
    signer = key.public if key is not None else signer_public_key(loaded)
    found: dict[str, str] = {_key_material(signer): signer}
    for line in loaded.env.release.trusted_keys:
        found.setdefault(_key_material(line), line)
    return list(found.values())


def signing_vars(loaded: LoadedEnvironment) -> dict[str, Any]:
    """roles/rust_service's input for every switch (deploy, rollback, restore, heal): the trusted keys."""
    return {"rust_service_signing_public_keys": trusted_public_keys(loaded)}


# --- manifests and release records -------------------------------------------------------------


def manifest_text(files: Mapping[str, str], release_id: str, version: str, sbom_sha256: str | None) -> str:
    """The canonical MANIFEST (sorted keys, no spaces, UTF-8, one trailing newline): what is signed."""
    data = {"files": dict(files), "format": MANIFEST_FORMAT, "id": release_id, "sbom_sha256": sbom_sha256,
            "version": version}
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def release_files(directory: Path) -> dict[str, str]:
    """{relative path: sha256} of every file of the release directory `directory` but the RESERVED
    top-level names; a symlink or special file is refused (a host would refuse it too)."""
    files: dict[str, str] = {}
    for folder, dirs, names in os.walk(directory, followlinks=False):
        base = Path(folder)
        for name in sorted(dirs + names):
            path = base / name
            relative = path.relative_to(directory).as_posix()
            if base == directory and name in RESERVED:
                continue
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise SigningError(f"{path}: a release holds regular files and directories only")
            files[relative] = sha256_file(path)
    if not files:
        raise SigningError(f"{directory} holds no file to release")
    return dict(sorted(files.items()))


@dataclass(frozen=True)
class ReleaseRecord:
    """A sealed release as kept in .orchestrate/ENV/releases/<id>/."""

    directory: Path
    data: dict[str, Any]
    """release.json: id, version, source, sealed, signer, signer_fingerprint, files, sbom, sbom_sha256."""
    manifest: str
    signature: str

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def files(self) -> dict[str, str]:
        return dict(json.loads(self.manifest)["files"])

    @property
    def sbom(self) -> Path | None:
        name = self.data.get("sbom")
        return self.directory / str(name) if name else None

    def role_vars(self) -> dict[str, Any]:
        """roles/rust_service's inputs of a deploy of this release: its manifest and signature."""
        return {"rust_service_release_manifest": self.manifest, "rust_service_release_signature": self.signature}

    def as_dict(self) -> dict[str, Any]:
        return {**self.data, "directory": str(self.directory)}


def read_record(loaded: LoadedEnvironment, release_id: str) -> ReleaseRecord | None:
    """The record of `release_id`, or None when it was never sealed (or its sealing did not finish)."""
    directory = loaded.paths.release(release_id)
    try:
        data = json.loads((directory / RECORD).read_text(encoding="utf-8"))
        manifest = (directory / MANIFEST).read_text(encoding="utf-8")
        signature = (directory / SIGNATURE).read_text(encoding="ascii")
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return ReleaseRecord(directory=directory, data=data, manifest=manifest, signature=signature)


@dataclass(frozen=True)
class Staged:
    """What sealing needs of a staged release."""

    id: str
    version: str
    directory: Path
    """The staged release directory: exactly the files a host's releases/<id>/ will hold."""
    source: Path | str


def seal(loaded: LoadedEnvironment, staged: Staged, *, sbom: Callable[[], str] | None = None) -> ReleaseRecord:
    """Sign the manifest of `staged` and record it; `sbom` makes the release's SBOM document.

    Called when a release is staged. The record of a release staged before is kept as it is when it
    still describes the same files and signer, SBOM included (a repeat deploy changes nothing on the
    hosts); `sbom` is called only for a release that has none recorded yet.
    """
    key = signing_key(loaded)
    directory = loaded.paths.release(staged.id)
    directory.mkdir(parents=True, exist_ok=True)
    with file_lock(directory / ".lock"):
        previous = read_record(loaded, staged.id)
        files = release_files(staged.directory)
        sbom_name, sbom_sha256 = None, None
        if previous is not None and previous.sbom is not None and previous.sbom.is_file():
            sbom_name, sbom_sha256 = previous.sbom.name, sha256_file(previous.sbom)
        elif sbom is not None:
            document = sbom()
            atomic_write(directory / SBOM_FILE, document)
            sbom_name, sbom_sha256 = SBOM_FILE, hashlib.sha256(document.encode("utf-8")).hexdigest()
        manifest = manifest_text(files, staged.id, staged.version, sbom_sha256)
        if (previous is not None and previous.manifest == manifest
                and _key_material(str(previous.data.get("signer", ""))) == _key_material(key.public)):
            return previous
        return _write_record(directory, key, staged, manifest, files, sbom_name, sbom_sha256, previous)


def _write_record(directory: Path, key: SigningKey, staged: Staged, manifest: str, files: Mapping[str, str],
                  sbom_name: str | None, sbom_sha256: str | None, previous: ReleaseRecord | None) -> ReleaseRecord:
    signature = ssh_keygen.sign(key.path, NAMESPACE, manifest.encode("utf-8"))
    data = {
        "id": staged.id, "version": staged.version, "source": str(staged.source),
        "staged": str(staged.directory),
        "sealed": (previous.data.get("sealed") if previous else None) or datetime.now(UTC).isoformat(),
        "signed": datetime.now(UTC).isoformat(),
        "signer": key.public, "signer_fingerprint": key.fingerprint,
        "files": dict(files), "sbom": sbom_name, "sbom_sha256": sbom_sha256,
    }
    # release.json last: a record is complete once it is there
    (directory / RECORD).unlink(missing_ok=True)
    atomic_write(directory / MANIFEST, manifest)
    atomic_write(directory / SIGNATURE, signature)
    atomic_write(directory / RECORD, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return ReleaseRecord(directory=directory, data=data, manifest=manifest, signature=signature)


def sealed_for_shipping(loaded: LoadedEnvironment, staged: Staged) -> ReleaseRecord:
    """The record to ship `staged` with, checked against the staged files first.

    A staged file that differs from the signed manifest refuses the release (SigningError naming the
    file) before any host is touched; a release staged before signing existed is sealed now; one
    signed by a key that is no longer the signing key (a rotation) is signed again.
    """
    previous = read_record(loaded, staged.id)
    if previous is not None:
        files = release_files(staged.directory)
        recorded = previous.files
        changed = sorted(p for p in set(files) | set(recorded) if files.get(p) != recorded.get(p))
        if changed:
            what = ", ".join(f"{p} ({_difference(p, files, recorded)})" for p in changed[:5])
            raise SigningError(f"release {staged.id}: the staged files in {staged.directory} differ from its "
                               f"signed manifest: {what}; nothing was shipped",
                               hint=f"stage it again (deploy it from its source), or remove {previous.directory}")
    return seal(loaded, staged)


def _difference(path: str, files: Mapping[str, str], recorded: Mapping[str, str]) -> str:
    if path not in files:
        return "missing"
    return "not in the manifest" if path not in recorded else "sha256 differs"


def recorded_releases(loaded: LoadedEnvironment) -> list[str]:
    """Ids of the releases sealed for `loaded`, oldest first."""
    root = loaded.paths.releases
    records = [p.parent for p in root.glob(f"*/{RECORD}")] if root.is_dir() else []
    return [p.name for p in sorted(records, key=lambda p: (p.joinpath(RECORD).stat().st_mtime, p.name))]


def require_record(loaded: LoadedEnvironment, release_id: str) -> ReleaseRecord:
    """The record of `release_id`; UsageError (exit 2) listing the recorded releases when there is none."""
    record = read_record(loaded, release_id)
    if record is None:
        known = recorded_releases(loaded)
        raise UsageError(f"no release {release_id} recorded for {loaded.name} in {loaded.paths.releases}",
                         hint=f"recorded: {', '.join(known[-10:])}" if known else
                         "releases are recorded when `up` or `deploy` stages them")
    return record
