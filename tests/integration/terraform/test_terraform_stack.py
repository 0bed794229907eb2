"""The prod fleet on moto, end to end: plan, provision, inventory, security groups, re-plan, drift,
two concurrent applies on the S3 state lock (with live progress), destroy.

One applied stack is shared by the tests of this module (a full apply takes ~30 s); they run
in file order and only the last one (the concurrent destroy) tears it down.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import stat
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.config.loader import Project
from orchestrator.errors import OrchestratorError, StateLockError
from orchestrator.fleet.cloudinit import parse_user_data
from orchestrator.fleet.provision import terraform_for
from orchestrator.tools.terraform import StalePlanError
from tests.support.aws import moto_requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUCKET = "orchestrate-prod-state"
STATE_KEY = "prod/terraform.tfstate"
ADMIN_CIDR = "203.0.113.0/24"  # inventories/prod/environment.yml terraform.vars.admin_cidr
SERVICE_PORT = 8080


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


#: how an error of the AWS endpoint itself reaches orchestrate's output through Terraform
ENDPOINT_ERROR = re.compile(r"terraform apply for prod failed: .*api error (InvalidPermission\.\w+)")


@pytest.fixture(scope="module")
def applied(stack: Stack, run_orchestrate: Any, moto_log: Path) -> Stack:
    """The stack after `orchestrate provision prod --yes`.

    moto answers Terraform's calls one at a time, and yet, rarely and on a loaded machine, a first
    apply has met a security group rule moto said was missing (`InvalidPermission.NotFound` for
    the provider's revoke of AWS's default egress rule) or, in another module, already there
    (`InvalidPermission.Duplicate`). The run is then repeated as an operator would repeat it: the
    second `provision` replaces the group Terraform marked tainted and must succeed; the first
    failure is reported as a warning with the requests moto logged.
    """
    result = run_orchestrate(stack.project, "provision", "prod", "--yes", "--json")
    glitch = ENDPOINT_ERROR.search(result.stderr) if result.returncode != 0 else None
    if glitch is not None:
        warnings.warn(f"moto refused a rule ({glitch.group(1)}) on the first apply; provisioning again.\n"
                      f"{result.stderr}\nmoto's last requests:\n{moto_requests(moto_log)}", stacklevel=1)
        result = run_orchestrate(stack.project, "provision", "prod", "--yes", "--json")
    stack.provision_result = result
    assert result.returncode == 0, f"{result.stderr}\nmoto's last requests:\n{moto_requests(moto_log)}"
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
    assert data["summary"]["by_type"]["aws_security_group"]["add"] == 4  # app, monitoring, lb, fleet
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


def listed_hosts(project: Path, run_orchestrate: Any) -> dict[str, tuple[str, list[str], str]]:
    """`orchestrate hosts prod --json`: {name: (address, groups, state)}."""
    result = run_orchestrate(project, "hosts", "prod", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["env"] == "prod"
    return {h["name"]: (h["address"], h["groups"], h["state"]) for h in data["hosts"]}


def test_hosts_lists_the_inventory_with_each_instance_state(applied: Stack, aws: Any,
                                                            run_orchestrate: Any) -> None:
    instances = {tag(i, "Name"): i for i in fleet_instances(aws)}
    assert listed_hosts(applied.project, run_orchestrate) == {
        name: (i["PublicIpAddress"], [tag(i, "orchestrate:groups")], "running") for name, i in instances.items()}


def ingress_rules(aws: Any) -> dict[str, set[tuple[str, int, int, str]]]:
    """{group name: {(protocol, from, to, source)}} of the prod fleet; a source group as `sg:NAME`."""
    groups = aws("ec2").describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["orchestrate-prod-*"]}])["SecurityGroups"]
    names = {g["GroupId"]: g["GroupName"].removeprefix("orchestrate-prod-") for g in groups}
    rules: dict[str, set[tuple[str, int, int, str]]] = {}
    for group in groups:
        found = rules.setdefault(names[group["GroupId"]], set())
        for perm in group["IpPermissions"]:
            key = (perm["IpProtocol"], perm.get("FromPort", -1), perm.get("ToPort", -1))
            found.update((*key, r["CidrIp"]) for r in perm.get("IpRanges", []))
            found.update((*key, r["CidrIpv6"]) for r in perm.get("Ipv6Ranges", []))
            found.update((*key, f"sg:{names.get(pair['GroupId'], pair['GroupId'])}")
                         for pair in perm.get("UserIdGroupPairs", []))
    return rules


def test_security_groups_open_only_what_the_fleet_needs(applied: Stack, aws: Any) -> None:
    rules = ingress_rules(aws)
    assert sorted(rules) == ["app", "fleet", "lb", "monitoring"]
    assert rules["fleet"] == set()  # a marker every instance carries: it admits nothing itself
    ssh, node_exporter = ("tcp", 22, 22), ("tcp", 9100, 9100)
    service = ("tcp", SERVICE_PORT, SERVICE_PORT)
    # SSH only from the admin CIDR, on every host
    for name, found in rules.items():
        if name == "fleet":
            continue
        assert {r[3] for r in found if r[1] <= 22 <= r[2]} == {ADMIN_CIDR}, name
    # node exporter only from the monitoring host's group (which scrapes it)
    assert {r[3] for group in ("app", "lb") for r in rules[group] if r[:3] == node_exporter} == {"sg:monitoring"}
    assert rules["app"] == {
        (*ssh, ADMIN_CIDR),
        (*service, "sg:lb"),  # client traffic through HAProxy
        (*service, "sg:monitoring"),  # Prometheus scrapes /metrics on the service port
        (*service, ADMIN_CIDR),  # the controller's blue-green smoke load on the idle colour
        (*node_exporter, "sg:monitoring"),
    }
    assert rules["monitoring"] == {(*ssh, ADMIN_CIDR), ("tcp", 9090, 9090, ADMIN_CIDR),  # gates query Prometheus
                                   ("tcp", 19532, 19532, "sg:fleet")}  # journal uploads of every host
    assert rules["lb"] == {(*ssh, ADMIN_CIDR), ("tcp", 80, 80, "0.0.0.0/0"), ("tcp", 8405, 8405, "sg:monitoring"),
                           (*node_exporter, "sg:monitoring")}
    # nothing is open to the whole VPC or the internet, except the load balancer's HTTP port
    everywhere = [(g, r) for g, found in rules.items() for r in found if r[3] in {"0.0.0.0/0", "10.40.0.0/16"}]
    assert everywhere == [("lb", ("tcp", 80, 80, "0.0.0.0/0"))]


def egress_rules(aws: Any) -> dict[str, set[tuple[str, int, int, str]]]:
    """{group name: {(protocol, from, to, destination CIDR)}} of the prod fleet's egress rules."""
    groups = aws("ec2").describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["orchestrate-prod-*"]}])["SecurityGroups"]
    return {g["GroupName"].removeprefix("orchestrate-prod-"): {
        (p["IpProtocol"], p.get("FromPort", -1), p.get("ToPort", -1), r["CidrIp"])
        for p in g["IpPermissionsEgress"] for r in p.get("IpRanges", [])} for g in groups}


def test_egress_is_the_vpc_and_web_ports_never_the_default_rule(applied: Stack, aws: Any) -> None:
    # AWS's default egress rule (everything to 0.0.0.0/0) is revoked by the provider when it
    # creates a group; a rule of ours equal to it was refused as InvalidPermission.Duplicate
    # whenever that revocation had not taken effect yet
    expected = {("-1", -1, -1, "10.40.0.0/16"), ("tcp", 443, 443, "0.0.0.0/0"), ("tcp", 80, 80, "0.0.0.0/0")}
    assert egress_rules(aws) == {"app": expected, "monitoring": expected, "lb": expected, "fleet": expected}


def test_known_hosts_holds_every_instances_key_from_its_user_data(applied: Stack, aws: Any) -> None:
    state_dir = applied.project / ".orchestrate" / "prod"
    inventory = yaml.safe_load((state_dir / "inventory.yml").read_text())
    ssh_args = inventory["all"]["vars"]["ansible_ssh_common_args"]
    assert "accept-new" not in (state_dir / "inventory.yml").read_text()
    assert f"UserKnownHostsFile={state_dir / 'known_hosts'}" in ssh_args and "StrictHostKeyChecking=yes" in ssh_args
    lines = (state_dir / "known_hosts").read_text().splitlines()
    known = {line.split()[0]: " ".join(line.split()[1:3]) for line in lines}
    ec2 = aws("ec2")
    instances = {tag(i, "Name"): i for i in fleet_instances(aws)}
    assert sorted(known) == sorted(i["PublicIpAddress"] for i in instances.values())
    for name, instance in instances.items():
        generated = (state_dir / "host-keys" / f"{name}.pub").read_text().split()
        assert known[instance["PublicIpAddress"]] == " ".join(generated[:2]), name
        # what cloud-init gets: the controller's key pair, the login user with sudo and our key
        encoded = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
        document = parse_user_data(base64.b64decode(encoded["UserData"]["Value"]).decode())
        assert document["ssh_keys"]["ed25519_public"].split()[:2] == generated[:2]
        assert document["ssh_keys"]["ed25519_private"] == (state_dir / "host-keys" / name).read_text()
        assert document["ssh_deletekeys"] is True and document["ssh_genkeytypes"] == []
        admin = document["users"][1]
        assert document["users"][0] == "default" and admin["name"] == "admin"
        assert admin["sudo"] == "ALL=(ALL) NOPASSWD:ALL" and document["disable_root"] is True
    assert stat.S_IMODE((state_dir / "host-keys").stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in (state_dir / "host-keys").iterdir()
            if not p.name.endswith(".pub") and not p.name.startswith(".")} == {0o600}


def test_no_private_host_key_reaches_the_state(applied: Stack, aws: Any) -> None:
    # the provider keeps a hash of user_data in the state, never the text; the variables file that
    # does hold the keys is this user's only
    state = aws("s3").get_object(Bucket=BUCKET, Key=STATE_KEY)["Body"].read()
    assert b"aws_instance" in state and b"terraform_data" in state
    assert b"PRIVATE KEY" not in state and b"ed25519_private" not in state
    terraform_dir = applied.project / ".orchestrate" / "prod" / "terraform"
    assert stat.S_IMODE(terraform_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((terraform_dir / "terraform.tfvars.json").stat().st_mode) == 0o600
    assert not list(terraform_dir.glob("*.tfstate"))  # never a local state file for aws


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


def lock_operation(aws: Any) -> str | None:
    """The Operation of the S3 state lock object (use_lockfile), or None when nobody holds it."""
    s3 = aws("s3")
    try:
        body = s3.get_object(Bucket=BUCKET, Key=STATE_KEY + ".tflock")["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    try:
        return str(json.loads(body).get("Operation", ""))
    except ValueError:
        return ""


@dataclass
class Contention:
    """Two operators' runs against one S3 state: see the `contended` fixture."""

    first: subprocess.CompletedProcess[str]
    gated: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    locked_apply: BaseException
    stale_apply: BaseException
    replan: subprocess.CompletedProcess[str]
    app_instances: int


@pytest.fixture(scope="module")
def contended(applied: Stack, aws: Any, run_orchestrate: Any, spawn: Any,
              tmp_path_factory: pytest.TempPathFactory) -> Contention:
    """A real change applied by `provision --yes` while another checkout (only the bucket is shared,
    like a second operator) tries to apply: with `provision` (the shared environment lock refuses
    it), `plan` (the state lock refuses it) and a plan file it saved before the first run started
    (the race where both planned first).
    """
    other = tmp_path_factory.mktemp("contended") / "other-checkout"
    for part in ("inventories", "terraform"):
        shutil.copytree(applied.project / part, other / part)
    other_tf = terraform_for(Project(other).load("prod"))
    other_tf.init()
    saved = other_tf.plan(other_tf.working_dir / "plan.tfplan").plan_file  # against the state before the change

    env_file = applied.project / "inventories" / "prod" / "environment.yml"
    env_file.write_text(env_file.read_text().replace("app_count: 3\n", "app_count: 4\n", 1))
    first = spawn(applied.project, "provision", "prod", "--yes")  # human output: the progress lines
    deadline = time.monotonic() + 120
    while (operation := lock_operation(aws)) != "OperationTypeApply":
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, f"the first provision never applied (lock: {operation})"
        time.sleep(0.1)

    # The first run now holds the lock for its apply (provider load + a new instance: >10 s). The
    # other checkout's provision is refused by the environment lock, shared beside the state (it
    # would wait for it without --lock-wait 0); its plan, which takes no environment lock, by the
    # state lock.
    gated = run_orchestrate(other, "provision", "prod", "--yes", "--lock-wait", "0")
    second = spawn(other, "plan", "prod")
    try:
        other_tf.apply(saved)
    except OrchestratorError as exc:
        locked_apply: BaseException = exc
    else:
        pytest.fail("the saved plan was applied while another apply held the state lock")
    second_out, second_err = second.communicate(timeout=300)
    out, err = first.communicate(timeout=600)
    try:
        other_tf.apply(saved)  # the lock is free now, but the state moved on
    except OrchestratorError as exc:
        stale_apply: BaseException = exc
    else:
        pytest.fail("a plan made before another apply was applied after it")
    return Contention(
        first=subprocess.CompletedProcess(first.args, first.returncode, out, err),
        gated=gated,
        second=subprocess.CompletedProcess(second.args, second.returncode, second_out, second_err),
        locked_apply=locked_apply,
        stale_apply=stale_apply,
        replan=run_orchestrate(applied.project, "plan", "prod", "--json"),
        app_instances=sum(tag(i, "orchestrate:groups") == "app" for i in fleet_instances(aws)),
    )


def test_concurrent_applies_are_refused_by_the_state_lock(contended: Contention) -> None:
    assert contended.first.returncode == 0, contended.first.stderr
    # the other checkout's provision: refused by the shared environment lock, naming the first run
    gated = contended.gated
    assert gated.returncode == 75, gated.stderr
    (refusal,) = [line for line in gated.stderr.splitlines() if line.startswith("error:")]
    assert refusal.startswith("error: environment prod is locked by ")
    assert "(orchestrate provision prod --yes" in refusal
    # its plan: refused by the apply's state lock, one line, exit 75
    second = contended.second
    assert second.returncode == 75, second.stderr
    assert "Traceback" not in second.stderr
    error_lines = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, second.stderr
    assert error_lines[0].startswith(
        "error: terraform plan for prod refused: the Terraform state lock is held by another run (by ")
    assert ", for apply, since " in error_lines[0] and "lock ID " in error_lines[0]
    assert error_lines[0].endswith("; nothing was changed, try again when it has finished")
    # the plan file saved before the first run: refused by the lock while it applies...
    assert isinstance(contended.locked_apply, StateLockError), contended.locked_apply
    assert str(contended.locked_apply).startswith(
        "terraform apply for prod refused: the Terraform state lock is held by another run (by ")
    # ...and as stale once it has finished: nothing of it is applied
    assert isinstance(contended.stale_apply, StalePlanError), contended.stale_apply
    assert contended.stale_apply.exit_status == 75
    assert str(contended.stale_apply) == (
        "terraform apply for prod refused: the saved plan is stale, another run changed the Terraform state "
        "after this plan was made; nothing was applied")
    # the state is consistent: the first run's change is there, and nothing is left to do
    assert contended.app_instances == 4
    assert contended.replan.returncode == 0, contended.replan.stderr
    assert json.loads(contended.replan.stdout)["changes"] is False


def test_provision_shows_live_progress_per_resource(contended: Contention) -> None:
    # ProgressPrinter on stderr: "  ADDRESS: creating…", then "  ADDRESS: created (Ns)"
    err = contended.first.stderr
    start = re.search(r"^  module\.fleet\.aws_instance\.app\[3\]: creating…$", err, re.MULTILINE)
    done = re.search(r"^  module\.fleet\.aws_instance\.app\[3\]: created \((\d+)s\)$", err, re.MULTILINE)
    assert start is not None and done is not None, err
    assert start.start() < done.start()
    assert int(done.group(1)) <= 600
    # the rule added behind Terraform's back (drift test) is removed: an update, with its time
    assert re.search(r"^  module\.fleet\.aws_security_group\.app: updated \(\d+s\)$", err, re.MULTILINE), err
    # resources the plan leaves alone are not listed
    assert "aws_vpc.this: " not in err


def test_hosts_reports_a_stopped_instance(applied: Stack, aws: Any, run_orchestrate: Any) -> None:
    # (late in the module: a stopped and started instance gets a new public address, which the
    # Terraform outputs then differ in; the next test destroys the fleet anyway)
    instances = {tag(i, "Name"): i for i in fleet_instances(aws)}
    victim = sorted(n for n in instances if tag(instances[n], "orchestrate:groups") == "app")[0]
    ec2 = aws("ec2")
    ec2.stop_instances(InstanceIds=[instances[victim]["InstanceId"]])
    try:
        states = {name: state for name, (_, _, state) in listed_hosts(applied.project, run_orchestrate).items()}
        assert states == {name: "stopped" if name == victim else "running" for name in instances}
    finally:
        ec2.start_instances(InstanceIds=[instances[victim]["InstanceId"]])
    assert {state for _, _, state in listed_hosts(applied.project, run_orchestrate).values()} == {"running"}


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

    second = run_orchestrate(other, "plan", "prod")  # no environment lock: terraform's state lock refuses it
    # a provision, from this checkout or another, is refused earlier, by the environment lock
    # shared beside the state
    same = run_orchestrate(applied.project, "provision", "prod", "--yes", "--lock-wait", "0")
    gated = run_orchestrate(other, "provision", "prod", "--yes", "--lock-wait", "0")
    out, err = destroyer.communicate(timeout=300)

    assert second.returncode == 75, second.stderr
    error_lines = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert error_lines[0].startswith(
        "error: terraform plan for prod refused: the Terraform state lock is held by another run (by ")
    assert ", for " in error_lines[0] and "lock ID " in error_lines[0]
    assert "Traceback" not in second.stderr
    for refused in (same, gated):
        assert refused.returncode == 75, refused.stderr
        assert "Traceback" not in refused.stderr
        assert "error: environment prod is locked by " in refused.stderr
        assert "(orchestrate destroy prod" in refused.stderr

    assert destroyer.returncode == 0, err
    # 6 instances (app_count 4 since the concurrent applies) and their 6 recorded host keys,
    # 4 security groups, network, key pair
    assert json.loads(out)["destroyed"] == 24
    assert fleet_instances(aws) == []
    assert not (applied.project / ".orchestrate" / "prod" / "inventory.yml").exists()
