"""Rendering of the Terraform root: typed variables, endpoint override, backends, no secrets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from orchestrator.config.loader import Project
from orchestrator.errors import ConfigError
from orchestrator.fleet.render import AWS_ENDPOINT_ENV, AWS_SERVICES, hcl_type, render_environment, terraform_variables


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("x", "string"),
        (3, "number"),
        (0.5, "number"),
        (True, "bool"),
        (["a", "b"], "list(string)"),
        ([], "list(any)"),
        ({"team": "platform"}, "map(string)"),
        ({}, "map(string)"),
        ({"a": 1, "b": "x"}, 'object({"a" = number, "b" = string})'),
        (["a", 1], "tuple([string, number])"),
    ],
)
def test_hcl_type(value: object, expected: str) -> None:
    assert hcl_type(value) == expected


def test_hcl_type_rejects_what_terraform_cannot_take() -> None:
    with pytest.raises(ConfigError, match="cannot pass NoneType"):
        hcl_type(None, "x")


def test_prod_renders_s3_backend_with_lockfile_and_endpoint_override(
    project_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(AWS_ENDPOINT_ENV, "http://127.0.0.1:4566")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "render-test-secret-do-not-leak")
    loaded = Project(project_copy).load("prod")
    result = render_environment(loaded)
    main = (result.terraform_dir / "main.tf").read_text()
    assert 'backend "s3"' in main and "use_lockfile = true" in main
    assert 'bucket       = "orchestrate-prod-state"' in main
    for service in AWS_SERVICES:
        assert re.search(rf'^\s+{service}\s+= "http://127.0.0.1:4566"$', main, re.MULTILINE), service
    assert '"orchestrate:env" = "prod"' in main  # default tags
    assert re.search(r'variable "subnet_cidrs" \{\n.*\n  type        = list\(string\)', main)
    tfvars = json.loads((result.terraform_dir / "terraform.tfvars.json").read_text())
    assert tfvars["app_count"] == 3
    assert tfvars["ssh_public_key"].startswith("ssh-ed25519 ")
    for path in result.terraform_dir.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert "render-test-secret-do-not-leak" not in text
            assert "secret_key" not in text and "access_key" not in text


def test_endpoint_override_is_absent_without_the_variable(project_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AWS_ENDPOINT_ENV, raising=False)
    main = (render_environment(Project(project_copy).load("prod")).terraform_dir / "main.tf").read_text()
    assert "endpoints" not in main and "skip_credentials_validation" not in main


def test_local_env_renders_local_backend_and_no_provider(project_copy: Path) -> None:
    loaded = Project(project_copy).load("dev")
    main = (render_environment(loaded).terraform_dir / "main.tf").read_text()
    assert 'backend "local"' in main and 'provider "aws"' not in main
    assert "ssh_public_key" not in terraform_variables(loaded)


def test_the_repository_lock_file_is_copied_into_every_render(project_copy: Path) -> None:
    from orchestrator.fleet.provision import terraform_for
    from orchestrator.tools.terraform import LOCK_FILE

    kept = project_copy / "inventories" / "prod" / LOCK_FILE
    assert 'provider "registry.terraform.io/hashicorp/aws"' in kept.read_text()
    result = render_environment(Project(project_copy).load("prod"))
    assert result.lock_file == kept
    assert (result.terraform_dir / LOCK_FILE).read_text() == kept.read_text()
    assert result.terraform_dir / LOCK_FILE in result.files
    # init keeps to it (-lockfile=readonly); a changed lock file reaches the next render
    assert terraform_for(Project(project_copy).load("prod")).lock_file == kept
    kept.write_text(kept.read_text() + "# upgraded\n")
    assert (render_environment(Project(project_copy).load("prod")).terraform_dir / LOCK_FILE).read_text().endswith(
        "# upgraded\n")
    # the local fleet needs no provider (terraform_data is built in) and keeps no lock file
    dev = render_environment(Project(project_copy).load("dev"))
    assert dev.lock_file is None and not (dev.terraform_dir / LOCK_FILE).exists()
    assert terraform_for(Project(project_copy).load("dev")).lock_file is None
