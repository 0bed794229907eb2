"""roles/rust_service/module_utils/rust_service_bundle.py: bundle members, unpacking, signed manifests.

Signatures are made and checked with the real ssh-keygen and keys generated in the test.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from tests.unit.roles.helpers import load_module_utils

RID = "1.2.0-0123456789ab"


@pytest.fixture(scope="module")
def bundle() -> ModuleType:
    return load_module_utils()["rust_service_bundle"]


def make_tar(path: Path, members: list[tuple[str, str, bytes | str]]) -> Path:
    """A .tar.gz with members (name, kind, data): kind file|dir|symlink|hardlink|fifo|chardev."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                payload = data if isinstance(data, bytes) else data.encode()
                info.size = len(payload)
                info.mode = 0o4777 if name.endswith("setuid") else 0o755
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                         "fifo": tarfile.FIFOTYPE, "chardev": tarfile.CHRTYPE}[kind]
            info.mode = 0o777 if kind == "dir" else 0o644
            if kind in ("symlink", "hardlink"):
                info.linkname = str(data)
            tar.addfile(info)
    return path


GOOD = [(".", "dir", b""), ("./hello-server", "file", b"\x7fELF binary"), ("./static", "dir", b""),
        ("./static/index.html", "file", b"<h1>hi</h1>"), ("hooks/before-switch", "file", b"#!/bin/sh\n"),
        ("./tools/setuid", "file", b"x")]


def test_a_bundle_unpacks_completely_with_safe_modes(bundle: ModuleType, tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "b.tar.gz", GOOD)
    target = tmp_path / "releases" / RID
    assert bundle.unpack(str(archive), str(target)) == 4
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert files == ["hello-server", "hooks/before-switch", "static/index.html", "tools/setuid"]
    assert (target / "static" / "index.html").read_bytes() == b"<h1>hi</h1>"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(target / "hello-server").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(target / "tools" / "setuid").st_mode) == 0o755, "setuid and o+w are dropped"
    assert stat.S_IMODE(os.stat(target / "static").st_mode) == 0o755
    assert os.listdir(tmp_path / "releases") == [RID], "no temporary directory is left"


@pytest.mark.parametrize(("members", "message"), [
    ([("/etc/passwd", "file", "x")], "absolute paths"),
    ([("../escape", "file", "x")], r"'\.\.' is not allowed"),
    ([("a/../../escape", "file", "x")], r"'\.\.' is not allowed"),
    ([("link", "symlink", "/etc/shadow")], "is a symlink"),
    ([("target", "file", "x"), ("hard", "hardlink", "target")], "is a hard link"),
    ([("pipe", "fifo", "")], "is a fifo"),
    ([("dev", "chardev", "")], "is a device"),
    ([("MANIFEST", "file", "{}")], "MANIFEST is reserved"),
    ([("RELEASE", "file", "{}")], "RELEASE is reserved"),
    ([("MANIFEST.sig/x", "file", "x")], "MANIFEST.sig is reserved"),
    ([("twice", "file", "a"), ("./twice", "file", "b")], "more than once"),
    ([("a", "file", "x"), ("a/b", "file", "y")], "a is a file"),
    ([("a/b", "file", "x"), ("a", "file", "y")], "more than once"),
    ([("bad\nname", "file", "x")], "control characters"),
    ([("win\\path", "file", "x")], "backslashes"),
])
def test_bad_members_are_refused_before_anything_is_written(bundle: ModuleType, tmp_path: Path,
                                                            members: list[tuple[str, str, str]], message: str) -> None:
    archive = make_tar(tmp_path / "b.tar.gz", [("ok", "file", "fine"), *members])
    target = tmp_path / "releases" / RID
    with pytest.raises(bundle.BundleError, match=message):
        bundle.unpack(str(archive), str(target))
    assert not target.exists()
    assert not (tmp_path / "releases").exists() or os.listdir(tmp_path / "releases") == []


def test_a_corrupt_archive_leaves_nothing(bundle: ModuleType, tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "b.tar.gz", GOOD)
    archive.write_bytes(archive.read_bytes()[:40])
    target = tmp_path / "releases" / RID
    with pytest.raises(bundle.BundleError, match="cannot unpack"):
        bundle.unpack(str(archive), str(target))
    assert not target.exists() and os.listdir(tmp_path / "releases") == []


def test_an_existing_release_directory_is_never_unpacked_over(bundle: ModuleType, tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "b.tar.gz", GOOD)
    target = tmp_path / "releases" / RID
    (target / "keep").mkdir(parents=True)
    with pytest.raises(bundle.BundleError):
        bundle.unpack(str(archive), str(target))
    assert sorted(os.listdir(tmp_path / "releases")) == [RID]
    assert os.listdir(target) == ["keep"]


# --- manifests --------------------------------------------------------------------------------


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def release_dir(root: Path) -> tuple[Path, dict[str, str]]:
    target = root / "releases" / RID
    (target / "static").mkdir(parents=True)
    (target / "hello-server").write_bytes(b"binary")
    (target / "static" / "index.html").write_bytes(b"<h1>hi</h1>")
    # what the role writes itself is not listed
    (target / "RELEASE").write_text("{}")
    return target, {"hello-server": digest(b"binary"), "static/index.html": digest(b"<h1>hi</h1>")}


def test_the_manifest_is_canonical_json(bundle: ModuleType) -> None:
    text = bundle.manifest_text({"b": "1" * 64, "a/ü": "2" * 64}, RID, "1.2.0")
    assert text == ('{"files":{"a/ü":"' + "2" * 64 + '","b":"' + "1" * 64 + '"},"format":1,"id":"' + RID
                    + '","sbom_sha256":null,"version":"1.2.0"}\n')
    assert bundle.parse_manifest(text)["files"]["a/ü"] == "2" * 64


@pytest.mark.parametrize(("text", "message"), [
    ("not json", "not JSON"),
    ('{"files":{"a":"' + "0" * 64 + '"},"format":2,"id":"x","sbom_sha256":null,"version":"1"}', "format 2"),
    ('{"files":{"a":"' + "0" * 64 + '"},"files":{},"format":1,"id":"x","sbom_sha256":null,"version":"1"}',
     "appears twice"),
    ('{"files":{"../a":"' + "0" * 64 + '"},"format":1,"id":"x","sbom_sha256":null,"version":"1"}',
     "plain relative path"),
    ('{"files":{"MANIFEST":"' + "0" * 64 + '"},"format":1,"id":"x","sbom_sha256":null,"version":"1"}',
     "plain relative path"),
    ('{"files":{"a":"XYZ"},"format":1,"id":"x","sbom_sha256":null,"version":"1"}', "sha256 of a"),
    ('{"files":{},"format":1,"id":"x","sbom_sha256":null,"version":"1"}', "non-empty"),
    ('{"files":{"a":"' + "0" * 64 + '"},"format":1,"id":"x","sbom_sha256":"no","version":"1"}', "sbom_sha256"),
    ('{"extra":1,"files":{"a":"' + "0" * 64 + '"},"format":1,"id":"x","sbom_sha256":null,"version":"1"}',
     "unknown keys extra"),
])
def test_malformed_manifests_are_refused(bundle: ModuleType, text: str, message: str) -> None:
    with pytest.raises(bundle.IntegrityError, match=message):
        bundle.parse_manifest(text)


def test_a_matching_release_has_no_problems(bundle: ModuleType, tmp_path: Path) -> None:
    target, files = release_dir(tmp_path)
    manifest = bundle.parse_manifest(bundle.manifest_text(files, RID, "1.2.0"))
    assert bundle.content_problems(str(target), manifest, RID) == []


def _tamper(target: Path) -> None:
    (target / "static" / "index.html").write_bytes(b"<h1>pwned</h1>")


def _extra(target: Path) -> None:
    (target / "static" / "extra.js").write_text("alert(1)")


def _missing(target: Path) -> None:
    (target / "static" / "index.html").unlink()


def _symlinked(target: Path) -> None:
    (target / "hello-server").unlink()
    (target / "hello-server").symlink_to("/bin/true")


def _top_level_extra(target: Path) -> None:
    (target / "MANIFEST.bak").write_text("x")


@pytest.mark.parametrize(("change", "problem"), [
    (_tamper, r"static/index\.html: sha256 [0-9a-f]{64} differs from the manifest's"),
    (_extra, r"static/extra\.js is not listed in the manifest"),
    (_missing, r"static/index\.html is missing"),
    (_symlinked, r"hello-server is a symlink, not a regular file"),
    (_top_level_extra, r"MANIFEST\.bak is not listed"),
])
def test_every_difference_is_named(bundle: ModuleType, tmp_path: Path, change: Callable[[Path], None],
                                   problem: str) -> None:
    target, files = release_dir(tmp_path)
    manifest = bundle.parse_manifest(bundle.manifest_text(files, RID, "1.2.0"))
    change(target)
    problems = bundle.content_problems(str(target), manifest, RID)
    assert len(problems) == 1, problems
    assert __import__("re").match(problem, problems[0]), problems


def test_a_manifest_of_another_release_is_refused(bundle: ModuleType, tmp_path: Path) -> None:
    target, files = release_dir(tmp_path)
    manifest = bundle.parse_manifest(bundle.manifest_text(files, "9.9.9-ffffffffffff", "9.9.9"))
    assert bundle.content_problems(str(target), manifest, RID) == [f"MANIFEST is for release 9.9.9-ffffffffffff, "
                                                                   f"not {RID}"]


# --- signatures (real ssh-keygen) -------------------------------------------------------------

pytestmark_ssh = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")


def keypair(directory: Path, name: str) -> tuple[Path, str]:
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test", "-f", str(key)], check=True)
    return key, (directory / f"{name}.pub").read_text().strip()


def sign(key: Path, text: str, directory: Path, namespace: str = "orchestrate-release") -> str:
    message = directory / "MANIFEST.to-sign"
    message.write_text(text)
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(key), "-n", namespace, str(message)], check=True)
    return (directory / "MANIFEST.to-sign.sig").read_text()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    directory = tmp_path_factory.mktemp("keys")
    return {name: keypair(directory, name) for name in ("old", "new", "rogue")}


def signed_release(bundle: ModuleType, root: Path, key: Path, *, namespace: str = "orchestrate-release") -> Path:
    target, files = release_dir(root)
    text = bundle.manifest_text(files, RID, "1.2.0")
    (target / "MANIFEST").write_text(text)
    (target / "MANIFEST.sig").write_text(sign(key, text, root, namespace))
    return target


def allowed(bundle: ModuleType, root: Path, *public: str) -> str:
    path = root / "release-signers"
    path.write_text(bundle.allowed_signers(list(public)))
    return str(path)


@pytestmark_ssh
def test_a_release_signed_by_either_trusted_key_verifies(bundle: ModuleType, tmp_path: Path,
                                                          keys: dict[str, tuple[Path, str]]) -> None:
    signers = allowed(bundle, tmp_path, keys["old"][1], keys["new"][1])
    for name in ("old", "new"):  # key rotation: both are trusted
        root = tmp_path / name
        target = signed_release(bundle, root, keys[name][0])
        manifest = bundle.verify_release(str(target), RID, signers)
        assert manifest["id"] == RID


@pytestmark_ssh
def test_an_untrusted_key_or_namespace_is_a_signature_invalid(bundle: ModuleType, tmp_path: Path,
                                                              keys: dict[str, tuple[Path, str]]) -> None:
    signers = allowed(bundle, tmp_path, keys["old"][1])
    rogue = signed_release(bundle, tmp_path / "rogue", keys["rogue"][0])
    with pytest.raises(bundle.IntegrityError, match=r"^signature invalid"):
        bundle.verify_release(str(rogue), RID, signers)
    other_namespace = signed_release(bundle, tmp_path / "ns", keys["old"][0], namespace="file")
    with pytest.raises(bundle.IntegrityError, match=r"^signature invalid"):
        bundle.verify_release(str(other_namespace), RID, signers)


@pytestmark_ssh
def test_a_manifest_changed_after_signing_is_a_signature_invalid(bundle: ModuleType, tmp_path: Path,
                                                                 keys: dict[str, tuple[Path, str]]) -> None:
    signers = allowed(bundle, tmp_path, keys["old"][1])
    target = signed_release(bundle, tmp_path / "r", keys["old"][0])
    data = json.loads((target / "MANIFEST").read_text())
    data["files"]["static/index.html"] = digest(b"<h1>pwned</h1>")
    (target / "MANIFEST").write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")
    (target / "static" / "index.html").write_bytes(b"<h1>pwned</h1>")
    with pytest.raises(bundle.IntegrityError, match=r"^signature invalid"):
        bundle.verify_release(str(target), RID, signers)


@pytestmark_ssh
def test_a_tampered_or_extra_file_in_a_signed_release_is_named(bundle: ModuleType, tmp_path: Path,
                                                               keys: dict[str, tuple[Path, str]]) -> None:
    signers = allowed(bundle, tmp_path, keys["old"][1])
    target = signed_release(bundle, tmp_path / "r", keys["old"][0])
    _tamper(target)
    _extra(target)
    with pytest.raises(bundle.IntegrityError) as caught:
        bundle.verify_release(str(target), RID, signers)
    assert str(caught.value).startswith("static/index.html: sha256 ")
    assert str(caught.value).endswith("(and 1 more)")
    assert caught.value.problems[1] == "static/extra.js is not listed in the manifest"


@pytestmark_ssh
def test_an_unsigned_release_is_refused(bundle: ModuleType, tmp_path: Path, keys: dict[str, tuple[Path, str]]) -> None:
    signers = allowed(bundle, tmp_path, keys["old"][1])
    target, _ = release_dir(tmp_path)
    with pytest.raises(bundle.IntegrityError, match="MANIFEST is missing"):
        bundle.verify_release(str(target), RID, signers)


@pytestmark_ssh
def test_check_mode_verifies_the_manifest_it_would_write(bundle: ModuleType, tmp_path: Path,
                                                         keys: dict[str, tuple[Path, str]]) -> None:
    signers = allowed(bundle, tmp_path, keys["old"][1])
    target, files = release_dir(tmp_path)
    text = bundle.manifest_text(files, RID, "1.2.0")
    signature = sign(keys["old"][0], text, tmp_path)
    bundle.verify_release(str(target), RID, signers, text.encode(), signature.encode())
    assert not (target / "MANIFEST").exists()


def test_allowed_signers_use_the_release_principal_and_namespace(bundle: ModuleType) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGtest+/= ops@example"
    assert bundle.allowed_signers([key, "ssh-ed25519 AAAAB"]) == (
        f'orchestrate-release namespaces="orchestrate-release" {key}\n'
        'orchestrate-release namespaces="orchestrate-release" ssh-ed25519 AAAAB\n')
    for bad in (["ssh-rsa AAAAB3 x"], ["ssh-ed25519 AAAA x\nssh-ed25519 BBBB injected"], ["no"], "ssh-ed25519 AAAA"):
        with pytest.raises(ValueError, match="signing public key"):
            bundle.allowed_signers(bad)
