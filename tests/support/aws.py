"""A moto server (a real HTTP AWS endpoint on loopback) and the AWS environment pointing at it.

    with moto_server(log_file) as endpoint:     # http://127.0.0.1:PORT, stopped on the way out
        reset_moto(endpoint)                    # forget every resource
        for name, value in aws_variables(endpoint).items(): ...

The credentials are test values only; SECRET_KEY is recognisable so that tests can assert it is
never written to disk.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.fleet.render import AWS_ENDPOINT_ENV
from tests.support.net import free_port, http_get

VENV_BIN = Path(sys.executable).parent
REGION = "eu-west-1"
ACCESS_KEY = "AKIAORCHESTRATETEST"
#: a recognisable secret: tests assert it is never written to disk
SECRET_KEY = "moto-secret-" + secrets.token_hex(8)
#: AWS variables of the developer's own setup that must not leak into a test run
FOREIGN_VARIABLES = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


@contextlib.contextmanager
def moto_server(log: Path, *, start_timeout: float = 30) -> Iterator[str]:
    """Run moto's server on a free loopback port, one request at a time (see moto_serial.py);
    yield its URL; stop it afterwards."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("moto_serial.py")), "127.0.0.1",
                                 str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + start_timeout
    while True:
        try:
            http_get(f"{endpoint}/moto-api/", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto_server did not start on port {port}:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
    try:
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def moto_requests(log: Path, last: int = 80) -> str:
    """The last `last` requests moto's server logged (action, client port, status), to read a
    failed apply against what the endpoint was asked."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("request ")]
    except OSError as exc:
        return f"(no moto log: {exc})"
    return "\n".join(lines[-last:])


def reset_moto(endpoint: str) -> None:
    """Forget every resource the moto server holds."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as response:  # loopback only
        assert response.status == 200


def aws_variables(endpoint: str) -> dict[str, str]:
    """Environment of a test run against moto: throwaway credentials and the endpoint override."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        AWS_ENDPOINT_ENV: endpoint,
    }


def apply_aws_variables(mp: pytest.MonkeyPatch, endpoint: str) -> None:
    """Set `aws_variables(endpoint)` and drop the developer's own AWS settings, through `mp`."""
    for name, value in aws_variables(endpoint).items():
        mp.setenv(name, value)
    for name in FOREIGN_VARIABLES:
        mp.delenv(name, raising=False)


def boto(service: str, endpoint: str) -> Any:
    """A boto3 client of moto with the test credentials."""
    import boto3

    return boto3.client(service, region_name=REGION, endpoint_url=endpoint,
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
