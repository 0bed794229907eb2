"""Signed releases on the controller: the environment's key, the manifest the role checks, the record.

The signatures are real (ssh-keygen), and they are checked the way a host checks them: with the
role's own module_utils (roles/rust_service/module_utils/rust_service_bundle.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from orchestrator.config.loader import LoadedEnvironment, Project
from orchestrator.errors import ConfigError
from orchestrator.release import signing
from orchestrator.release.hosts import role_vars
from orchestrator.release.signing import SigningError, Staged
from tests.unit.roles.helpers import load_module_utils

RELEASE = "0.1.0-0123456789ab"


def bundle_utils():  # type: ignore[no-untyped-def]
    return load_module_utils()["rust_service_bundle"]


def load(project: Path, env: str = "dev") -> LoadedEnvironment:
    return Project(project).load(env)


def set_release_config(project: Path, release: dict[str, object], env: str = "dev") -> None:
    path = project / "inventories" / env / "environment.yml"
    data = yaml.safe_load(path.read_text())
    data["release"] = release
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def staged(tmp_path: Path, content: bytes = b"\x7fELF binary") -> Staged:
    directory = tmp_path / "staged" / RELEASE
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hello").write_bytes(content)
    (directory / "RELEASE").write_text("{}")  # reserved: not in the manifest
    return Staged(id=RELEASE, version="0.1.0", directory=directory, source=tmp_path / "src")


def host_copy(tmp_path: Path, stage: Staged, record: signing.ReleaseRecord) -> Path:
    """The release directory as the role leaves it on a host: the files, MANIFEST and MANIFEST.sig."""
    host = tmp_path / "host" / "releases" / stage.id
    shutil.copytree(stage.directory, host)
    (host / "MANIFEST").write_text(record.manifest)
    (host / "MANIFEST.sig").write_text(record.signature)
    return host


def signers_file(tmp_path: Path, keys: list[str]) -> Path:
    path = tmp_path / "host" / "signers"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(bundle_utils().allowed_signers(keys))
    return path


def new_key(path: Path, comment: str = "operator@laptop") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path.with_name(path.name + ".pub").read_text().strip()


def test_the_manifest_is_the_roles_canonical_manifest() -> None:
    files = {"hello": "a" * 64, "lib/x.so": "b" * 64}
    ours = signing.manifest_text(files, RELEASE, "0.1.0", "c" * 64)
    assert ours == bundle_utils().manifest_text(files, RELEASE, "0.1.0", "c" * 64)
    assert bundle_utils().parse_manifest(ours)["files"] == files
    assert ours.endswith("}\n") and ", " not in ours


def test_a_sealed_release_verifies_on_a_host_and_a_changed_file_is_named(project_copy: Path, tmp_path: Path) -> None:
    loaded = load(project_copy)
    stage = staged(tmp_path)
    record = signing.seal(loaded, stage, sbom=lambda: '{"bomFormat": "CycloneDX"}\n')
    keys = role_vars(loaded, None)["rust_service_signing_public_keys"]
    host = host_copy(tmp_path, stage, record)
    signers = signers_file(tmp_path, keys)

    manifest = bundle_utils().verify_release(str(host), RELEASE, str(signers))
    assert manifest["files"] == {"hello": record.files["hello"]}
    assert manifest["sbom_sha256"] == record.data["sbom_sha256"] is not None

    with open(host / "hello", "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(bundle_utils().IntegrityError) as refused:
        bundle_utils().verify_release(str(host), RELEASE, str(signers))
    assert refused.value.problems[0].startswith("hello: sha256 ")


def test_a_signature_by_another_key_is_refused(project_copy: Path, tmp_path: Path) -> None:
    loaded = load(project_copy)
    stage = staged(tmp_path)
    record = signing.seal(loaded, stage)
    host = host_copy(tmp_path, stage, record)
    stranger = new_key(tmp_path / "stranger" / "key")
    with pytest.raises(bundle_utils().IntegrityError, match="signature invalid"):
        bundle_utils().verify_release(str(host), RELEASE, str(signers_file(tmp_path, [stranger])))


def test_the_key_is_created_once_0600_and_only_its_public_half_is_handed_out(project_copy: Path,
                                                                             tmp_path: Path) -> None:
    loaded = load(project_copy)
    first = signing.signing_key(loaded)
    assert first.path == loaded.paths.signing_key
    assert oct(first.path.stat().st_mode & 0o777) == "0o600"
    assert signing.signing_key(loaded).public == first.public  # not created again
    private = first.path.read_text()
    handed_out = json.dumps(role_vars(loaded, None)) + json.dumps(signing.seal(loaded, staged(tmp_path)).role_vars())
    assert "PRIVATE KEY" not in handed_out and private.splitlines()[1] not in handed_out
    assert role_vars(loaded, None)["rust_service_signing_public_keys"] == [first.public]
    assert "rust_service_signing_public_keys" not in role_vars(loaded, None, signers=False)


def test_a_repeat_seal_keeps_the_record(project_copy: Path, tmp_path: Path) -> None:
    loaded = load(project_copy)
    stage = staged(tmp_path)
    calls: list[int] = []

    def sbom() -> str:
        calls.append(1)
        return f'{{"serial": {len(calls)}}}\n'

    first = signing.seal(loaded, stage, sbom=sbom)
    again = signing.seal(loaded, stage, sbom=sbom)
    # a repeat deploy must not rewrite MANIFEST on the hosts: same manifest, same signature, one SBOM
    assert (again.manifest, again.signature) == (first.manifest, first.signature)
    assert calls == [1]


def test_rotation_signs_again_with_the_new_key_and_trusts_both(project_copy: Path, tmp_path: Path) -> None:
    loaded = load(project_copy)
    stage = staged(tmp_path)
    old = signing.seal(loaded, stage)
    old_public = signing.signing_key(loaded).public
    new_public = new_key(project_copy / "keys" / "release-2027")
    set_release_config(project_copy, {"signing_key": "keys/release-2027", "trusted_keys": [old_public]})
    loaded = load(project_copy)

    keys = role_vars(loaded, None)["rust_service_signing_public_keys"]
    assert [k.split()[1] for k in keys] == [new_public.split()[1], old_public.split()[1]]
    shipped = signing.sealed_for_shipping(loaded, stage)
    assert shipped.manifest == old.manifest and shipped.signature != old.signature
    assert shipped.data["signer"].split()[1] == new_public.split()[1]
    signers = signers_file(tmp_path, keys)
    # the release signed by the old key (still on the hosts) and the one signed by the new key both verify
    assert bundle_utils().verify_release(str(host_copy(tmp_path / "a", stage, old)), RELEASE, str(signers))
    assert bundle_utils().verify_release(str(host_copy(tmp_path / "b", stage, shipped)), RELEASE, str(signers))
    # once the old key is no longer trusted, a release signed by it is refused
    only_new = signers_file(tmp_path / "c", keys[:1])
    with pytest.raises(bundle_utils().IntegrityError, match="signature invalid"):
        bundle_utils().verify_release(str(host_copy(tmp_path / "d", stage, old)), RELEASE, str(only_new))


def test_a_staged_file_changed_after_sealing_is_not_shipped(project_copy: Path, tmp_path: Path) -> None:
    loaded = load(project_copy)
    stage = staged(tmp_path)
    signing.seal(loaded, stage)
    (stage.directory / "hello").write_bytes(b"something else")
    with pytest.raises(SigningError, match=r"hello \(sha256 differs\); nothing was shipped"):
        signing.sealed_for_shipping(loaded, stage)


def test_a_symlink_in_a_release_is_refused(tmp_path: Path) -> None:
    stage = staged(tmp_path)
    (stage.directory / "link").symlink_to("hello")
    with pytest.raises(SigningError, match="regular files and directories only"):
        signing.release_files(stage.directory)


@pytest.mark.parametrize("problem", ["missing", "open", "rsa", "passphrase"])
def test_a_configured_key_that_cannot_sign_is_refused_naming_the_field(project_copy: Path, problem: str) -> None:
    key = project_copy / "keys" / "release"
    key.parent.mkdir()
    if problem == "open":
        new_key(key)
        key.chmod(0o644)
    elif problem == "rsa":
        subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(key)], check=True)
    elif problem == "passphrase":
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret words", "-f", str(key)], check=True)
    set_release_config(project_copy, {"signing_key": "keys/release"})
    loaded = load(project_copy)
    expected = {"missing": "does not exist", "open": "chmod 600", "rsa": "release keys are ed25519",
                "passphrase": "passphrase"}[problem]
    with pytest.raises(ConfigError, match=expected) as refused:
        signing.signing_key(loaded)
    assert refused.value.field == "release.signing_key"
    assert refused.value.line == loaded.line_of("release", "signing_key") is not None


def test_a_configured_key_signs(project_copy: Path, tmp_path: Path) -> None:
    public = new_key(project_copy / "keys" / "release")
    set_release_config(project_copy, {"signing_key": str(project_copy / "keys" / "release")})
    loaded = load(project_copy)
    record = signing.seal(loaded, staged(tmp_path))
    assert record.data["signer"].split()[1] == public.split()[1]
    assert not loaded.paths.signing_key.exists()  # no key of its own was created
    assert os.stat(project_copy / "keys" / "release").st_mode & 0o077 == 0


def test_rollbacks_need_only_the_public_half_of_a_key_kept_elsewhere(project_copy: Path, tmp_path: Path) -> None:
    public = new_key(project_copy / "keys" / "release")
    (project_copy / "keys" / "release").unlink()  # the private half lives on another machine
    set_release_config(project_copy, {"signing_key": "keys/release"})
    loaded = load(project_copy)
    assert role_vars(loaded, None)["rust_service_signing_public_keys"] == [public]
    with pytest.raises(ConfigError, match="does not exist"):
        signing.seal(loaded, staged(tmp_path))  # signing does need it
