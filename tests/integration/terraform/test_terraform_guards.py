"""bootstrap, offline init and the refusals, against a moto server (function-scoped: moto is reset)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.config.loader import Project
from orchestrator.fleet.provision import terraform_for
from orchestrator.tools.terraform import PLUGIN_MIRROR

pytestmark = [pytest.mark.integration]

BUCKET = "orchestrate-prod-state"
STATE_KEY = "prod/terraform.tfstate"


def state_keys(aws: Any) -> list[str]:
    listing = aws("s3").list_objects_v2(Bucket=BUCKET)
    return [item["Key"] for item in listing.get("Contents", [])]


def test_bootstrap_creates_a_versioned_encrypted_bucket_idempotently(
    aws_project: Path, run_orchestrate: Any, aws: Any
) -> None:
    first = run_orchestrate(aws_project, "bootstrap", "prod", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["created"] is True
    s3 = aws("s3")
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    rules = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]["BlockPublicAcls"] is True

    second = run_orchestrate(aws_project, "bootstrap", "prod", "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == {**json.loads(first.stdout), "created": False}


def test_bootstrap_refuses_a_local_environment(aws_project: Path, run_orchestrate: Any) -> None:
    result = run_orchestrate(aws_project, "bootstrap", "dev")
    assert result.returncode == 2
    assert "has target 'local'" in result.stderr and "Traceback" not in result.stderr


def test_init_is_offline_from_the_mirror_and_skipped_when_current(
    aws_project: Path, run_orchestrate: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirrored = PLUGIN_MIRROR / "registry.terraform.io" / "hashicorp" / "aws"
    if not mirrored.is_dir():
        pytest.skip(f"no provider mirror at {mirrored} on this machine: init would need the registry, "
                    "which tests must not reach")
    assert run_orchestrate(aws_project, "bootstrap", "prod").returncode == 0
    tf = terraform_for(Project(aws_project).load("prod"))
    # Any request to the registry (or anywhere off this machine) goes to a dead proxy and fails
    # the init; loopback (the moto S3 backend) is never proxied.
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("CHECKPOINT_DISABLE", "1")
    assert tf.init() is True
    config = tf.cli_config.read_text()
    assert "filesystem_mirror" in config and f'path    = "{PLUGIN_MIRROR}"' in config
    assert 'exclude = ["registry.terraform.io/*/*"]' in config  # never direct from the registry
    assert tf.environment()["TF_CLI_CONFIG_FILE"] == str(tf.cli_config)
    lock = (tf.working_dir / ".terraform.lock.hcl").read_text()
    assert 'provider "registry.terraform.io/hashicorp/aws"' in lock
    installed = tf.working_dir / ".terraform" / "providers" / "registry.terraform.io" / "hashicorp" / "aws"
    # what terraform installed and locked is what the mirror holds
    assert sorted(p.name for p in installed.iterdir()) == sorted(p.name for p in mirrored.iterdir())
    assert f'version     = "{sorted(p.name for p in mirrored.iterdir())[-1]}"' in lock
    assert tf.init() is False  # nothing changed: the stamp matches
    assert tf.validate() == []  # the rendered root and the aws_fleet module: no errors, no warnings
    tf2 = terraform_for(Project(aws_project).load("prod"))
    assert tf2.init() is False


@pytest.mark.parametrize("verb", ["provision", "destroy"])
def test_protected_env_without_yes_and_without_a_terminal_is_refused(
    aws_project: Path, run_orchestrate: Any, aws: Any, verb: str
) -> None:
    assert run_orchestrate(aws_project, "bootstrap", "prod").returncode == 0
    result = run_orchestrate(aws_project, verb, "prod")
    assert result.returncode == 2
    assert "is protected" in result.stderr and "--yes" in result.stderr
    assert "Traceback" not in result.stderr
    assert STATE_KEY not in state_keys(aws)
    assert aws("ec2").describe_instances()["Reservations"] == []


def test_terraform_diagnostics_reach_the_operator_verbatim(aws_project: Path, run_orchestrate: Any) -> None:
    # 9100 is a valid port for the config model but the module reserves it for node exporter:
    # the failure comes from terraform's own variable validation.
    env_file = aws_project / "inventories" / "prod" / "environment.yml"
    data = yaml.safe_load(env_file.read_text())
    data["terraform"]["vars"]["service_port"] = 9100
    env_file.write_text(yaml.safe_dump(data))
    assert run_orchestrate(aws_project, "bootstrap", "prod").returncode == 0
    result = run_orchestrate(aws_project, "plan", "prod")
    assert result.returncode == 1, result.stderr
    assert "error: terraform plan for prod failed: Invalid value for variable" in result.stderr
    assert "other than 22 (SSH) and 9100 (node exporter)" in result.stderr
    assert "Traceback" not in result.stderr


def test_protected_env_asks_and_applies_nothing_when_the_answer_is_no(
    aws_project: Path, run_orchestrate: Any, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from orchestrator.cli import cli
    from orchestrator.cli._common import AppContext

    assert run_orchestrate(aws_project, "bootstrap", "prod").returncode == 0
    # CliRunner has no terminal; pretend there is one so that the question is asked.
    monkeypatch.setattr(AppContext, "interactive", property(lambda self: True))
    result = CliRunner().invoke(cli, ["--project-dir", str(aws_project), "provision", "prod"], input="n\n")
    assert result.exit_code == 1, result.output
    assert "apply this plan to prod?" in result.output
    assert "not confirmed; nothing applied" in result.output
    assert STATE_KEY not in state_keys(aws)
    assert aws("ec2").describe_instances()["Reservations"] == []
