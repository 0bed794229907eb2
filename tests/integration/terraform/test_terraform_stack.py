"""The prod fleet on moto, end to end: plan, provision, inventory, re-plan, drift, state lock, destroy.

One applied stack is shared by the tests of this module (a full apply takes ~30 s); they run
in file order and only the last one (the concurrent destroy) tears it down.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUCKET = "orchestrate-prod-state"
STATE_KEY = "prod/terraform.tfstate"


@dataclass
class Stack:
    project: Path
    endpoint: str
    plan_result: Any = None
    provision_result: Any = None


@pytest.fixture(scope="module")
def stack(module_aws_project: Path, moto_endpoint: str, run_orchestrate: Any) -> Stack:
    """A bootstrapped prod project on a fresh moto server, with its first plan (not applied yet)."""
    bootstrap = run_orchestrate(module_aws_project, "bootstrap", "prod")
    assert bootstrap.returncode == 0, bootstrap.stderr
    result = Stack(project=module_aws_project, endpoint=moto_endpoint)
    result.plan_result = run_orchestrate(module_aws_project, "plan", "prod", "--json")
    return result


@pytest.fixture(scope="module")
def applied(stack: Stack, run_orchestrate: Any) -> Stack:
    """The stack after `orchestrate provision prod --yes`."""
    stack.provision_result = run_orchestrate(stack.project, "provision", "prod", "--yes", "--json")
    assert stack.provision_result.returncode == 0, stack.provision_result.stderr
    return stack


def fleet_instances(aws: Any) -> list[dict[str, Any]]:
    reservations = aws("ec2").describe_instances(
        Filters=[{"Name": "tag:orchestrate:env", "Values": ["prod"]},
                 {"Name": "instance-state-name", "Values": ["pending", "running"]}])["Reservations"]
    return [instance for r in reservations for instance in r["Instances"]]


def tag(instance: dict[str, Any], key: str) -> str:
    return next((t["Value"] for t in instance.get("Tags", []) if t["Key"] == key), "")


def test_first_plan_finds_the_whole_fleet_to_add(stack: Stack) -> None:
    result = stack.plan_result
    assert result.returncode == 4, result.stderr
    data = json.loads(result.stdout)
    assert data["env"] == "prod" and data["changes"] is True
    assert data["summary"]["by_type"]["aws_instance"] == {"add": 5, "change": 0, "destroy": 0}
    assert data["summary"]["by_type"]["aws_security_group"]["add"] == 3
    assert data["summary"]["totals"]["destroy"] == 0
    plan_file = Path(data["plan_file"])
    assert plan_file == stack.project / ".orchestrate" / "prod" / "terraform" / "plan.tfplan"
    assert hashlib.sha256(plan_file.read_bytes()).hexdigest() == data["plan_sha256"]


def test_provision_writes_the_inventory_from_the_outputs(applied: Stack, aws: Any) -> None:
    data = json.loads(applied.provision_result.stdout)
    assert data["applied"] is True
    inventory = yaml.safe_load((applied.project / ".orchestrate" / "prod" / "inventory.yml").read_text())
    children = inventory["all"]["children"]
    assert len(children["app"]["hosts"]) == 3
    assert list(children["monitoring"]["hosts"]) == ["orchestrate-prod-monitoring"]
    assert list(children["lb"]["hosts"]) == ["orchestrate-prod-lb"]
    assert inventory["all"]["vars"]["ansible_user"] == "admin"
    assert inventory["all"]["vars"]["ansible_ssh_private_key_file"] == str(
        applied.project / ".orchestrate" / "ssh" / "id_ed25519")

    instances = {tag(i, "Name"): i for i in fleet_instances(aws)}
    assert len(instances) == 5
    for group in ("app", "monitoring", "lb"):
        for name, host_vars in children[group]["hosts"].items():
            instance = instances[name]
            assert host_vars["ansible_host"] == instance["PublicIpAddress"]
            assert host_vars["private_address"] == instance["PrivateIpAddress"]
            assert tag(instance, "orchestrate:groups") == group
            assert tag(instance, "managed-by") == "orchestrate"  # provider default tags
            assert tag(instance, "team") == "platform"  # the environment's tags
    assert sorted(h["name"] for h in data["hosts"]) == sorted(instances)


def test_second_plan_finds_nothing_to_change(applied: Stack, run_orchestrate: Any) -> None:
    result = run_orchestrate(applied.project, "plan", "prod", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["changes"] is False
    assert data["summary"]["totals"] == {"add": 0, "change": 0, "destroy": 0}


def test_no_credential_is_written_anywhere(applied: Stack, aws: Any, secret_key: str) -> None:
    state_dir = applied.project / ".orchestrate" / "prod"
    checked = 0
    for path in state_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert secret_key.encode() not in path.read_bytes(), path
            checked += 1
    assert (state_dir / "terraform" / ".terraform" / "terraform.tfstate").is_file()  # backend config
    assert checked > 3
    state = aws("s3").get_object(Bucket=BUCKET, Key=STATE_KEY)["Body"].read()
    assert b"aws_instance" in state
    assert secret_key.encode() not in state and b"AKIAORCHESTRATETEST" not in state


def test_a_rule_added_behind_terraforms_back_is_drift(applied: Stack, aws: Any, run_orchestrate: Any) -> None:
    clean = run_orchestrate(applied.project, "drift", "prod", "--json")
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["drift"] == []

    ec2 = aws("ec2")
    group = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["orchestrate-prod-app"]}])["SecurityGroups"][0]
    ec2.authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 3306, "ToPort": 3306, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])

    result = run_orchestrate(applied.project, "drift", "prod", "--json")
    assert result.returncode == 4, result.stderr
    drift = json.loads(result.stdout)["drift"]
    assert [d["address"] for d in drift] == ["module.fleet.aws_security_group.app"]
    assert "ingress" in drift[0]["attributes"]


def test_concurrent_runs_are_refused_by_the_state_lock(applied: Stack, aws: Any, run_orchestrate: Any,
                                                       spawn: Any, tmp_path: Path) -> None:
    # A destroy holds the S3 state lock for its whole run (~20 s). A provision started meanwhile
    # from another checkout of the project (another operator: only the bucket is shared) must be
    # refused by terraform's state lock with one clear line and exit 75, and change nothing.
    other = tmp_path / "other-checkout"
    for part in ("inventories", "terraform"):
        shutil.copytree(applied.project / part, other / part)
    destroyer = spawn(applied.project, "destroy", "prod", "--yes", "--json")
    s3 = aws("s3")
    deadline = time.monotonic() + 60
    while not any(o["Key"].endswith(".tflock") for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])):
        assert destroyer.poll() is None, destroyer.communicate()
        assert time.monotonic() < deadline, "the destroy never took the state lock"
        time.sleep(0.2)

    second = run_orchestrate(other, "provision", "prod", "--yes")
    # the same checkout is refused earlier, by the environment lock on this controller
    same = run_orchestrate(applied.project, "provision", "prod", "--yes")
    out, err = destroyer.communicate(timeout=300)

    assert second.returncode == 75, second.stderr
    error_lines = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert error_lines[0].startswith("error: terraform plan for prod refused: the state is locked by another run (")
    assert "held by " in error_lines[0] and "lock ID " in error_lines[0]
    assert "Traceback" not in second.stderr
    assert same.returncode == 75, same.stderr
    assert "Traceback" not in same.stderr

    assert destroyer.returncode == 0, err
    assert json.loads(out)["destroyed"] == 16  # 5 instances, 3 security groups, network, key pair
    assert fleet_instances(aws) == []
    assert not (applied.project / ".orchestrate" / "prod" / "inventory.yml").exists()
