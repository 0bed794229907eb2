"""Release intake for any service: bundles, versions, --sha256 and downloads from a loopback server."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from orchestrator.config.loader import LoadedEnvironment, Project
from orchestrator.errors import ReleaseError, UsageError
from orchestrator.release.artifact import peek_release_id, prepare_release, staged_release
from orchestrator.tools.binary import version_in_output
from orchestrator.tools.download import DownloadError, is_url, s3_location

SCRIPT = "#!/bin/sh\necho 'ledgerd 2.3.4'\n"


@pytest.fixture
def ledger(project_copy: Path) -> LoadedEnvironment:
    path = project_copy / "inventories" / "dev" / "environment.yml"
    data = yaml.safe_load(path.read_text())
    data["service"].update(name="ledger", binary="ledgerd", metrics=False)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return Project(project_copy).load("dev")


def make_bundle(path: Path, files: dict[str, tuple[bytes, int]], *, links: tuple[str, ...] = ()) -> Path:
    """A .tar.gz with `files` ({name: (content, mode)}; a name ending in / is a directory)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, (content, mode) in files.items():
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mode = mode
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        for name in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return path


GOOD = {"ledgerd": (SCRIPT.encode(), 0o755), "migrations/": (b"", 0o755),
        "migrations/001_init.sql": (b"-- init\n", 0o644)}


@pytest.mark.parametrize(("output", "version"), [
    ("hello-service 0.1.0 (build dev)\n", "0.1.0"),
    ("ledgerd 0.1.0\n", "0.1.0"),
    ("tool v2.10.3-rc.1, built 2026\nCopyright 1.2.3\n", "2.10.3-rc.1"),
    ("no version here\n", None),
    ("", None),
])
def test_version_in_output_takes_the_last_version_word_of_the_first_line(output: str, version: str | None) -> None:
    assert version_in_output(output) == version


def test_a_bundle_is_staged_as_a_directory_with_the_archive_beside_it(ledger: LoadedEnvironment,
                                                                        tmp_path: Path) -> None:
    archive = make_bundle(tmp_path / "ledger.tar.gz", {**GOOD, "VERSION": (b"1.4.2\n", 0o644)})
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    release = prepare_release(ledger, archive)
    assert release.id == f"1.4.2-{digest[:12]}" and release.kind == "bundle"  # the VERSION file first
    assert release.directory == ledger.paths.artifact(release.id)
    assert release.binary == release.directory / "ledgerd" and release.binary.stat().st_mode & 0o100
    assert (release.directory / "migrations" / "001_init.sql").read_bytes() == b"-- init\n"
    assert release.archive == ledger.paths.artifacts / f"{release.id}.tar.gz"
    assert release.archive.read_bytes() == archive.read_bytes()
    assert release.sha256 == hashlib.sha256(SCRIPT.encode()).hexdigest()  # what the hosts verify
    assert staged_release(ledger, release.id) == release.__class__(**{**release.__dict__, "source": str(archive)})
    assert peek_release_id(archive) == release.id
    # --version wins over the VERSION file
    assert prepare_release(ledger, archive, version="9.9.9").id == f"9.9.9-{digest[:12]}"


def test_without_a_version_file_the_binary_says_its_version(ledger: LoadedEnvironment, tmp_path: Path) -> None:
    archive = make_bundle(tmp_path / "ledger.tgz", GOOD)
    assert prepare_release(ledger, archive).version == "2.3.4"
    binary = tmp_path / "ledgerd"
    binary.write_text(SCRIPT)
    binary.chmod(0o755)
    release = prepare_release(ledger, binary)
    assert release.version == "2.3.4" and release.kind == "binary" and release.binary.name == "ledgerd"
    quiet = tmp_path / "quiet"
    quiet.write_text("#!/bin/sh\nexit 3\n")
    quiet.chmod(0o755)
    assert prepare_release(ledger, quiet).version == "0.0.0"


@pytest.mark.parametrize(("files", "links", "message"), [
    ({"migrations/": (b"", 0o755)}, (), "no executable 'ledgerd' at its top level"),
    ({"ledgerd": (b"x", 0o644)}, (), "'ledgerd' is not executable"),
    ({**GOOD, "RELEASE": (b"x", 0o644)}, (), "RELEASE is reserved"),
    ({**GOOD, "../evil": (b"x", 0o644)}, (), "'..' is not allowed"),
    (GOOD, ("assets",), "is a symlink"),
])
def test_a_bundle_the_hosts_would_refuse_is_refused_here(ledger: LoadedEnvironment, tmp_path: Path,
                                                         files: dict[str, tuple[bytes, int]],
                                                         links: tuple[str, ...], message: str) -> None:
    archive = make_bundle(tmp_path / "bad.tar.gz", files, links=links)
    with pytest.raises(ReleaseError, match=message):
        prepare_release(ledger, archive)
    assert not any(p for p in ledger.paths.artifacts.glob("*") if not p.name.startswith("."))


def test_sha256_is_checked_for_files_and_required_for_urls(ledger: LoadedEnvironment, tmp_path: Path) -> None:
    archive = make_bundle(tmp_path / "ledger.tar.gz", GOOD)
    with pytest.raises(UsageError, match=r"is not the 0{64} given with --sha256"):
        prepare_release(ledger, archive, sha256="0" * 64)
    with pytest.raises(UsageError, match="a URL needs --sha256"):
        prepare_release(ledger, "https://127.0.0.1:9/ledger.tar.gz")
    with pytest.raises(UsageError, match="is not a sha256"):
        prepare_release(ledger, "https://127.0.0.1:9/ledger.tar.gz", sha256="abc")
    assert is_url("s3://bucket/k") and is_url("http://x/y") and not is_url("./x.tar.gz")
    assert s3_location("s3://releases/ledger/1.4.2.tar.gz") == ("releases", "ledger/1.4.2.tar.gz")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server of tmp_path/www: (base URL, directory)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_a_bundle_from_a_url_is_downloaded_checked_and_staged(ledger: LoadedEnvironment,
                                                             served: tuple[str, Path]) -> None:
    base, root = served
    archive = make_bundle(root / "ledger.tar.gz", {**GOOD, "VERSION": (b"1.4.2\n", 0o644)})
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    with pytest.raises(DownloadError, match=f"is not the {'1' * 64} given with --sha256"):
        prepare_release(ledger, f"{base}/ledger.tar.gz", sha256="1" * 64)
    assert not any(ledger.paths.root.joinpath("downloads").rglob("*.tar.gz"))  # nothing kept
    assert not ledger.paths.artifacts.exists() or not any(ledger.paths.artifacts.iterdir())
    with pytest.raises(DownloadError, match="answered 404"):
        prepare_release(ledger, f"{base}/missing.tar.gz", sha256=digest)
    release = prepare_release(ledger, f"{base}/ledger.tar.gz", sha256=digest.upper())
    assert release.id == f"1.4.2-{digest[:12]}" and release.source == f"{base}/ledger.tar.gz"
    assert release.archive is not None and release.archive.read_bytes() == archive.read_bytes()
