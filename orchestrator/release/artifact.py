"""Artifact intake: turn `--release` into a staged, content-addressed release.

`--release` is one of

- a built binary (an executable file);
- a cargo project directory, tested (`cargo test --offline`) and built (`cargo build --release
  --offline`) first; a failure of either refuses the release before any host is touched;
- a bundle, a `.tar.gz` (or `.tgz`) whose top level holds the executable (`service.binary`) and
  the files it needs (orchestrator.release.bundle);
- an `https://`, `http://` or `s3://` URL of a binary or a bundle, with `--sha256` (required):
  the download is refused unless its sha256 is that one, before anything else happens.

The release id is deterministic, `<version>-<first 12 hex of the sha256>` of the binary (of the
archive for a bundle), so the same artifact deployed twice is the same release and the second
deploy is a no-op. The version is the first of: the `--version` option, the bundle's `VERSION`
file, what `BINARY --version` prints (the last word of its first line that looks like a version),
the Cargo.toml of the project a binary was built in, else 0.0.0.

A release is staged as a directory `.orchestrate/<env>/artifacts/<id>/` holding the executable
(named `service.binary`) or the bundle's files, next to a `RELEASE` file (json: id, version,
sha256 of the executable, source, binary, archive); a bundle's archive itself, shipped to the
hosts as it is, is kept beside it as `artifacts/<id>.tar.gz`.

The staged release is then sealed (orchestrator.release.signing): its signed manifest, and for a
cargo project its SBOM (orchestrator.release.sbom), are recorded under
`.orchestrate/<env>/releases/<id>/`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import UsageError
from orchestrator.files import sha256_file
from orchestrator.ids import is_release_id, is_version, shown
from orchestrator.release import bundle
from orchestrator.tools.binary import reported_version
from orchestrator.tools.cargo import DEFAULT_VERSION, build_only, build_project, cargo_version
from orchestrator.tools.download import download, is_url, url_file_name

_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")


#: the staged release's record, beside its files
RECORD = "RELEASE"


LineSink = Callable[[str], None]


@dataclass(frozen=True)
class Release:
    """A staged release, ready to ship."""

    id: str
    version: str
    sha256: str
    """sha256 of the executable (inside the bundle for a bundle): what the hosts verify."""
    binary: Path
    """The staged executable (named service.binary), inside the staged release directory."""
    source: Path | str
    """What the operator passed as --release (a path or a URL)."""
    archive: Path | None = None
    """The staged bundle (.tar.gz) that is shipped to the hosts; None for a binary."""

    @property
    def directory(self) -> Path:
        """The staged release directory (.orchestrate/ENV/artifacts/<id>/)."""
        return self.binary.parent

    @property
    def kind(self) -> str:
        """binary or bundle."""
        return "bundle" if self.archive is not None else "binary"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "sha256": self.sha256, "kind": self.kind,
                "binary": str(self.binary), "archive": str(self.archive) if self.archive else None,
                "source": str(self.source)}


def release_id(version: str, sha256: str) -> str:
    """`<version>-<first 12 hex of sha256>`; UsageError when `version` cannot be part of an id.

    The id becomes a directory on the controller and on every host: a version such as
    `1.0/../../x` or one holding Jinja or a newline is refused before anything is staged.
    """
    rid = f"{version}-{sha256[:12]}"
    if not is_version(version) or not is_release_id(rid):
        raise UsageError(f"version {shown(version)} cannot be part of a release id: expected letters, digits "
                         "and . + _ - (at most 64, starting with a letter or digit), such as 1.4.0")
    return rid


def check_version(version: str) -> str:
    """`version` when it can be part of a release id (the --version option); else UsageError."""
    if not is_version(version):
        raise UsageError(f"--version {version!r} is not a version such as 1.4.2 (letters, digits and . + _ -, "
                         "starting with a letter or digit)")
    return version


def check_sha256(text: str) -> str:
    """`text` lower-cased when it is 64 hex digits (the --sha256 option); else UsageError."""
    if not _SHA256_RE.fullmatch(text):
        raise UsageError(f"--sha256 {text!r} is not a sha256 (64 hex digits, as `sha256sum` prints)")
    return text.lower()


def cargo_manifest_of(binary: Path) -> Path | None:
    """The Cargo.toml of the project `binary` was built in, if any.

    A cargo build puts the binary at `<project>/target/<profile>/<name>`, so the manifest is
    three directories up from the file (two above its directory).
    """
    parents = binary.resolve().parents
    if len(parents) > 2 and (parents[2] / "Cargo.toml").is_file():
        return parents[2] / "Cargo.toml"
    return None


def version_for_binary(binary: Path, *, asked: str | None = None) -> str:
    """Version of a prebuilt binary: `asked` (--version), what `BINARY --version` prints, the
    Cargo.toml of the project it was built in, else DEFAULT_VERSION."""
    if asked:
        return check_version(asked)
    reported = reported_version(binary) if os.access(binary, os.X_OK) else None
    if reported and is_version(reported):
        return reported
    manifest = cargo_manifest_of(binary)
    return cargo_version(manifest) if manifest is not None else DEFAULT_VERSION


def fetch(loaded: LoadedEnvironment, url: str, sha256: str | None) -> Path:
    """The release at `url`, downloaded once into .orchestrate/ENV/downloads/<sha256>/ and checked
    against `sha256`; a mismatch raises DownloadError and leaves nothing there."""
    if not sha256:
        raise UsageError(f"--release {url}: a URL needs --sha256 (the sha256 of the file, as `sha256sum` prints)")
    expected = check_sha256(sha256)
    name = url_file_name(url) or "release"
    if name in (".", "..") or "/" in name:
        name = "release"
    dest = loaded.paths.download(expected) / name
    if dest.is_file() and sha256_file(dest) == expected:
        return dest
    from orchestrator.fleet.aws import aws_endpoint  # boto's settings: only a download reads them

    download(url, dest, expected_sha256=expected, s3_endpoint=aws_endpoint())
    return dest


def prepare_release(loaded: LoadedEnvironment, path: Path | str, *, sha256: str | None = None,
                    version: str | None = None, on_output: LineSink | None = None,
                    build_env: dict[str, str] | None = None, run_tests: bool = True) -> Release:
    """Fetch (URL), build (cargo project), check (bundle), hash and stage a release for `loaded`.

    `sha256` (--sha256) is required for a URL and checked for a file too; `version` (--version)
    overrides every other source of the version. Bad paths and options are a UsageError (exit 2);
    a failing build or test run, a bad bundle or a download that is not what `sha256` says is a
    ReleaseError/DownloadError (exit 1). Nothing on a host changes either way. `run_tests=False`
    when the release gates ran the project's tests already (`up`). The staged release is sealed.
    """
    if version is not None:
        check_version(version)
    source: Path | str = path
    if isinstance(path, str) and is_url(path):
        local = fetch(loaded, path, sha256)
    else:
        local = Path(path).expanduser()
        source = local
        if not local.exists():
            raise UsageError(f"--release {local}: no such file or directory")
        if sha256 is not None:
            expected = check_sha256(sha256)
            if local.is_dir():
                raise UsageError(f"--release {local}: --sha256 is for a file or a URL, not a cargo project")
            actual = sha256_file(local)
            if actual != expected:
                raise UsageError(f"--release {local}: sha256 {actual} is not the {expected} given with --sha256; "
                                 "release refused, nothing deployed")
    if local.is_dir():
        manifest = local / "Cargo.toml"
        if not manifest.is_file():
            raise UsageError(f"--release {local}: a directory must be a cargo project (no Cargo.toml in it)")
        found = version or cargo_version(manifest)
        release_id(found, "0" * 12)  # a version that cannot be part of an id is refused before cargo runs
        binary = build_project(local, on_output=on_output, env=build_env, test=run_tests)
        digest = sha256_file(binary)
        staged = stage(loaded, binary, Release(id=release_id(found, digest), version=found, sha256=digest,
                                               binary=binary, source=source))
        _seal(loaded, staged, project=local)
        return staged
    if bundle.is_bundle_name(local.name):
        staged = stage_bundle(loaded, local, source=source, version=version)
        _seal(loaded, staged, project=None)
        return staged
    if not os.access(local, os.X_OK):
        if local != source:  # downloaded: the mode is ours to set
            local.chmod(0o755)
        else:
            raise UsageError(f"--release {local}: not an executable file (chmod +x, or pass the cargo project or "
                             "a .tar.gz bundle)")
    digest = sha256_file(local)
    found = version_for_binary(local, asked=version)
    staged = stage(loaded, local, Release(id=release_id(found, digest), version=found, sha256=digest,
                                          binary=local, source=source))
    _seal(loaded, staged, project=None)
    return staged


def _write_record(directory: Path, release: Release) -> None:
    meta = {"id": release.id, "version": release.version, "sha256": release.sha256, "source": str(release.source),
            "binary": release.binary.name, "archive": release.archive.name if release.archive else None}
    tmp = directory / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(directory / RECORD)


def stage(loaded: LoadedEnvironment, binary: Path, release: Release) -> Release:
    """Copy `binary` to .orchestrate/<env>/artifacts/<id>/<service.binary> (mode 0755) with a RELEASE file."""
    target_dir = loaded.paths.artifact(release.id)
    target = target_dir / loaded.env.service.effective_binary
    target_dir.mkdir(parents=True, exist_ok=True)
    if not (target.exists() and sha256_file(target) == release.sha256):
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(binary, tmp)
        tmp.chmod(0o755)
        tmp.replace(target)
    staged = Release(id=release.id, version=release.version, sha256=release.sha256, binary=target,
                     source=release.source)
    _write_record(target_dir, staged)
    return staged


def stage_bundle(loaded: LoadedEnvironment, archive: Path, *, source: Path | str, version: str | None) -> Release:
    """Check and unpack the bundle `archive` into .orchestrate/<env>/artifacts/<id>/ and keep the
    archive beside it as <id>.tar.gz (what the hosts receive)."""
    name = loaded.env.service.effective_binary
    digest = sha256_file(archive)
    artifacts = loaded.paths.artifacts
    scratch = artifacts / f".bundle-{digest[:12]}"
    contents = bundle.unpack(archive, scratch, name)
    try:
        found = version or contents.version or version_for_binary(scratch / name)
        rid = release_id(check_version(found), digest)
        target_dir = loaded.paths.artifact(rid)
        if target_dir.exists():
            shutil.rmtree(target_dir)
        scratch.rename(target_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    staged_archive = artifacts / f"{rid}.tar.gz"
    if not (staged_archive.exists() and sha256_file(staged_archive) == digest):
        tmp = staged_archive.with_name(f".{staged_archive.name}.tmp")
        shutil.copyfile(archive, tmp)
        tmp.chmod(0o644)
        tmp.replace(staged_archive)
    binary = target_dir / name
    staged = Release(id=rid, version=found, sha256=sha256_file(binary), binary=binary, source=source,
                     archive=staged_archive)
    _write_record(target_dir, staged)
    return staged


def staged_release(loaded: LoadedEnvironment, rid: str) -> Release | None:
    """The release staged earlier as `rid` (its RELEASE record and files), or None when it is gone
    or incomplete (e.g. a resumed run whose artifacts were cleaned)."""
    directory = loaded.paths.artifact(rid)
    try:
        meta = json.loads((directory / RECORD).read_text())
        binary = directory / str(meta.get("binary") or loaded.env.service.effective_binary)
        archive = directory.parent / str(meta["archive"]) if meta.get("archive") else None
        release = Release(id=str(meta["id"]), version=str(meta["version"]), sha256=str(meta["sha256"]),
                          binary=binary, source=str(meta.get("source", "")), archive=archive)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if release.id != rid or not binary.is_file() or (archive is not None and not archive.is_file()):
        return None
    return release


def _seal(loaded: LoadedEnvironment, release: Release, *, project: Path | None) -> None:
    """Sign the staged release's manifest, with the SBOM of the cargo project it was built from."""
    from orchestrator.release.signing import Staged, seal

    def sbom() -> str:
        # CycloneDX's library takes a tenth of a second to load: only for a cargo project's SBOM
        from orchestrator.release.sbom import sbom_for_project

        assert project is not None
        return sbom_for_project(project, release_id=release.id, binary_sha256=release.sha256, env=loaded.name)

    seal(loaded, Staged(id=release.id, version=release.version, directory=release.binary.parent,
                        source=release.source), sbom=sbom if project is not None else None)


def peek_release_id(path: Path | str, *, sha256: str | None = None, version: str | None = None) -> str:
    """Release id of `path` without running its tests: an incremental cargo build, then sha256.

    Used only to decide whether a run would change anything; a real deploy still tests. A URL's
    and a bundle's version are what the `--version` option or the bundle's VERSION say (0.0.0
    otherwise): a peek that misses the binary's own version only costs a full run.
    """
    if isinstance(path, str) and is_url(path):
        if not sha256:
            raise UsageError(f"--release {path}: a URL needs --sha256")
        return release_id(check_version(version) if version else DEFAULT_VERSION, check_sha256(sha256))
    path = Path(path)
    if path.is_dir():
        manifest = path / "Cargo.toml"
        if not manifest.exists():
            raise UsageError(f"--release {path}: a directory must be a cargo project (no Cargo.toml in it)")
        return release_id(version or cargo_version(manifest), sha256_file(build_only(path)))
    if bundle.is_bundle_name(path.name):
        return release_id(version or bundle.peek_version(path) or DEFAULT_VERSION, sha256_file(path))
    return release_id(version_for_binary(path, asked=version), sha256_file(path))


def built_at(release: Release) -> datetime:
    """When `release`'s binary was built: the modification time of the binary handed in, or for a
    cargo project of the staged copy, made right after its build (the start of its lead time)."""
    path = release.source if isinstance(release.source, Path) and release.source.is_file() else release.binary
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)
