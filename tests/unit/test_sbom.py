"""The SBOM of a release: crates from `cargo metadata`, checksums from Cargo.lock, CycloneDX 1.6 JSON.

The metadata here is written by hand in cargo's shape; tests/integration/gates runs cargo on the
example service.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from orchestrator.release.sbom import CRATES_IO, build_sbom, crates_from_metadata, crates_in_sbom

ROOT = "path+file:///src/hello#hello-service@0.2.0"
SERDE = "registry+https://github.com/rust-lang/crates.io-index#serde@1.0.200"
CC = "registry+https://github.com/rust-lang/crates.io-index#cc@1.1.0"
PROPTEST = "registry+https://github.com/rust-lang/crates.io-index#proptest@1.4.0"
HELPER = "path+file:///src/helper#helper@0.1.0"

LOCK = f"""
version = 4

[[package]]
name = "hello-service"
version = "0.2.0"

[[package]]
name = "serde"
version = "1.0.200"
source = "{CRATES_IO}"
checksum = "{'1' * 64}"

[[package]]
name = "cc"
version = "1.1.0"
source = "{CRATES_IO}"
checksum = "{'2' * 64}"

[[package]]
name = "proptest"
version = "1.4.0"
source = "{CRATES_IO}"
checksum = "{'3' * 64}"
"""


def package(pid: str, name: str, version: str, source: str | None) -> dict[str, Any]:
    return {"id": pid, "name": name, "version": version, "source": source}


def dep(pid: str, name: str, kind: str | None) -> dict[str, Any]:
    return {"name": name, "pkg": pid, "dep_kinds": [{"kind": kind, "target": None}]}


METADATA = {
    "packages": [package(ROOT, "hello-service", "0.2.0", None), package(SERDE, "serde", "1.0.200", CRATES_IO),
                 package(CC, "cc", "1.1.0", CRATES_IO), package(PROPTEST, "proptest", "1.4.0", CRATES_IO),
                 package(HELPER, "helper", "0.1.0", None)],
    "resolve": {"root": ROOT, "nodes": [
        {"id": ROOT, "deps": [dep(SERDE, "serde", None), dep(CC, "cc", "build"), dep(PROPTEST, "proptest", "dev"),
                              dep(HELPER, "helper", None)]},
        {"id": HELPER, "deps": [dep(SERDE, "serde", None)]},
        {"id": SERDE, "deps": []}, {"id": CC, "deps": []}, {"id": PROPTEST, "deps": []},
    ]},
    "workspace_root": "/src/hello",
}


def test_the_release_crates_are_the_normal_and_build_dependencies_with_their_checksums() -> None:
    crates = crates_from_metadata(METADATA, LOCK)
    assert [(c.name, c.version, c.source, c.root) for c in crates] == [
        ("hello-service", "0.2.0", "path", True), ("cc", "1.1.0", "crates.io", False),
        ("helper", "0.1.0", "path", False), ("serde", "1.0.200", "crates.io", False)]
    by_name = {c.name: c for c in crates}
    assert "proptest" not in by_name  # a dev-dependency is not part of the release
    assert (by_name["serde"].sha256, by_name["cc"].sha256, by_name["helper"].sha256) == ("1" * 64, "2" * 64, None)
    assert by_name["serde"].purl == "pkg:cargo/serde@1.0.200" and by_name["helper"].purl is None
    assert by_name["hello-service"].dependencies == ("cc@1.1.0", "helper@0.1.0", "serde@1.0.200")
    assert by_name["helper"].dependencies == ("serde@1.0.200",)


def test_the_document_is_valid_cyclonedx_and_lists_the_crates_back() -> None:
    crates = crates_from_metadata(METADATA, LOCK)
    text = build_sbom(crates, release_id="0.2.0-0123456789ab", binary_sha256="f" * 64, env="dev",
                      timestamp=datetime(2026, 12, 1, tzinfo=UTC))
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    data = json.loads(text)
    assert data["bomFormat"] == "CycloneDX" and data["specVersion"] == "1.6"
    assert data["metadata"]["component"]["name"] == "hello-service"
    listed = crates_in_sbom(text)
    assert [(c["name"], c["version"], c["root"]) for c in listed] == [
        ("hello-service", "0.2.0", True), ("cc", "1.1.0", False), ("helper", "0.1.0", False),
        ("serde", "1.0.200", False)]
    assert listed[3]["sha256"] == "1" * 64 and listed[3]["purl"] == "pkg:cargo/serde@1.0.200"
    graph = {d["ref"]: sorted(d.get("dependsOn", [])) for d in data["dependencies"]}
    assert graph["hello-service@0.2.0"] == ["cc@1.1.0", "helper@0.1.0", "serde@1.0.200"]
    # the same release gets the same serial number; another release another one
    again = build_sbom(crates, release_id="0.2.0-0123456789ab", binary_sha256="f" * 64, env="dev")
    other = build_sbom(crates, release_id="0.2.1-0123456789ab", binary_sha256="f" * 64, env="dev")
    assert json.loads(again)["serialNumber"] == data["serialNumber"] != json.loads(other)["serialNumber"]
