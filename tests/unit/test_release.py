"""Artifact intake: release ids, versions, cargo argv/messages, staging (pure logic + tmp files)."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest

from orchestrator.config.loader import Project
from orchestrator.errors import ExitStatus, UsageError
from orchestrator.files import sha256_file
from orchestrator.release.artifact import is_release_id, prepare_release, release_id, version_for_binary
from orchestrator.tools.cargo import DEFAULT_VERSION, cargo_argv, cargo_version, executables_from_messages


def _binary(path: Path, content: bytes = b"#!/bin/sh\necho hi\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(0o755)
    return path


def test_release_id_is_version_and_first_12_hex_of_sha256(tmp_path: Path) -> None:
    binary = _binary(tmp_path / "bin")
    digest = sha256_file(binary)
    assert digest == hashlib.sha256(binary.read_bytes()).hexdigest()
    assert release_id("1.2.3", digest) == f"1.2.3-{digest[:12]}"
    assert is_release_id(release_id("1.2.3", digest))
    assert not is_release_id("1.2.3")
    assert not is_release_id("../etc-0123456789ab")


def test_version_comes_from_the_cargo_project_two_levels_above_the_binary(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "Cargo.toml").write_text('[package]\nname = "x"\nversion = "2.5.0"\n')
    binary = _binary(tmp_path / "proj" / "target" / "release" / "x")
    assert version_for_binary(binary) == "2.5.0"
    assert version_for_binary(_binary(tmp_path / "loose" / "bin" / "x")) == DEFAULT_VERSION


def test_cargo_version_defaults_when_the_manifest_is_unreadable(tmp_path: Path) -> None:
    bad = tmp_path / "Cargo.toml"
    bad.write_text("[package\n")
    assert cargo_version(bad) == DEFAULT_VERSION
    assert cargo_version(tmp_path / "missing.toml") == DEFAULT_VERSION


def test_cargo_steps_are_offline_and_the_build_reports_json() -> None:
    test = cargo_argv(Path("/c/cargo"), "test", Path("/p/Cargo.toml"))
    build = cargo_argv(Path("/c/cargo"), "build", Path("/p/Cargo.toml"))
    assert test[:3] == ["/c/cargo", "test", "--offline"] and "--release" not in test
    assert build[:4] == ["/c/cargo", "build", "--release", "--offline"]
    assert "--message-format=json-render-diagnostics" in build
    assert build[build.index("--manifest-path") + 1] == "/p/Cargo.toml"


def test_executables_are_read_from_cargo_messages() -> None:
    lines = [
        json.dumps({"reason": "compiler-artifact", "executable": None}),
        "   Compiling x v0.1.0",
        json.dumps({"reason": "compiler-artifact", "executable": "/t/release/x"}),
        json.dumps({"reason": "build-finished", "success": True}),
        "{not json",
    ]
    assert executables_from_messages("\n".join(lines)) == [Path("/t/release/x")]


def test_a_binary_is_staged_under_the_service_name_with_a_release_file(project_copy: Path) -> None:
    loaded = Project(project_copy).load("dev")
    source = _binary(project_copy / "build" / "hello-service")
    release = prepare_release(loaded, source)
    staged = loaded.state_dir / "artifacts" / release.id / loaded.env.service.name
    assert release.binary == staged
    assert staged.read_bytes() == source.read_bytes()
    assert stat.S_IMODE(staged.stat().st_mode) == 0o755
    meta = json.loads((staged.parent / "RELEASE").read_text())
    assert meta["id"] == release.id and meta["sha256"] == sha256_file(source)
    # the same binary is the same release: staging again changes nothing
    again = prepare_release(loaded, source)
    assert again.id == release.id


def test_a_different_binary_is_a_different_release(project_copy: Path) -> None:
    loaded = Project(project_copy).load("dev")
    one = prepare_release(loaded, _binary(project_copy / "a" / "svc", b"one"))
    two = prepare_release(loaded, _binary(project_copy / "b" / "svc", b"two"))
    assert one.id != two.id


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda root: root / "missing", "no such file"),
        (lambda root: (root / "plain").mkdir() or root / "plain", "cargo project"),
        (lambda root: ((root / "noexec").write_text("x"), root / "noexec")[1], "not an executable"),
    ],
)
def test_bad_release_paths_are_bad_input(project_copy: Path, make, expected: str) -> None:
    loaded = Project(project_copy).load("dev")
    with pytest.raises(UsageError) as caught:
        prepare_release(loaded, make(project_copy))
    assert expected in caught.value.message
    assert caught.value.exit_status == ExitStatus.BAD_INPUT
    assert not (loaded.state_dir / "artifacts").exists()
