"""Two checkouts of prod (two operators' controllers: only the bucket is shared) on a moto server:
one environment lock, one run history and one audit log, beside the Terraform state in S3.

The module's tests run in order on one fleet: the first provisions it from checkout A while B is
refused, the last destroys it from B.
"""

from __future__ import annotations

import getpass
import json
import re
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.fleet.local.keys import ensure_ssh_key
from tests.support.aws import apply_aws_variables, reset_moto
from tests.support.cli import orchestrate, run_orchestrate, spawn_orchestrate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUCKET = "orchestrate-prod-state"
PREFIX = "prod/terraform.tfstate.orchestrate/"


@dataclass
class Checkouts:
    a: Path
    b: Path


@pytest.fixture(scope="module")
def checkouts(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Iterator[Checkouts]:
    base = tmp_path_factory.mktemp("two-controllers")
    made = Checkouts(a=base / "a", b=base / "b")
    for project in (made.a, made.b):
        for part in ("inventories", "terraform"):
            shutil.copytree(repo_root / part, project / part)
    # one team, one project key (handed to each operator like the vault password): the instances
    # authorise it, and a checkout with a key of its own would replace the fleet's key pair
    key = ensure_ssh_key(made.a)
    shutil.copytree(key.parent, made.b / key.parent.relative_to(made.a))
    with pytest.MonkeyPatch.context() as mp:
        reset_moto(moto_endpoint)
        apply_aws_variables(mp, moto_endpoint)
        assert run_orchestrate(made.a, "bootstrap", "prod").returncode == 0
        yield made


@pytest.fixture(scope="module")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def runs_of(project: Path) -> list[dict[str, Any]]:
    code, data, err = orchestrate(project, "runs", "prod")
    assert code == 0, err
    return list(data["runs"])


def test_one_lock_for_two_checkouts_and_one_history(checkouts: Checkouts, aws: Any) -> None:
    s3 = aws("s3")
    first = spawn_orchestrate(checkouts.a, "provision", "prod", "--yes")
    deadline = time.monotonic() + 120
    while True:
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX + "lock.json").get("Contents", [])
        if listed:
            break
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first provision never took the environment lock"
        time.sleep(0.1)
    holder = json.loads(s3.get_object(Bucket=BUCKET, Key=PREFIX + "lock.json")["Body"].read())
    assert holder["command"] == "orchestrate provision prod --yes" and holder["pid"] == first.pid

    refused = run_orchestrate(checkouts.b, "provision", "prod", "--yes", "--lock-wait", "0")
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    # B: exit 75 at once, naming A's user, host, pid and command; nothing of B's ran
    assert refused.returncode == 75, refused.stderr
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
    user, host = getpass.getuser(), socket.gethostname()
    run = r"(, run \d{8}T\d{6}-[0-9a-f]{4})?"  # named once the run has started
    assert re.match(rf"error: environment prod is locked by {re.escape(user)}@{re.escape(host)} pid {first.pid} "
                    rf"since [\d-]+ [\d:]+ \(orchestrate provision prod --yes{run}\)", line), line
    assert f"s3://{BUCKET}/{PREFIX}lock.json" in line
    assert "Traceback" not in refused.stderr
    assert not s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX + "lock.json").get("Contents")  # released

    # B provisions next: nothing to change (B made host keys of its own, which only a new instance
    # would get), and B's inventory checks the hosts with the keys they were created with
    code, provisioned, err = orchestrate(checkouts.b, "provision", "prod", "--yes")
    assert code == 0, err
    assert provisioned["applied"] is False and provisioned["changes"] is False
    known = [(c / ".orchestrate" / "prod" / "known_hosts").read_text() for c in (checkouts.a, checkouts.b)]
    assert known[0] == known[1] and len(known[0].splitlines()) == 5
    assert "StrictHostKeyChecking=yes" in (checkouts.b / ".orchestrate" / "prod" / "inventory.yml").read_text()

    # either checkout lists both runs, newest first, and verifies one audit chain
    listings = [runs_of(c) for c in (checkouts.a, checkouts.b)]
    assert listings[0] == listings[1]
    assert [(r["command"], r["state"]) for r in listings[0]] == [("provision", "completed")] * 2
    assert listings[0][1]["pid"] == first.pid
    for checkout in (checkouts.a, checkouts.b):
        code, audit, err = orchestrate(checkout, "audit", "prod", "--verify")
        assert code == 0, err
        assert audit["verified"] == 3
        # newest first: B's run, A's run, B's refusal while A ran
        assert [(e["command"], e["outcome"]) for e in audit["entries"]] == [
            ("provision", "completed"), ("provision", "completed"), ("provision", "lock_busy")]
    # nothing of it on the controllers' disks: the journal copies are gone after each command
    for checkout in (checkouts.a, checkouts.b):
        state = checkout / ".orchestrate" / "prod"
        assert not list(state.rglob("journal.db")) and not (state / "audit.db").exists()


def test_a_run_that_failed_on_one_checkout_is_resumed_from_the_other(checkouts: Checkouts) -> None:
    env_file = checkouts.a / "inventories" / "prod" / "environment.yml"
    data = yaml.safe_load(env_file.read_text())
    good = data["terraform"]["vars"]["instance_type"]
    data["terraform"]["vars"]["instance_type"] = "not-a-type"  # refused by the module at plan time
    env_file.write_text(yaml.safe_dump(data, sort_keys=False))
    failed = run_orchestrate(checkouts.a, "provision", "prod", "--yes")
    assert failed.returncode == 1, failed.stderr
    newest = runs_of(checkouts.b)[0]
    assert (newest["command"], newest["state"]) == ("provision", "failed")

    code, _, err = orchestrate(checkouts.b, "resume", newest["id"])
    assert code == 0, err
    assert "resuming run " + newest["id"] in err
    code, shown, err = orchestrate(checkouts.a, "runs", "prod", newest["id"])
    assert code == 0, err
    run = shown["run"]
    assert (run["state"], run["attempts"]) == ("completed", 2)
    assert [(s["name"], s["state"]) for s in run["steps"]] == [("provision", "completed")]
    data["terraform"]["vars"]["instance_type"] = good
    env_file.write_text(yaml.safe_dump(data, sort_keys=False))


def test_destroy_from_the_other_checkout(checkouts: Checkouts, aws: Any) -> None:
    code, destroyed, err = orchestrate(checkouts.b, "destroy", "prod", "--yes")
    assert code == 0, err
    assert destroyed["destroyed"] > 10
    code, audit, err = orchestrate(checkouts.a, "audit", "prod", "--verify")
    assert code == 0 and audit["verified"] == 6, err
