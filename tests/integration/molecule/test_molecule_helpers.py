"""The pure parts of tests.support.molecule_hosts (no hosts, no root): parsing, reservations,
the build cache key. The scenarios themselves run in test_molecule_scenarios.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.molecule_hosts import (
    SUBNET_QUIET_SECONDS,
    MoleculeHostError,
    Platform,
    marker_blocks,
    parse_host,
    source_hash,
)


def test_platform_parse_takes_name_and_groups() -> None:
    assert Platform.parse("app-1:app,web") == Platform("app-1", ("app", "web"))
    assert Platform.parse("mon-1") == Platform("mon-1", ())


def test_parse_host_needs_an_ip_address() -> None:
    assert parse_host("mon-1=10.214.3.10=monitoring") == ("mon-1", "10.214.3.10", ("monitoring",))
    with pytest.raises(MoleculeHostError, match="NAME=ADDRESS"):
        parse_host("mon-1=not-an-address=monitoring")


def test_a_marker_blocks_while_its_pid_lives_and_for_a_quiet_time_after_release() -> None:
    assert marker_blocks([str(os.getpid())])
    assert not marker_blocks(["999999999"])
    assert marker_blocks(["free", "1000"], now=1000 + SUBNET_QUIET_SECONDS - 1)
    assert not marker_blocks(["free", "1000"], now=1000 + SUBNET_QUIET_SECONDS + 1)
    assert not marker_blocks([])


def test_source_hash_follows_sources_and_features_only(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "Cargo.toml").write_text("[package]\nname = 'x'\n")
    (tmp_path / "src" / "main.rs").write_text("fn main() {}\n")
    first = source_hash(tmp_path, [])
    (tmp_path / "README.md").write_text("not a source\n")
    assert source_hash(tmp_path, []) == first
    assert source_hash(tmp_path, ["broken"]) != first
    (tmp_path / "src" / "main.rs").write_text("fn main() { println!(); }\n")
    assert source_hash(tmp_path, []) != first
