"""Make a signed release bundle for a Molecule scenario; print it as JSON.

    python molecule/resources/release_bundle.py --binary PATH --name hello-server --version 0.1.0 \
        --file static/index.html=TEXT --script hooks/record=TEXT --key KEY --out DIR

The bundle's top level holds the binary (as --name, mode 0755), every --file (0644) and every
--script (0755). The release id is `<version>-<first 12 hex of a sha256 over the bundle's files>`
(distinct for bundles of the same binary). MANIFEST is the canonical JSON of the role's
module_utils (the format the controller signs); with --key it is signed with
`ssh-keygen -Y sign -n orchestrate-release`. Prints {id, version, sha256 (of the binary),
binary (its name), archive, manifest, signature}.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROLE = Path(__file__).resolve().parents[2] / "roles" / "rust_service"


def _bundle_utils():
    spec = importlib.util.spec_from_file_location("rust_service_bundle", ROLE / "module_utils" / "rust_service_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pairs(items: list[str]) -> dict[str, str]:
    found = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"expected NAME=TEXT, got {item!r}")
        found[name] = text
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--file", action="append", default=[])
    parser.add_argument("--script", action="append", default=[])
    parser.add_argument("--key", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    binary = args.binary.read_bytes()
    members = {args.name: (binary, 0o755)}
    members.update({name: (text.encode(), 0o644) for name, text in _pairs(args.file).items()})
    members.update({name: (text.encode(), 0o755) for name, text in _pairs(args.script).items()})
    digests = {name: hashlib.sha256(data).hexdigest() for name, (data, _) in members.items()}
    content = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()
    release_id = f"{args.version}-{content[:12]}"

    args.out.mkdir(parents=True, exist_ok=True)
    archive = args.out / f"{release_id}.tar.gz"
    buffer = io.BytesIO()
    # the same inputs give the same bytes (gzip and tar times fixed): made again, the bundle is
    # not a new file to the copy
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed, \
            tarfile.open(fileobj=compressed, mode="w") as tar:
        for name in sorted(members):
            data, mode = members[name]
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    if not archive.exists() or archive.read_bytes() != buffer.getvalue():
        archive.write_bytes(buffer.getvalue())

    manifest = _bundle_utils().manifest_text(digests, release_id, args.version)
    signature = ""
    if args.key:
        with tempfile.TemporaryDirectory() as tmp:
            message = Path(tmp) / "MANIFEST"
            message.write_text(manifest)
            subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(args.key), "-n", "orchestrate-release",
                            str(message)], check=True)
            signature = (Path(tmp) / "MANIFEST.sig").read_text()
    json.dump({"id": release_id, "version": args.version, "sha256": digests[args.name], "binary": args.name,
               "archive": str(archive), "manifest": manifest, "signature": signature}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
