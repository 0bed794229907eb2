"""The software bill of materials of a release built from a cargo project: CycloneDX JSON.

What went into the binary comes from `cargo metadata` (the resolved graph: every crate reachable
from the project through normal and build dependencies; dev-dependencies do not go into a release),
each crate's checksum from the project's Cargo.lock (the sha256 of the `.crate` archive a registry
served). The document is written with cyclonedx-python-lib, the CycloneDX project's own library:
the project's crate is `metadata.component`, every other crate a component with its purl
(`pkg:cargo/NAME@VERSION` for crates.io), hash and place in the dependency graph.

It is stored with the release (`.orchestrate/ENV/releases/<id>/sbom.cdx.json`, see
orchestrator.release.signing) and its sha256 is part of the signed manifest.
"""

from __future__ import annotations

import json
import tomllib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.tool import ToolRepository
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from orchestrator import __version__
from orchestrator.errors import ReleaseError
from orchestrator.tools.cargo import metadata as cargo_metadata

CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"

#: the dependency kinds that put a crate into the binary or its build (not dev-dependencies)
_RELEASE_KINDS = (None, "build")


@dataclass(frozen=True)
class Crate:
    """One crate of a release."""

    name: str
    version: str
    source: str
    """`crates.io`, `path` (a local crate) or cargo's source string (another registry, a git URL)."""
    sha256: str | None = None
    """Cargo.lock's checksum (registry crates only)."""
    root: bool = False
    """The project itself."""
    dependencies: tuple[str, ...] = ()
    """bom-refs of the crates this one depends on (normal and build dependencies)."""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def purl(self) -> str | None:
        return PackageURL(type="cargo", name=self.name, version=self.version).to_string() \
            if self.source == "crates.io" else None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "source": self.source, "sha256": self.sha256,
                "purl": self.purl, "root": self.root}


def lock_checksums(lock_text: str) -> dict[tuple[str, str, str], str]:
    """(name, version, source) -> checksum of every package Cargo.lock lists with one."""
    data = tomllib.loads(lock_text)
    found = {}
    for package in data.get("package") or []:
        if package.get("checksum") and package.get("source"):
            found[(str(package["name"]), str(package["version"]), str(package["source"]))] = str(package["checksum"])
    return found


def _source(source: str | None) -> str:
    if source is None:
        return "path"
    return "crates.io" if source == CRATES_IO else source


def crates_from_metadata(metadata: Mapping[str, Any], lock_text: str | None) -> list[Crate]:
    """The crates of the release of the project `metadata` (cargo metadata's JSON) describes, the project
    first, then the crates it reaches through normal and build dependencies, sorted by name and version."""
    resolve = metadata.get("resolve") or {}
    root_id = resolve.get("root")
    if not root_id:
        raise ReleaseError("cargo metadata names no root package (a virtual workspace?): pass the crate's own "
                           "directory as --release")
    packages = {str(p["id"]): p for p in metadata.get("packages") or []}
    nodes = {str(n["id"]): n for n in resolve.get("nodes") or []}
    checksums = lock_checksums(lock_text) if lock_text else {}

    def release_deps(node_id: str) -> list[str]:
        deps = []
        for dep in (nodes.get(node_id) or {}).get("deps") or []:
            kinds = [k.get("kind") for k in dep.get("dep_kinds") or [{"kind": None}]]
            if any(kind in _RELEASE_KINDS for kind in kinds):
                deps.append(str(dep["pkg"]))
        return deps

    reached: dict[str, list[str]] = {}
    pending = [str(root_id)]
    while pending:
        current = pending.pop()
        if current in reached:
            continue
        reached[current] = release_deps(current)
        pending.extend(reached[current])

    def crate(package_id: str) -> Crate:
        package = packages[package_id]
        name, version, source = str(package["name"]), str(package["version"]), package.get("source")
        deps = tuple(sorted(f"{packages[d]['name']}@{packages[d]['version']}" for d in reached[package_id]))
        return Crate(name=name, version=version, source=_source(source), root=package_id == root_id,
                     sha256=checksums.get((name, version, str(source))) if source else None, dependencies=deps)

    root = crate(str(root_id))
    others = sorted((crate(i) for i in reached if i != root_id), key=lambda c: (c.name, c.version, c.source))
    return [root, *others]


def _component(crate: Crate) -> Component:
    return Component(
        name=crate.name, version=crate.version, bom_ref=crate.ref,
        type=ComponentType.APPLICATION if crate.root else ComponentType.LIBRARY,
        purl=PackageURL.from_string(crate.purl) if crate.purl else None,
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=crate.sha256)] if crate.sha256 else None,
        properties=[Property(name="cargo:source", value=crate.source)],
    )


def build_sbom(crates: Iterable[Crate], *, release_id: str, binary_sha256: str, env: str,
               timestamp: datetime | None = None) -> str:
    """The CycloneDX 1.6 JSON document for `crates` (the first one the project's own crate)."""
    ordered = list(crates)
    root, others = ordered[0], ordered[1:]
    components = {c.ref: _component(c) for c in ordered}
    tool = Component(type=ComponentType.APPLICATION, name="orchestrate", version=__version__)
    bom = Bom(
        # one document per release of an environment: the same release gets the same serial number
        serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"orchestrate-release:{env}/{release_id}"),
        metadata=BomMetaData(
            component=components[root.ref], timestamp=timestamp or datetime.now(UTC),
            tools=ToolRepository(components=[tool]),
            properties=[Property(name="orchestrate:release", value=release_id),
                        Property(name="orchestrate:environment", value=env),
                        Property(name="orchestrate:binary:sha256", value=binary_sha256)]),
        components=[components[c.ref] for c in others],
    )
    for crate in ordered:
        bom.register_dependency(components[crate.ref], [components[d] for d in crate.dependencies if d in components])
    return str(JsonV1Dot6(bom).output_as_string(indent=2)) + "\n"


def sbom_for_project(project: Path, *, release_id: str, binary_sha256: str, env: str) -> str:
    """`cargo metadata` of `project` (offline) and its Cargo.lock, as a CycloneDX document."""
    data = cargo_metadata(project)
    lock = Path(str(data.get("workspace_root") or project)) / "Cargo.lock"
    lock_text = lock.read_text(encoding="utf-8") if lock.is_file() else None
    return build_sbom(crates_from_metadata(data, lock_text), release_id=release_id, binary_sha256=binary_sha256,
                      env=env)


def crates_in_sbom(text: str) -> list[dict[str, Any]]:
    """The crates a stored SBOM lists (the release's own first): name, version, source, sha256, purl, root."""
    data = json.loads(text)
    found = []
    root = (data.get("metadata") or {}).get("component")
    for component, is_root in [(root, True), *((c, False) for c in data.get("components") or [])]:
        if not component:
            continue
        props = {p.get("name"): p.get("value") for p in component.get("properties") or []}
        sha = next((h.get("content") for h in component.get("hashes") or [] if h.get("alg") == "SHA-256"), None)
        found.append({"name": component.get("name"), "version": component.get("version"),
                      "source": props.get("cargo:source"), "sha256": sha, "purl": component.get("purl"),
                      "root": is_root})
    return found
