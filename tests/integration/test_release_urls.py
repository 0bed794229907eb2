"""Release bundles from URLs, deployed on a real host: a loopback `http://` and `https://` server (a
certificate of its own, trusted through SSL_CERT_FILE) and `s3://` on a moto server; a wrong
`--sha256` is refused with nothing changed, on the controller or the host."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.aws import aws_variables, boto, moto_server
from tests.support.builds import LedgerBundles, build_ledger
from tests.support.cli import orchestrate
from tests.support.fleet import FleetEnv, fleets

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.hosts]

SERVICE = {
    "name": "ledger", "binary": "ledgerd", "port": 9300, "data_dir": "/var/lib/ledger",
    "args": ["--listen", "0.0.0.0:{port}", "--state", "{data_dir}", "--migrations", "{release_dir}/migrations"],
    "health": {"path": "/ready", "timeout": "10s", "interval": "250ms"},
    "hooks": {"before_switch": ["{release_dir}/ledgerd", "migrate", "--state", "{data_dir}",
                                "--migrations", "{release_dir}/migrations"]},
}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> LedgerBundles:
    return build_ledger(tmp_path_factory.mktemp("ledger-url-bundles"))


@contextlib.contextmanager
def serve(root: Path, context: ssl.SSLContext | None = None) -> Iterator[str]:
    """An HTTP(S) server of `root` on loopback; yields its base URL."""
    def handler(*args: object) -> http.server.SimpleHTTPRequestHandler:
        return http.server.SimpleHTTPRequestHandler(*args, directory=str(root))  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if context else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (openssl)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def host_state(fleet: FleetEnv) -> tuple[str, str]:
    host = fleet.group("app")[0]
    return (fleet.ssh(host, "ls /opt/ledger/releases").stdout, fleet.ssh(host, "readlink /opt/ledger/current").stdout)


def test_bundles_from_http_https_and_s3_deploy_and_a_wrong_sha256_changes_nothing(
        bundles: LedgerBundles, tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    for bundle in (bundles.a, bundles.b, bundles.c):
        (www / bundle.name).write_bytes(bundle.read_bytes())
    cert, key = certificate(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with fleets("urls") as factory, serve(www) as http_base, serve(www, context) as https_base, \
            moto_server(tmp_path / "moto.log") as endpoint:
        fleet = factory.boot(app_count=1, overrides={"service": SERVICE})
        env = {**aws_variables(endpoint), "SSL_CERT_FILE": str(cert)}
        boto("s3", endpoint).create_bucket(Bucket="releases", CreateBucketConfiguration={
            "LocationConstraint": "eu-west-1"})
        boto("s3", endpoint).put_object(Bucket="releases", Key="ledger/c.tar.gz", Body=bundles.c.read_bytes())

        def deploy(url: str, digest: str) -> tuple[int, dict[str, object], str]:
            return orchestrate(fleet.project_dir, "deploy", fleet.env_name, "--release", url, "--sha256", digest,
                               env=env, timeout=900)

        code, result, err = deploy(f"{http_base}/{bundles.a.name}", sha256(bundles.a))
        assert code == 0, err[-3000:]
        assert result["release"] == f"0.1.0-{sha256(bundles.a)[:12]}"
        before = host_state(fleet)
        staged = sorted(p.name for p in (fleet.state_dir / "artifacts").iterdir())

        code, result, err = deploy(f"{https_base}/{bundles.b.name}", "0" * 64)
        assert code == 1, err[-3000:]
        assert "given with --sha256" in err and "nothing deployed" in err
        assert host_state(fleet) == before
        assert sorted(p.name for p in (fleet.state_dir / "artifacts").iterdir()) == staged
        assert not list((fleet.state_dir / "downloads").rglob(bundles.b.name))

        code, result, err = deploy(f"{https_base}/{bundles.b.name}", sha256(bundles.b))
        assert code == 0, err[-3000:]
        assert result["release"] == f"0.1.0-{sha256(bundles.b)[:12]}"
        code, result, err = deploy("s3://releases/ledger/c.tar.gz", sha256(bundles.c))
        assert code == 0, err[-3000:]
        assert result["release"] == f"0.1.0-{sha256(bundles.c)[:12]}"
        assert host_state(fleet)[1].strip().endswith(str(result["release"]))
        host = fleet.group("app")[0]
        status, body = fleet.http_get(host.address, "/ready", port=9300)
        assert (status, body.strip()) == (200, "ready")
